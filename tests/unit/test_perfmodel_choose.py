"""parallel=auto: what the model picks for a small table of (profile, model, nodes), and why."""

from __future__ import annotations

import re

import pytest

from launch.errors import ConfigError
from launch.perfmodel.choose import candidate_degrees, choose_layout
from launch.perfmodel.compute import RUNTIME_KERNELS
from launch.perfmodel.hardware import part_rates
from launch.perfmodel.step import Placement
from tests.conftest import compose_run_config
from train.spec.degrees import BatchRule, Degrees, batch_held

SHAPES = {  # sequence length, micro batch, sequences per device per step
    "gpt_1_3b": ["train.seq_len=2048", "train.micro_batch=4", "train.global_batch=16"],
    "llama_7b": ["train.seq_len=4096", "train.micro_batch=1", "train.global_batch=8"],
    "llama_70b": ["train.seq_len=4096", "train.micro_batch=1", "train.global_batch=8"],
}


def choose(gpu: str, model: str, nodes: int, *extra: str):
    cfg = compose_run_config(
        [f"gpu={gpu}", f"model={model}", *SHAPES[model], "run_dir=/unused", *extra]
    )
    world = cfg.gpu.gpus_per_node * nodes
    batch = cfg.train.global_batch * world
    where = Placement(world, cfg.gpu.gpus_per_node, nodes)
    return choose_layout(cfg, where, batch=BatchRule(global_batch=batch))


@pytest.mark.parametrize(
    ("gpu", "model", "nodes", "layout", "tp", "in_reason", "extra"),
    [
        # A 1.3B model: DDP's autocast casts every fp32 weight each micro-step, FSDP2 copies
        # each gathered block out twice a micro-step and its gradients into every
        # reduce-scatter (torch 2.13's code): about even, ddp by under 3%.
        ("h100_sxm", "gpt_1_3b", 1, "ddp", 1, "next fsdp", ()),
        ("h800", "gpt_1_3b", 4, "ddp", 1, "best of", ()),
        # The H20's compute is so slow that the casts do not matter: the simpler ddp wins.
        ("h20", "gpt_1_3b", 1, "ddp", 1, "tok/s/device predicted", ()),
        # 7B: a pipeline's FSDP2 stage stays gathered through the step (torch's
        # PipelineStage), where FSDP gathers each block twice a micro-step: pp_fsdp on H100;
        # FSDP2's 16-bit stream fits 40 GB without recomputation at one sequence per
        # micro-step; at two, TP 2 over NVLink beats recomputing every block.
        ("h100_sxm", "llama_7b", 1, "pp_fsdp", 1, "next fsdp", ()),
        ("a100_40g", "llama_7b", 1, "fsdp", 1, "next", ()),
        (
            "a100_40g",
            "llama_7b",
            1,
            "tp_fsdp",
            2,
            "tp 2",
            ("train.micro_batch=2", "train.global_batch=16"),
        ),
        # No NVLink: never TP, and the reason says so; over PCIe FSDP's gathers at every
        # micro-step cost more than a pipeline's activations: pp_fsdp.
        ("l40s", "llama_7b", 1, "pp_fsdp", 1, "no TP (no NVLink)", ()),
    ],
)
def test_auto_picks(gpu, model, nodes, layout, tp, in_reason, extra):
    choice = choose(gpu, model, nodes, *extra)
    assert choice.name == layout
    assert choice.degrees.tp == tp
    assert choice.degrees.world == nodes * 8
    assert in_reason in choice.reason
    assert choice.prediction.fits
    assert choice.as_dict()["resolved"] == layout


def test_tp_only_inside_a_node_and_only_over_nvlink():
    for gpu, span in (("h100_sxm", 8), ("h100_pcie", 2), ("l40s", 1)):
        for nodes in (1, 4):
            cfg = compose_run_config([f"gpu={gpu}", "model=llama_70b", "run_dir=/unused"])
            rates = part_rates(cfg.gpu)
            candidates = candidate_degrees(cfg, Placement(8 * nodes, 8, nodes), rates)
            assert max(d.tp for _, d in candidates) == span
            assert all(d.world == 8 * nodes for _, d in candidates)
    # 70B needs more than one node's memory; on four it fits and TP stays inside a node.
    choice = choose("h100_sxm", "llama_70b", 4)
    assert choice.degrees.tp <= 8 and choice.prediction.fits


def test_a_layout_that_fits_nowhere_says_how_much_it_needs_and_what_would_fit_it():
    """Where the model states alone outgrow the memory, only more ranks help: it said "lower
    train.micro_batch" to a 70B model on one node of A100 40GB, whose states need ~140 GiB
    per rank there before any activation. Where activations are what does not fit, a smaller
    micro batch is the remedy."""
    with pytest.raises(ConfigError) as states:
        choose("a100_40g", "llama_70b", 1, "train.micro_batch=8", "train.global_batch=8")
    text = str(states.value)
    assert re.search(r"^parallel: .*needs \d+\.\d GiB per rank", text)
    assert re.search(r"\(39\.\d GiB visible each, 35\.\d usable;", text)  # of 40 GiB
    assert "optimizer state alone take" in text and "more ranks" in text
    assert "micro_batch" not in text
    with pytest.raises(ConfigError) as activations:
        choose("l40s", "llama_7b", 1, "train.micro_batch=32", "train.global_batch=32")
    text = str(activations.value)
    assert "lower train.micro_batch or more ranks" in text and "alone" not in text


def test_a_sweep_that_fits_at_some_sizes_names_the_sweep_that_runs():
    """llama_7b on H800s under the default sweep (1 and 2 ranks): one GPU cannot hold it, two
    can; the refusal names the sweep that would run."""
    from launch.plan import plan_runs

    cfg = compose_run_config(["gpu=h800", "model=llama_7b", "cluster.nproc_per_node=8",
                              "sweep.world_sizes=[1,2,4]", "run_dir=/unused"])  # fmt: skip
    with pytest.raises(ConfigError) as err:
        plan_runs(cfg)
    assert err.value.key == "parallel"
    assert str(err.value).endswith("of this sweep's world sizes, 2, 4 fit: sweep.world_sizes=[2,4]")
    cfg.sweep.world_sizes = [1]
    with pytest.raises(ConfigError) as alone:
        plan_runs(cfg)
    assert "sweep.world_sizes" not in str(alone.value)


def test_auto_is_the_default_and_a_gpu_run_says_what_it_chose():
    from launch.plan import plan_runs

    cfg = compose_run_config(["gpu=h100_sxm", "model=gpt_1_3b", "run_dir=/unused", "sweep=none",
                              "cluster.nproc_per_node=8", "train.seq_len=2048",
                              "train.global_batch=32"])  # fmt: skip
    assert cfg.parallel.name == "auto"
    (plan,) = plan_runs(cfg)
    assert plan.parallel.name != "auto"
    assert "tok/s/device predicted" in plan.layout_reason


def test_a_weak_sweep_under_auto_keeps_each_devices_sequences_across_layouts():
    """The H100's fp8 llama_70b picks a pipeline with 1 data-parallel rank at 32 GPUs and
    one with 4 at 64: per data-parallel rank the 64-GPU run (and each candidate there) got
    its own batch (1,024 sequences, 4x the 32-GPU run's for 2x the GPUs)."""
    from launch.plan import config_for, plan_runs

    cfg = compose_run_config(["gpu=h100_sxm", "model=llama_70b", "precision=fp8",
                              "run_dir=/unused", "cluster=multinode", "cluster.nodes=8",
                              "cluster.nproc_per_node=8", "sweep=weak",
                              "sweep.world_sizes=[32,64]", "train.seq_len=4096",
                              "train.micro_batch=1", "train.global_batch=256"])  # fmt: skip
    plans = plan_runs(cfg)
    assert [p.global_batch for p in plans] == [256, 512]
    assert len({p.parallel.name + str(p.parallel.pp) for p in plans}) == 2  # layouts differ
    assert config_for(cfg, plans[1], "s").resolved.batch_held == "sequences_per_device"


def test_the_batch_rules_of_a_sweep():
    per_device = BatchRule.weak_per_device(256, 32)
    assert per_device.held == "sequences_per_device"
    pipeline_64 = Degrees(dp_replicate=1, dp_shard=4, tp=4, pp=4)
    assert per_device.global_batch_for(pipeline_64) == 512
    assert BatchRule.weak_per_device(12, 8).global_batch_for(Degrees(1, 4, 1)) == 6
    with pytest.raises(ConfigError, match="12 at world size 8 is 1.5 at 1: weak scaling under"):
        BatchRule.weak_per_device(12, 8).global_batch_for(Degrees(1, 1, 1))
    per_rank = BatchRule.weak_from(256, Degrees(1, 1, 4, pp=8), 32)
    assert (per_rank.held, per_rank.global_batch_for(pipeline_64)) == (
        "sequences_per_dp_rank",
        1024,
    )
    assert BatchRule(global_batch=64).held == "global_batch"
    assert batch_held("weak", "auto") == "sequences_per_device"
    assert batch_held("weak", "tp") == batch_held("none", "ddp") == "sequences_per_dp_rank"
    assert batch_held("strong", "auto") == "global_batch"


def test_auto_on_a_cpu_without_a_measured_ceiling_is_ddp_and_says_why(monkeypatch, tmp_path):
    from launch.plan import plan_runs

    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path))
    cfg = compose_run_config(["run_dir=/unused", "sweep=weak", "sweep.world_sizes=[1,2]"])
    plans = plan_runs(cfg)
    assert [p.parallel.name for p in plans] == ["ddp", "ddp"]
    assert all("launch.mamf" in p.layout_reason for p in plans)
    assert [p.global_batch // p.world_size for p in plans] == [8, 8]  # weak scaling kept


def test_auto_on_a_cpu_with_a_cached_ceiling_chooses_with_the_model(monkeypatch, tmp_path):
    """The cached peak is attached before the layout is chosen (no 'cpu has no fp32 peak')."""
    from launch.bench.cache import cache_path, save
    from launch.plan import plan_runs
    from launch.resolve import CPU_RANKED_ON_CEILING
    from train.spec.devices import cpu_model_name

    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path))
    save(
        cache_path(cpu_model_name(), 1),
        {
            "device_name": cpu_model_name(),
            "measured_at": "2026-11-30T00:00:00+00:00",
            "cpu_threads": 1,
            "best_tflops": {"fp32": 0.09},
        },
    )
    cfg = compose_run_config(["run_dir=/unused", "sweep=none", "cluster.nproc_per_node=2"])
    (plan,) = plan_runs(cfg)
    assert plan.parallel.name in ("ddp", "fsdp")
    assert "tok/s/device predicted" in plan.layout_reason
    # No kernel times cached yet (the report measures them after a sweep): the reason says the
    # choice rests on the ceiling alone, not on kernel times it does not have.
    assert plan.layout_reason.endswith(CPU_RANKED_ON_CEILING)
    assert "kernel times (" not in plan.layout_reason


def test_a_cpu_choice_says_how_many_of_its_kernel_shapes_were_measured(monkeypatch, tmp_path):
    """With the host's kernel times cached (launch.mamf --host-shapes, an fp32 sweep's report)
    the reason counts this run's shapes that have them: some (the rest at the ceiling) or all."""
    from launch.bench.cache import cache_path, host_cache_path, save
    from launch.perfmodel.host import HostWorkload, gemm_key, loss_key, overhead_key, sdpa_key
    from launch.plan import plan_runs
    from train.spec.devices import cpu_model_name

    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path))
    ceiling = {"device_name": cpu_model_name(), "measured_at": "2026-12-01T00:00:00+00:00",
               "cpu_threads": 1, "best_tflops": {"fp32": 0.09}}  # fmt: skip
    save(cache_path(cpu_model_name(), 1), ceiling)
    cfg = compose_run_config(["run_dir=/unused", "sweep=none", "cluster.nproc_per_node=2"])
    work = HostWorkload(cfg.model, cfg.train.micro_batch, cfg.train.seq_len, (1,), 1)
    record = {
        "gemm_s": {gemm_key(*g): 1e-4 for g in work.gemms()},
        "sdpa_s": {sdpa_key(*a): 1e-3 for a in work.attention()},
        "memory": {"kernel_latency_s": 5e-6, "gbytes_per_s": 10.0},
    }
    save(host_cache_path(cpu_model_name(), 1), record)
    total, partial = len(work.missing(None)), len(work.gemms()) + len(work.attention())
    (plan,) = plan_runs(cfg)
    assert plan.layout_reason.endswith(
        f"kernel times ({partial} of {total} shapes, the others at its fp32 matmul ceiling)"
    )
    record["loss_s"] = {loss_key(*shape): 2e-3 for shape in work.losses()}
    record["overhead_s"] = {overhead_key(cfg.model): {"root_s": 1e-3, "per_block_s": 5e-4}}
    save(host_cache_path(cpu_model_name(), 1), record)
    (plan,) = plan_runs(cfg)
    assert plan.layout_reason.endswith(f"kernel times ({total} of {total} shapes)")


def _moe_plan(nodes: int, global_batch: int):
    from launch.plan import plan_runs

    cfg = compose_run_config(["gpu=h800", "model=deepseek_v2_lite_mha", "run_dir=/unused",
                              "sweep=none", "cluster=slurm", f"cluster.nodes={nodes}",
                              "cluster.nproc_per_node=8", "train.seq_len=4096",
                              "train.micro_batch=1",
                              f"train.global_batch={global_batch}"])  # fmt: skip
    (plan,) = plan_runs(cfg)
    return plan


def test_auto_reduces_once_a_step_where_each_micro_steps_reduce_scatter_crosses_nodes():
    """An MoE model over 4 H800 nodes, 8 micro-steps a step: ep_fsdp's reduce-scatters cross
    the NICs, so keeping the unsharded fp32 gradients and reducing once a step predicts more
    tokens/s, and fits; the run's config carries it (parallel.fsdp_reduce_every_micro_step)
    and the reason says it. With one micro-step a step there is nothing to choose."""
    plan = _moe_plan(4, 256)
    assert plan.parallel.name == "ep_fsdp"
    assert plan.parallel.fsdp_reduce_every_micro_step is False
    assert "gradients reduced once a step" in plan.layout_reason
    one_micro_step = _moe_plan(4, 32)
    assert one_micro_step.parallel.fsdp_reduce_every_micro_step is True
    assert "reduced once" not in one_micro_step.layout_reason


def test_auto_tries_reducing_once_only_where_it_changes_the_step():
    """Both ways for a sharded layout with accumulation; pipelines (torch's PipelineStage
    accumulates unsharded either way), unsharded layouts and single micro-steps once each."""
    from launch.perfmodel.choose import _candidates

    for per_device in (8, 1):
        cfg = compose_run_config(["gpu=h800", "model=llama_7b", *SHAPES["llama_7b"],
                                  "run_dir=/unused"])  # fmt: skip
        where = Placement(16, 8, 2)
        batch = BatchRule(global_batch=per_device * 16)
        rates = part_rates(cfg.gpu, precision="bf16")
        candidates, _ = _candidates(cfg, where, "bf16", rates, batch, RUNTIME_KERNELS)
        modes = {}
        for c in candidates:
            key = (c.name, c.degrees, c.activation_checkpoint)
            modes.setdefault(key, []).append((c.reduce_every_micro_step, c.prediction))
        assert {name for name, _, _ in modes} >= {"ddp", "fsdp", "tp_fsdp", "pp_fsdp"}
        for (name, _, _), seen in modes.items():
            micro_steps = seen[0][1].accum_steps
            both = name in ("fsdp", "hsdp", "tp_fsdp") and micro_steps > 1
            assert [every for every, _ in seen] == ([True, False] if both else [True]), name
            if both:  # the same layout, reducing once: fewer bytes on the wire, more memory
                each, once = seen[0][1], seen[1][1]
                assert sum(once.comm_s.values()) < sum(each.comm_s.values())
                assert once.memory.peak_bytes > each.memory.peak_bytes


def test_the_layout_record_says_how_fsdp_accumulates():
    """summary.json's and the projection's layout record carry the mode parallel=auto may
    pick (train/spec/degrees.py layout_record); the projection table marks reducing once."""
    from launch.report.projected import _layout_text
    from train.spec.degrees import layout_record, plan_layout

    def record(*overrides):
        cfg = compose_run_config(["run_dir=/unused", "cluster.nproc_per_node=4", *overrides])
        return layout_record(cfg, plan_layout(cfg, 4, 4))

    once = record("parallel=fsdp", "parallel.fsdp_reduce_every_micro_step=false")
    assert once["fsdp_reduce_every_micro_step"] is False
    assert _layout_text(once) == "fsdp 1x4x1 reduce-once"
    assert _layout_text(record("parallel=fsdp")) == "fsdp 1x4x1"
    pipeline = ["parallel=pp_fsdp", "parallel.pp=2", "train.global_batch=16"]
    for unsharded in (["parallel=ddp"], pipeline):
        assert "fsdp_reduce_every_micro_step" not in record(*unsharded)


def test_a_runner_up_predicted_faster_says_which_margin_it_lost_on():
    """On 2 H800 nodes llama_7b's pipeline predicts a few % more than FSDP, under the 5% a
    pipeline must win by: the reason says so instead of leaving 'next ... at 104%' a puzzle."""
    choice = choose("h800", "llama_7b", 2, "train.global_batch=4")  # sequences per GPU
    assert choice.name == "fsdp"
    share = re.search(r"; next pp_fsdp [^;]*? at ([\d.]+)%", choice.reason)
    assert share and float(share.group(1)) > 100
    assert "(TP or a pipeline must predict 5% more than the best plain layout)" in choice.reason
