"""The projection: the mission check, projection.json's interface, bad input, speed."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import pytest
from omegaconf import OmegaConf

from launch.errors import ConfigError
from launch.perfmodel.calibrate import load_calibration
from launch.perfmodel.hardware import part_rates
from launch.perfmodel.projection import project_runs, projected_profiles, projection_record
from launch.perfmodel.step import Placement, predict, predict_run
from launch.project import run_projection
from launch.terminal import plain_console
from tests.conftest import compose_run_config
from tests.unit.test_report import summary
from train.spec.degrees import plan_layout
from train.spec.traffic import CommVolume, StepShape, step_collectives

RUN_KEYS = {
    "gpu",
    "nodes",
    "nproc_per_node",
    "world_size",
    "layout",
    "step_time_s",
    "compute_s",
    "comm_s",
    "exposed_comm_s",
    "tokens_per_s_per_device",
    "mfu",
    "memory_bytes_per_rank",
    "fits",
    "scaling_efficiency",
}
COLLECTIVE_KEYS = {
    "gpu",
    "op",
    "bytes",
    "ranks",
    "nodes",
    "time_s",
    "algbw_gbytes_per_s",
    "busbw_gbytes_per_s",
}


def efficiency(gpu, model, layout, nodes, per_node=8, *extra):
    cfg = compose_run_config(
        [f"gpu={gpu}", f"model={model}", f"parallel={layout}", "run_dir=/unused", *extra]
    )
    world = per_node * nodes
    plan = plan_layout(cfg, world, per_node)
    batch = cfg.train.global_batch * world
    pred = predict(
        cfg,
        plan,
        Placement(world, per_node, nodes),
        global_batch=batch,
        precision="bf16",
        rates=part_rates(cfg.gpu),
    )
    return pred.scaling_efficiency


LLAMA = ["train.seq_len=4096", "train.micro_batch=1"]


@pytest.mark.parametrize(("cut", "full"), [("h800", "h100_sxm"), ("a800", "a100_80g")])
def test_export_parts_lose_where_nvlink_carries_the_step_and_not_where_the_nic_does(cut, full):
    def loss(layout, nodes, per_node, *extra):
        return 1 - efficiency(cut, "llama_7b", layout, nodes, per_node, *extra) / efficiency(
            full, "llama_7b", layout, nodes, per_node, *extra
        )

    tp = loss("tp", 1, 8, *LLAMA, "train.global_batch=1")  # TP 8: NVLink on the critical path
    fsdp = loss("fsdp", 1, 8, *LLAMA, "train.global_batch=2")  # gathers over NVLink
    # The NIC alone: one GPU per node, its gradients all-reduced across 4 nodes.
    nic = loss("ddp", 4, 1, *LLAMA, "train.global_batch=1")
    assert tp > 0.05
    assert fsdp > 0
    assert abs(nic) < 1e-9
    assert tp > fsdp > abs(nic)


def test_multi_node_ddp_at_a_real_batch_loses_about_the_same():
    args = ["train.seq_len=2048", "train.micro_batch=4", "train.global_batch=8"]
    h100 = efficiency("h100_sxm", "gpt_1_3b", "ddp", 4, 8, *args)
    h800 = efficiency("h800", "gpt_1_3b", "ddp", 4, 8, *args)
    assert abs(h100 - h800) < 0.01


def projection_cfg(tmp_path, *extra):
    return compose_run_config(
        [
            "model=gpt_1_3b",
            "train.seq_len=2048",
            "train.micro_batch=4",
            # Sequences per optimizer step at the fewest projected nodes (8 GPUs): 8 each.
            "train.global_batch=64",
            f"run_dir={tmp_path}",
            *extra,
        ]
    )


def test_projection_writes_its_files_with_the_interface_keys(tmp_path):
    cfg = projection_cfg(
        tmp_path,
        "project.gpus=[h100_sxm,h800]",
        "project.nodes=[1,2]",
        "+project.price_per_gpu_hour.h100_sxm=2.5",
    )
    assert run_projection(cfg, plain_console(record=True, width=200)) == 0
    record = json.loads((tmp_path / "projection.json").read_text())
    assert len(record["runs"]) == 4
    for run in record["runs"]:
        assert RUN_KEYS <= set(run)
        assert {"name", "dp_replicate", "dp_shard", "tp"} <= set(run["layout"])
        assert set(run["comm_s"]) == {"all_reduce", "all_gather", "reduce_scatter"}
        assert run["step_time_s"] >= run["compute_s"]
    priced = [r for r in record["runs"] if r["gpu"] == "h100_sxm"]
    assert all(r["tokens_per_dollar"] > 0 for r in priced)
    assert (tmp_path / "projection.png").stat().st_size > 0
    assert "node boundary" in (tmp_path / "projection.md").read_text()


def test_piped_the_table_keeps_its_numbers_whole(tmp_path):
    """Printed to a file or a pipe (rich's default there: 80 columns), the projected table
    takes the width it needs, so every row's tokens/s reads whole, not folded or cut."""
    cfg = projection_cfg(tmp_path, "project.gpus=[h100_sxm,h800]", "project.nodes=[1,2]")
    out = io.StringIO()
    run_projection(cfg, plain_console(file=out, width=80))
    printed = out.getvalue()
    assert "…" not in printed
    for run in json.loads((tmp_path / "projection.json").read_text())["runs"]:
        assert f"{run['tokens_per_s_per_device']:,.0f}" in printed
        assert "crosses node boundary" in printed


def test_comm_mode_projects_collectives(tmp_path):
    cfg = projection_cfg(
        tmp_path,
        "project.mode=comm",
        "project.gpus=[a100_80g]",
        "project.nodes=[1,2]",
        "comm.max_bytes=4096",
    )
    run_projection(cfg, plain_console(record=True))
    rows = json.loads((tmp_path / "projection.json").read_text())["collectives"]
    assert rows and all(COLLECTIVE_KEYS <= set(r) for r in rows)
    assert {r["ranks"] for r in rows} == {8, 16}


def test_all_profiles_at_four_node_counts_are_projected(tmp_path):
    # (Its speed, milliseconds for the whole table, is not a unit test's business.)
    cfg = projection_cfg(tmp_path, "parallel=fsdp")
    profiles = projected_profiles([])
    rows = project_runs(cfg, profiles)
    assert len(rows) == 4 * len(profiles)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["project.gpus=[h100_sxm,b300]"], "project.gpus"),
        (["project.nodes=[1,0]"], "project.nodes"),
        (["project.mode=bogus"], "project.mode"),
        (
            ["+project.price_per_gpu_hour.a800=1.0", "project.gpus=[h100_sxm]"],
            "project.price_per_gpu_hour",
        ),
        (["model=llama_70b", "parallel=ddp", "project.gpus=[a100_40g]"], "parallel"),
        (["gpu=a100_80g", "gpu.power_limit_w=500"], "gpu.power_limit_w"),
        # Each was a traceback: ZeroDivisionError, StopIteration, ZeroDivisionError.
        (["gpu=h100_sxm", "gpu.gpus_per_node=0"], "gpu.gpus_per_node"),
        (["gpu=h100_sxm", "gpu.peak_tflops.bf16=nan"], "gpu.peak_tflops.bf16"),
        (["+project.price_per_gpu_hour.h100_sxm=inf"], "project.price_per_gpu_hour"),
    ],
)
def test_bad_input_names_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError) as err:  # at compose time (typed keys) or when projecting
        run_projection(projection_cfg(tmp_path, *overrides), plain_console(record=True))
    assert err.value.key == key
    if key == "parallel":
        assert "GiB per rank" in str(err.value)


def test_a_power_limit_is_projected_and_labelled(tmp_path):
    # h100_hbm2e's profile runs at 500 of 700 W; the run's own gpu (with its command-line
    # gpu.* keys) stands in for the profile of its name.
    cfg = projection_cfg(
        tmp_path,
        "project.gpus=[h100_hbm2e,a100_80g]",
        "project.nodes=[1]",
        "gpu=a100_80g",
        "gpu.power_limit_w=300",
    )
    run_projection(cfg, plain_console(record=True))
    rows = {r["gpu"]: r for r in json.loads((tmp_path / "projection.json").read_text())["runs"]}
    assert rows["h100_hbm2e"]["power_limit"]["throughput_share"] == pytest.approx(0.915)
    assert rows["a100_80g"]["power_limit"]["throughput_share"] == 1.0
    assert "not modelled" in rows["a100_80g"]["power_limit"]["source"]
    table = (tmp_path / "projection.md").read_text()
    assert "500 of 700 W: x0.915" in table and "300 of 400 W: not modelled" in table


def test_calibration_dir_without_a_summary_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="project.calibrate: .*summary.json"):
        load_calibration(str(tmp_path), None)


def test_calibration_scales_compute_by_measured_over_predicted(tmp_path):
    cfg = compose_run_config(
        [
            "gpu=h100_sxm",
            "model=gpt_125m",
            "parallel=ddp",
            "train.seq_len=1024",
            "train.micro_batch=4",
            "train.global_batch=32",
            "cluster.nproc_per_node=8",
            f"run_dir={tmp_path}",
        ]
    )
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    predicted = predict_run(
        cfg, {"world_size": 8, "nproc_per_node": 8, "nodes": 1}, precision="bf16"
    ).step_time_s
    measured = {
        **summary("h100_sxm", 8, 1e3, 0.4),
        "precision": {"resolved": "bf16"},
        "step_time_s": {"median": 2 * predicted},
    }
    (tmp_path / "summary.json").write_text(json.dumps(measured))
    calibration = load_calibration(str(tmp_path), None)
    assert calibration.compute_scale == pytest.approx(0.5)
    slower = calibration.apply(part_rates(cfg.gpu))
    assert slower.matmul_fraction == pytest.approx(part_rates(cfg.gpu).matmul_fraction / 2)


def test_predict_run_on_the_cpu_uses_the_given_ceiling_and_the_emulated_link():
    cfg = compose_run_config(
        [
            "model=tiny",
            "parallel=ddp",
            "cluster=emulated",
            "cluster.link_gbps=0.2",
            "cluster.nodes=2",
            "cluster.nproc_per_node=1",
            "train.seq_len=64",
            "train.micro_batch=2",
            "train.global_batch=4",
            "run_dir=/unused",
        ]
    )
    with pytest.raises(ConfigError, match="launch.mamf"):
        predict_run(cfg, {"world_size": 2, "nproc_per_node": 1, "nodes": 2}, precision="fp32")
    fast = predict_run(
        cfg,
        {"world_size": 2, "nproc_per_node": 1, "nodes": 2},
        compute_tflops=0.088,
        precision="fp32",
    )
    slow = predict_run(
        cfg,
        {"world_size": 2, "nproc_per_node": 1, "nodes": 2},
        compute_tflops=0.088,
        precision="fp32",
        link_gbps=0.02,
    )
    assert fast.compute_s == pytest.approx(slow.compute_s)
    assert slow.exposed_comm_s > 5 * fast.exposed_comm_s > 0
    assert fast.mfu is not None and 0 < fast.mfu <= 1


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["train.global_batch=0"], "train.global_batch"),
        (["train.micro_batch=0"], "train.micro_batch"),
        (["train.global_batch=-1"], "train.global_batch"),
        (["project.interconnect_bound_share=1.5"], "project.interconnect_bound_share"),
        (["project.attention=bogus"], "project.attention"),
        # The run rules on precision, as python -m launch applies them.
        (["precision=fp8", "model=llama_7b", "parallel=zero3"], "precision.name"),  # DeepSpeed
        # Stages run torchao's fp8, not under a schedule that splits backward in two.
        (
            [
                "precision=fp8",
                "model=llama_7b",
                "parallel=pp_fsdp",
                "parallel.pp_stages_per_rank=2",
                "parallel.pp_schedule=zero_bubble_v",
            ],
            "precision.name",
        ),
        (
            ["precision=fp8", "model=llama_7b", "train.seq_len=100", "train.micro_batch=1"],
            "train.micro_batch",
        ),
        (["precision=fp8"], "precision.fp8.min_dim"),  # tiny: nothing 4096 wide
        # The main job's batch (8 sequences, micro batch 4): no projected size divides it, so
        # nothing is projected (it was a table of 44 skipped rows, exit 0).
        (["model=tiny", "train.seq_len=128", "train.global_batch=8"], "train.global_batch"),
        (["project.gpus=[cpu]"], "project.gpus"),  # was ValueError: cpu has no fp32 peak
        # Duplicates printed the same point twice (node counts at two batches).
        (["project.nodes=[1,1]"], "project.nodes"),
        (["project.gpus=[h100_sxm,h100_sxm]"], "project.gpus"),
        # No run can put MoE blocks in pipeline stages; projected from dense stage counts it
        # scored 290%.
        (["model=olmoe_1b_7b", "parallel=pp", "train.micro_batch=1"], "parallel.name"),
    ],
)
def test_bad_projection_input_is_one_config_error_before_anything_is_written(
    tmp_path, overrides, key
):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        run_projection(
            projection_cfg(tmp_path, f"project.out={out}", *overrides), plain_console(record=True)
        )
    assert err.value.key == key
    assert "\n" not in str(err.value)
    assert not out.exists()


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        (None, "summary.json: unreadable summary"),
        ({"step_time_s": {"median": -0.5}}, "step_time_s.median is -0.5, expected > 0"),
        ({"world_size": "2"}, "world_size is '2', expected an integer"),
        ({"precision": None}, "precision is None, expected a JSON object"),
    ],
    ids=["not-json", "negative-step", "world-size-string", "precision-null"],
)
def test_a_corrupt_calibration_summary_is_a_config_error(tmp_path, changes, says):
    # Each was a traceback (JSONDecodeError, TypeError) or, for a negative step time, a
    # negative compute scale taken without a word.
    record = {**summary("cpu", 1, 1e3, 0.4), **(changes or {})}
    (tmp_path / "summary.json").write_text(json.dumps(record) if changes else "{not json")
    (tmp_path / "config.yaml").write_text("model: {}\n")
    with pytest.raises(ConfigError) as err:
        load_calibration(str(tmp_path), None)
    assert err.value.key == "project.calibrate" and says in str(err.value), err.value


def test_a_file_as_calibrate_says_a_run_dir_is_expected(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match="summary.json is a file; expected the run dir"):
        load_calibration(str(tmp_path / "summary.json"), None)


def test_a_run_that_fits_nowhere_suggests_what_it_does_not_already_do(tmp_path):
    cfg = projection_cfg(
        tmp_path,
        "model=llama_70b",
        "parallel=fsdp",
        "parallel.activation_checkpoint=full",
        "train.micro_batch=1",
        "train.global_batch=8",
        "project.gpus=[l40s]",
        "project.nodes=[1]",
    )
    with pytest.raises(ConfigError) as err:
        run_projection(cfg, plain_console(record=True))
    assert err.value.key == "parallel"
    text = str(err.value)
    assert "parallel=fsdp" not in text.split("try")[1]
    assert "activation_checkpoint=full" not in text and "micro_batch" not in text.split("try")[1]
    assert "more nodes" in text


def test_a_peak_that_does_not_fall_with_nodes_does_not_suggest_more_nodes(tmp_path):
    # HSDP shards inside a node and replicates across: a rank holds the same at 2 and 4 nodes.
    cfg = projection_cfg(
        tmp_path, "model=llama_70b", "parallel=hsdp", "parallel.activation_checkpoint=full",
        "train.micro_batch=1", "train.global_batch=64", "project.gpus=[h800]",
        "project.nodes=[2,4]",
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        run_projection(cfg, plain_console(record=True))
    text = str(err.value)
    assert "more nodes (project.nodes)" not in text
    falls = r"not more nodes: its peak per rank does not fall with them, [\d.]+ GiB at 2 node"
    assert re.search(falls, text)


def test_an_moe_model_under_a_layout_without_ep_is_pointed_at_ep_fsdp(tmp_path):
    cfg = projection_cfg(
        tmp_path, "model=mixtral_8x7b", "parallel=fsdp", "train.micro_batch=1",
        "train.global_batch=64", "project.gpus=[h800]", "project.nodes=[1]",
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        run_projection(cfg, plain_console(record=True))
    assert "parallel=ep_fsdp (each rank holds n_experts / ep of the experts)" in str(err.value)


def test_an_expert_parallel_layout_is_pointed_at_its_sharded_twin(tmp_path):
    cfg = projection_cfg(
        tmp_path, "model=mixtral_8x7b", "parallel=ep", "train.micro_batch=1",
        "train.global_batch=64", "project.gpus=[h800]", "project.nodes=[1]",
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        run_projection(cfg, plain_console(record=True))
    assert "try parallel=ep_fsdp (or parallel=auto)" in str(err.value)


def test_a_layout_that_cannot_span_nodes_does_not_suggest_more_nodes(tmp_path):
    cfg = projection_cfg(
        tmp_path, "model=llama_70b", "parallel=tp", "train.micro_batch=1",
        "train.global_batch=64", "project.gpus=[h800]", "project.nodes=[1,2]",
    )  # fmt: skip
    with pytest.raises(ConfigError) as err:
        run_projection(cfg, plain_console(record=True))
    assert "h800 at 1 node(s)" in str(err.value)  # parallel=tp stays inside a node
    assert "more nodes" not in str(err.value)


def test_a_skipped_collective_says_why_on_the_console(tmp_path):
    cfg = projection_cfg(
        tmp_path, "project.mode=comm", "project.gpus=[l40s]", "project.nodes=[2]",
        "comm.max_bytes=4096",
    )  # fmt: skip
    console = plain_console(record=True, width=300)
    run_projection(cfg, console)
    assert "no NIC rate" in console.export_text()


def test_pipelines_are_projected_rows(tmp_path):
    rows = project_runs(
        projection_cfg(
            tmp_path,
            "model=llama_7b",
            "parallel=pp_fsdp",
            "train.seq_len=4096",
            "train.micro_batch=1",
            "train.global_batch=16",
            "project.nodes=[2]",
        ),
        projected_profiles(["h100_sxm"]),
    )
    (row,) = rows
    assert row["layout"]["name"] == "pp_fsdp" and row["layout"]["pp"] == 2
    assert row["pipeline_bubble_s"] > 0 and row["pipeline_send_s"] > 0


def test_parallel_auto_weak_rows_keep_each_devices_sequences_whatever_layout_wins(tmp_path):
    """llama_70b in fp8 on the H100 takes a pipeline with one data-parallel rank at 4 nodes
    and one with four at 8: the per-rank rule gave the 8-node row (and every candidate there)
    a batch by its own data-parallel size (1,024 against the 4-node row's 256, where the
    H800's fsdp rows doubled), so parts and layouts were compared on different work. Every
    row now holds 8 sequences per GPU; a fixed layout keeps its per-rank rule."""
    common = ["model=llama_70b", "precision=fp8", "train.seq_len=4096", "train.micro_batch=1",
              "train.global_batch=256", "project.nodes=[4,8]"]  # fmt: skip
    rows = project_runs(projection_cfg(tmp_path, *common), projected_profiles(["h100_sxm"]))
    assert [r["global_batch"] / r["world_size"] for r in rows] == [8, 8]
    dp_sizes = {r["layout"]["dp_replicate"] * r["layout"]["dp_shard"] for r in rows}
    assert len(dp_sizes) == 2, dp_sizes  # the layouts differ, the work per GPU does not
    one_node = ["project.gpus=[h100_sxm]", "project.nodes=[1]", "model=gpt_1_3b"]
    record = projection_record(projection_cfg(tmp_path, *one_node))
    assert record["batch_held"] == "sequences_per_device"
    fixed = projection_cfg(tmp_path, *one_node, "parallel=fsdp")
    assert projection_record(fixed)["batch_held"] == "sequences_per_dp_rank"


# -- launch.project's own inputs as a user types them ------------------------------------------

COMM_PROJECTION = ["project.mode=comm", "project.gpus=[h100_sxm]", "project.nodes=[1]"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["comm.min_bytes=0"], "comm.min_bytes"),  # doubled 0 forever
        (["comm.min_bytes=-5"], "comm.min_bytes"),  # doubled towards -inf until OOM-killed
        (["comm.max_bytes=34359738368"], "comm.max_bytes"),  # past launch.comm's 16 GiB
        (["comm.seconds_per_op=nan"], "comm.seconds_per_op"),  # NaN passed `<= 0`
    ],
)
def test_comm_mode_checks_its_sweep_as_launch_comm_does(tmp_path, overrides, key):
    """The same rule (launch/bench/comm_job.py validate_comm) before projecting: the values
    that never ended are refused without projecting (so this test cannot hang)."""
    from launch.project import check_inputs

    with pytest.raises(ConfigError) as err:
        check_inputs(projection_cfg(tmp_path, *COMM_PROJECTION, *overrides))
    assert err.value.key == key


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["comm.ops=[]"], "error: comm.ops: []: choose from all_reduce,"),
        (["comm.max_bytes=10", "comm.min_bytes=100"], "error: comm.max_bytes: 10: must be >="),
        (["project.gpus=h100_sxm"], "write the list form project.gpus=[h100_sxm]"),
        (["project.price_per_gpu_hour=2"], "project.price_per_gpu_hour.NAME=VALUE"),
        (["+project.mode=comm"], "error: project.mode: is a key of the config already"),
    ],
)
def test_refused_projection_input_is_one_line_exit_2_and_nothing_written(
    module_in_process, tmp_path, overrides, line
):
    """Each was an empty table and exit 0, or OmegaConf's words without the form to write."""
    out = tmp_path / "out"
    result = module_in_process("launch.project", *COMM_PROJECTION, f"project.out={out}", *overrides)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and line in result.stderr, result.stderr
    assert not out.exists()


def test_an_existing_file_as_project_out_is_one_line_exit_2(module_in_process, tmp_path):
    """A file where project.out is, or where a folder above it would go."""
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    for out, where in ((taken, f"{taken}"), (taken / "sub", f"{taken / 'sub'}: {taken}")):
        result = module_in_process("launch.project", *COMM_PROJECTION, f"project.out={out}")
        assert result.returncode == 2
        assert result.stderr == f"error: project.out: {where} is not a directory; expected a " \
            "directory for projection.md, .json and .png\n"  # fmt: skip
    assert taken.read_text() == "mine\n"


@pytest.mark.parametrize(
    "form",
    ["project.price_per_gpu_hour={h100_sxm:2}", "+project.price_per_gpu_hour={h100_sxm:2}"],
)
def test_a_price_map_in_one_override_is_taken(module_in_process, tmp_path, form):
    """Was `Key 'h100_sxm' is not in struct`, or `+` refused with itself as the suggestion."""
    out = tmp_path / "out"
    result = module_in_process(
        "launch.project", "project.gpus=[h100_sxm]", "project.nodes=[1]", "model=gpt_1_3b",
        "train.seq_len=2048", "train.micro_batch=4", "train.global_batch=64",
        f"project.out={out}", form,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = json.loads((out / "projection.json").read_text())["runs"]
    assert run["tokens_per_dollar"] > 0


def comm_json(directory, record: dict):
    """A comm.json beside the config.yaml of an 8-GPU H100 node (what calibration reads)."""
    cfg = compose_run_config(["gpu=h100_sxm", "cluster.nproc_per_node=8", "run_dir=/unused"])
    directory.mkdir(exist_ok=True)
    (directory / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    path = directory / "comm.json"
    path.write_text(json.dumps(record))
    return path


POINT = {"scope": "intra-node", "bytes": 2**26, "group_size": 8, "busbw_gbytes_per_s": 300.0}


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({}, "has no results list"),  # was taken: "links: intra x1.00, inter x1.00"
        ({"results": [{**POINT, "op": "all_gather"}]}, "no intra-node or inter-node all_reduce"),
        ({"results": [{"op": "all_reduce"}]}, "a result lacks one of op, scope, bytes"),
        # Each was a ZeroDivisionError or TypeError traceback.
        (
            {"results": [{**POINT, "op": "all_reduce", "group_size": 1}]},
            "group_size is 1, expected an integer >= 2",
        ),
        (
            {"results": [{**POINT, "op": "all_reduce", "busbw_gbytes_per_s": 0}]},
            "busbw_gbytes_per_s is 0, expected a finite number > 0",
        ),
        (
            {"results": [{**POINT, "op": "all_reduce", "bytes": "64M"}]},
            "bytes is '64M', expected an integer >= 1",
        ),
    ],
)
def test_a_comm_json_that_calibrates_nothing_is_refused(tmp_path, record, says):
    path = comm_json(tmp_path / "comm", record)
    with pytest.raises(ConfigError) as err:
        load_calibration(None, str(path))
    assert err.value.key == "project.calibrate_comm"
    assert str(path) in str(err.value) and says in str(err.value)


def test_a_comm_json_with_all_reduce_points_calibrates_the_links(tmp_path):
    path = comm_json(tmp_path / "comm", {"results": [{**POINT, "op": "all_reduce"}]})
    calibration = load_calibration(None, str(path))
    assert calibration.intra_scale != 1.0 and calibration.inter_scale == 1.0


def test_a_directory_as_calibrate_comm_says_it_is_one(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; expected a comm.json file"):
        load_calibration(None, str(tmp_path))


def _pipeline_row(tmp_path, *layout):
    (row,) = project_runs(
        projection_cfg(
            tmp_path,
            "model=llama_7b",
            "train.seq_len=128",
            "train.micro_batch=1",
            "train.global_batch=8",
            "project.nodes=[1]",
            *layout,
        ),
        projected_profiles(["h800"]),
    )
    return row


@pytest.mark.parametrize("pp", [4, 8])
def test_a_pipeline_never_scores_above_one_device_doing_its_work(tmp_path, pp):
    # At 8 sequences of 128 tokens the AdamW step dominates; each pipeline rank steps 1/pp of
    # it. The base stepped the whole model's (1.2 at pp 4, 2.0 at pp 8), and parallel=auto
    # picked those rows.
    row = _pipeline_row(tmp_path, "parallel=pp_fsdp", f"parallel.pp={pp}")
    assert row["scaling_efficiency"] < 1


def test_tensor_parallel_never_scores_above_one_device_doing_its_work(tmp_path):
    # Each TP rank steps 1/tp of the AdamW state; the base stepped all of it (101.4% here).
    row = _pipeline_row(tmp_path, "parallel=tp")
    assert row["layout"]["tp"] == 8
    assert row["scaling_efficiency"] < 1


@pytest.mark.parametrize("model", ["olmoe_1b_7b", "deepseek_v2_lite_mha"])
def test_expert_parallel_never_scores_above_one_device_doing_its_work(tmp_path, model):
    # ep runs its dense units in FSDP2 on a mesh without a shard dim, which casts and copies
    # them per gather as its one-device base (FSDP) does; the rank was charged autocast's
    # casts instead, fewer bytes than its base: 101% and 113% here.
    (row,) = project_runs(
        projection_cfg(
            tmp_path, f"model={model}", "train.seq_len=4096", "train.micro_batch=1",
            "train.global_batch=64", "project.nodes=[1]", "parallel=ep", "parallel.ep=8",
        ),
        projected_profiles(["h100_sxm"]),
    )  # fmt: skip
    assert row["layout"]["ep"] == 8
    assert 0 < row["scaling_efficiency"] < 1


def test_pp_fsdp_of_one_rank_per_stage_scores_as_plain_pp(tmp_path):
    # dp_shard 1: the same stages, microbatches and bubble; the two layouts differ only in how
    # they hold 16-bit weights and gradients, which each one's base holds the same way, so
    # the efficiencies come out close (they were 0.89 and 2.02).
    pp = _pipeline_row(tmp_path, "parallel=pp", "parallel.pp=8")
    fsdp = _pipeline_row(tmp_path, "parallel=pp_fsdp", "parallel.pp=8")
    assert fsdp["layout"]["dp_shard"] == 1
    assert fsdp["grad_accum"] == pp["grad_accum"] == 8
    # Close, not equal: FSDP2 under torch's PipelineStage keeps the stage's unsharded
    # gradients in fp32 from microbatch to microbatch (100 bytes per parameter over these 8),
    # which one device with one microbatch never does (8: no accumulation, no cast: compute.py's
    # FSDP2 count); plain pp accumulates in place. 0.42 and 0.53 here.
    eff = fsdp["scaling_efficiency"], pp["scaling_efficiency"]
    assert 0 < eff[0] < eff[1] <= 1 and eff[1] - eff[0] < 0.15, eff


def test_a_pipeline_stage_casts_and_steps_only_its_own_parameters():
    from launch.perfmodel.pipelined import stage_tensors
    from train.spec import shapes

    cfg = compose_run_config(
        ["model=llama_7b", "parallel=pp", "train.global_batch=8", "train.micro_batch=1",
         "run_dir=/unused"]
    )  # fmt: skip
    plan = plan_layout(cfg, 8, 8)
    held = [shapes.numel(stage_tensors(cfg.model, plan.pipeline, r)) for r in range(8)]
    # The stages partition the model: the embedding and head are counted once, not per stage.
    assert sum(held) == shapes.numel(shapes.all_param_shapes(cfg.model))


def test_tp_inside_pipeline_stages_splits_each_stage_and_adds_its_tp_collectives(tmp_path):
    from launch.perfmodel.pipelined import stage_tensors
    from train.spec import shapes

    # Each TP rank holds 1/tp of its stage's matrices: over the stages, one TP rank's share.
    cfg = compose_run_config(
        ["model=llama_7b", "parallel=pp", "parallel.pp=2", "parallel.tp=4",
         "train.global_batch=8", "train.micro_batch=1", "run_dir=/unused"]
    )  # fmt: skip
    plan = plan_layout(cfg, 8, 8)
    held = [shapes.numel(stage_tensors(cfg.model, plan.pipeline, r, 4)) for r in range(2)]
    assert sum(held) == shapes.numel(shapes.all_param_shapes(cfg.model, 4))

    alone = _pipeline_row(tmp_path, "parallel=pp", "parallel.pp=8")
    inside = _pipeline_row(tmp_path, "parallel=pp", "parallel.pp=2", "parallel.tp=4")
    assert inside["layout"]["tp"] == 4 and inside["layout"]["sequence_parallel"]
    # The TP collectives of each microbatch's blocks (none in pp alone: its "activations" are
    # the stages' sends), and a rank holds an eighth of the model either way, a quarter of a
    # half here.
    assert inside["comm_s"]["all_gather"] > 0 and inside["comm_s"]["reduce_scatter"] > 0
    assert not alone["comm_s"].get("all_gather") and not alone["comm_s"].get("reduce_scatter")
    # and the copies torch makes to regroup the sequence around them (compute.py).
    assert inside["compute_breakdown_s"]["sequence_regroups"] > 0
    memory = inside["memory"]["param_bytes"], alone["memory"]["param_bytes"]
    assert memory[0] == pytest.approx(memory[1], rel=0.15)
    assert 0 < inside["pipeline_send_s"] < alone["pipeline_send_s"]
    # A TP rank sends its quarter of the sequence either way: under sequence parallelism it
    # holds only that; without it, Megatron's scatter/gather splits the stream to send and
    # all-gathers it on the next stage (train/spec/traffic.py _pipeline).
    shape = StepShape(micro_batch=8, seq_len=128, accum_steps=1, grad_clip=True, precision="bf16")
    no_sp = plan_layout(
        dataclasses.replace(
            cfg, parallel=dataclasses.replace(cfg.parallel, sequence_parallel=False)
        ),
        8,
        8,
    )
    volume = [
        CommVolume.of(step_collectives(cfg.model, layout, shape, pp_rank=0))
        for layout in (plan, no_sp)
    ]
    assert volume[0].send_recv == volume[1].send_recv > 0
    boundary = [
        c
        for c in step_collectives(cfg.model, no_sp, shape, pp_rank=0)
        if c.role == "stage boundary"
    ]
    # Rank 0's stage sends forward: the gradient's parts all-gathered once per microbatch.
    assert [(c.kind, c.calls) for c in boundary] == [("all_gather", 8)]
    assert boundary[0].nbytes == 4 * volume[0].send_recv // 8  # the whole stream, 4 parts


def test_every_pipeline_rank_keeps_only_its_checkpointed_blocks_inputs_per_microbatch():
    from launch.perfmodel.memory import activation_bytes
    from launch.perfmodel.pipelined import stage_memory, stage_model, stage_plan

    cfg = compose_run_config(
        ["model=llama_7b", "model.vocab_size=256", "parallel=pp", "parallel.pp=4",
         "parallel.activation_checkpoint=full", "train.seq_len=4096", "train.global_batch=16",
         "train.micro_batch=1", "run_dir=/unused"]
    )  # fmt: skip
    plan = plan_layout(cfg, 4, 4)
    # Stage blocks are numbered as the stage model numbers them: rank 2 holds blocks 16-23.
    assert stage_plan(plan, 2).checkpointed == list(range(8))
    # Each of rank 0's 4 in-flight microbatches keeps its 8 blocks' inputs; the block a
    # checkpointed backward rebuilds is one microbatch's at a time. (A small vocabulary, so
    # that rank 0, not the loss's rank, holds the most.)
    m, mine = stage_model(cfg.model, plan.pipeline, 0), stage_plan(plan, 0)
    inputs = activation_bytes(m, mine, 1, 4096, "bf16", head=False, backward_peak=False)
    rebuilt = activation_bytes(m, mine, 1, 4096, "bf16", head=False) - inputs
    assert inputs == 8 * 4 * cfg.model.d_model * 4096  # fp32 stream under autocast
    shape = StepShape(micro_batch=1, seq_len=4096, accum_steps=16, grad_clip=True,
                      precision="bf16")  # fmt: skip
    memory = stage_memory(cfg.model, plan, shape, 80 * 2**30)
    assert memory.activation_bytes == 4 * inputs + rebuilt


def test_gpipes_last_rank_holds_every_microbatchs_loss_graph():
    from launch.perfmodel.memory import activation_bytes
    from launch.perfmodel.pipelined import stage_memory, stage_model, stage_plan

    # GPipe runs every microbatch's forward and loss before any backward: the last rank holds
    # each one's head activations and saved log-softmax (4 bytes per vocabulary entry and
    # token), and the loss's backward gradients once.
    cfg = compose_run_config(
        ["model=llama_7b", "parallel=pp", "parallel.pp=4", "parallel.pp_schedule=gpipe",
         "train.seq_len=4096", "train.global_batch=16", "train.micro_batch=1",
         "run_dir=/unused"]
    )  # fmt: skip
    plan = plan_layout(cfg, 4, 4)
    m, mine = stage_model(cfg.model, plan.pipeline, 3), stage_plan(plan, 3)
    held = activation_bytes(m, mine, 1, 4096, "bf16", backward_peak=False)
    whole = activation_bytes(m, mine, 1, 4096, "bf16")
    assert whole - held == (12 - 4) * cfg.model.vocab_size * 4096  # the loss's two gradients
    shape = StepShape(micro_batch=1, seq_len=4096, accum_steps=16, grad_clip=True,
                      precision="bf16")  # fmt: skip
    memory = stage_memory(cfg.model, plan, shape, None)
    assert memory.activation_bytes == 16 * held + whole - held


def test_weak_scalings_base_is_the_fewest_node_count_even_where_the_layout_is_refused(tmp_path):
    # hsdp cannot run on one node. The base was the first node count that ran, so the same
    # 8-node point had 1 sequence per GPU with [1,8] and 4 with [1,2,8] (85.8% and 93.4%).
    def at_eight(nodes):
        cfg = projection_cfg(
            tmp_path, "parallel=hsdp", "train.micro_batch=1", "project.gpus=[h100_sxm]",
            f"project.nodes={nodes}",
        )  # fmt: skip
        return {r["nodes"]: r for r in project_runs(cfg, projected_profiles(["h100_sxm"]))}[8]

    short, long = at_eight("[1,8]"), at_eight("[1,2,8]")
    # 64 sequences at 1 node of 8 GPUs: 8 per data-parallel rank, 512 over 64.
    assert short["global_batch"] == long["global_batch"] == 512
    assert short["scaling_efficiency"] == pytest.approx(long["scaling_efficiency"])
    # With 8 nodes the fewest, the 64 sequences are at 8 nodes, and the header says where.
    run_projection(
        projection_cfg(
            tmp_path,
            "parallel=hsdp",
            "train.micro_batch=1",
            "project.gpus=[h100_sxm]",
            "project.nodes=[8]",
        ),  # fmt: skip
        plain_console(record=True),
    )
    assert json.loads((tmp_path / "projection.json").read_text())["runs"][0]["global_batch"] == 64
    assert "global batch 64 at 8 node(s)" in (tmp_path / "projection.md").read_text()


def test_expert_parallel_ranks_count_as_data_parallel_ranks_under_weak_scaling(tmp_path):
    # ep_fsdp EP 8 on one node: 8 data-parallel ranks (dp_shard 1 x ep 8), 8 sequences each.
    # The prediction's degrees left ep out, so 4 nodes took 64 per rank (2,048 sequences).
    cfg = projection_cfg(
        tmp_path,
        "model=olmoe_1b_7b",
        "parallel=ep_fsdp",
        "parallel.ep=8",
        "train.seq_len=4096",
        "train.micro_batch=1",
        "project.nodes=[1,4]",
    )
    rows = {r["nodes"]: r for r in project_runs(cfg, projected_profiles(["h100_sxm"]))}
    assert rows[1]["global_batch"] == 64 and rows[4]["global_batch"] == 256


def _measured_auto_run(tmp_path):
    """A run dir as `python -m launch` (parallel=auto) leaves it at world size 1: config.yaml
    holds the layout auto chose with its degrees fixed for that size."""
    run = tmp_path / "ws1"
    run.mkdir()
    cfg = compose_run_config(
        [
            "gpu=h100_sxm",
            "model=gpt_125m",
            "parallel=ddp",
            "parallel.dp_replicate=1",
            "train.seq_len=1024",
            "train.micro_batch=4",
            "train.global_batch=8",
            "cluster.nproc_per_node=1",
            f"run_dir={run}",
        ]
    )
    cfg.resolved.layout_reason = "parallel=auto: ddp (the model's choice at world size 1)"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    measured = {
        **summary("h100_sxm", 1, 1e3, 0.4),
        "precision": {"resolved": "bf16"},
        "step_time_s": {"median": 0.1},
    }
    (run / "summary.json").write_text(json.dumps(measured))
    return run


def test_calibrating_from_an_auto_run_projects_auto_at_every_size(tmp_path):
    # Was: "parallel.dp_replicate: dp_replicate 1 x dp_shard 1 x tp 1 = 1, but the world
    # size is 8" for every run of the default `python -m launch`.
    run = _measured_auto_run(tmp_path)
    overrides = [f"project.calibrate={run}", "project.gpus=[h100_sxm]", "project.nodes=[1,2]"]
    cfg = compose_run_config([*overrides, f"run_dir={tmp_path}"])
    run_projection(cfg, plain_console(record=True))  # project.* keys: applied with no overrides
    record = json.loads((tmp_path / "projection.json").read_text())
    assert record["parallel"] == "auto" and record["model"] == "gpt_125m"
    assert all(not r.get("skipped") for r in record["runs"])
    assert [r["world_size"] for r in record["runs"]] == [8, 16]


def test_command_line_overrides_apply_to_the_calibration_runs_config(tmp_path):
    run = _measured_auto_run(tmp_path)
    overrides = [
        f"project.calibrate={run}",
        "project.gpus=[h100_sxm]",
        "project.nodes=[1]",
        "train.global_batch=64",  # was silently the run's 8
        "parallel=fsdp",  # was silently auto's choice for the measured run
        "model=gpt_350m",
    ]
    cfg = compose_run_config([*overrides, f"run_dir={tmp_path}"])
    run_projection(cfg, plain_console(record=True), overrides)
    record = json.loads((tmp_path / "projection.json").read_text())
    assert record["global_batch"] == 64 and record["parallel"] == "fsdp"
    assert record["model"] == "gpt_350m"
    (row,) = record["runs"]
    assert row["layout"]["name"] == "fsdp" and row["global_batch"] == 64
    with pytest.raises(ConfigError) as err:
        run_projection(cfg, plain_console(record=True), [*overrides, "~train.lr"])
    assert err.value.key == "train.lr"


def test_a_part_named_on_the_command_line_is_the_one_projected(tmp_path):
    """`gpu=h800` with no project.gpus projects the h800 (it projected all 12 parts); the cpu
    profile has no GPU rates to project, and is refused with the parts that have."""
    cfg = projection_cfg(tmp_path, "gpu=h800", "project.nodes=[1,2]")
    run_projection(cfg, plain_console(record=True), overrides=["gpu=h800", "project.nodes=[1,2]"])
    runs = json.loads((tmp_path / "projection.json").read_text())["runs"]
    assert [(r["gpu"], r["nodes"]) for r in runs] == [("h800", 1), ("h800", 2)]
    # project.gpus, where given, still says which parts.
    cfg = projection_cfg(tmp_path, "gpu=h800", "project.gpus=[a100_80g]", "project.nodes=[1]")
    run_projection(
        cfg, plain_console(record=True), overrides=["gpu=h800", "project.gpus=[a100_80g]"]
    )
    runs = json.loads((tmp_path / "projection.json").read_text())["runs"]
    assert [r["gpu"] for r in runs] == ["a100_80g"]
    out = tmp_path / "cpu"
    with pytest.raises(ConfigError) as err:
        run_projection(
            projection_cfg(out, "gpu=cpu"), plain_console(record=True), overrides=["gpu=cpu"]
        )
    assert err.value.key == "gpu" and "h800" in str(err.value)
    assert not out.exists()


@pytest.mark.parametrize("sweep", ["weak", "strong"])
def test_a_batch_no_size_divides_is_refused_with_one_every_size_runs(tmp_path, sweep):
    """The config's default batch (8 sequences, micro batch 4: the CPU job's, which a bare
    `python -m launch.project` takes) runs on no projected 8-GPU node under FSDP; the
    refusal names a global batch that runs, and it does."""
    extra = [f"sweep={sweep}", "project.nodes=[1,3,4]", "project.gpus=[h100_sxm,a100_40g]"]
    extra += ["parallel=fsdp"]  # (auto finds TP degrees that run 8)
    with pytest.raises(ConfigError) as err:
        run_projection(
            projection_cfg(tmp_path, *extra, "train.global_batch=8"), plain_console(record=True)
        )
    assert err.value.key == "train.global_batch"
    suggested = int(re.search(r"try train\.global_batch=(\d+)$", str(err.value))[1])
    cfg = projection_cfg(tmp_path, *extra, f"train.global_batch={suggested}")
    assert run_projection(cfg, plain_console(record=True)) == 0
    runs = json.loads((tmp_path / "projection.json").read_text())["runs"]
    assert runs and all(r["step_time_s"] for r in runs), [r.get("skipped") for r in runs]


def test_a_cpu_ranks_rule_does_not_refuse_a_gpu_projection(tmp_path):
    """DeepSpeed's CPU accelerator has no fp16, so `python -m launch` refuses zero3 fp16 on CPU
    ranks; a projection (composed on a CPU host, gpu=auto) is of GPU parts, whose DeepSpeed
    runs fp16: it was refused with the CPU's reason. pp's fp16 refusal holds everywhere."""
    assert compose_run_config(["run_dir=/unused"]).gpu.name == "cpu"  # this host, as CI's
    cfg = projection_cfg(tmp_path, "parallel=zero3", "precision=fp16", "project.gpus=[a100_80g]")
    assert run_projection(cfg, plain_console(record=True)) == 0
    runs = json.loads((tmp_path / "projection.json").read_text())["runs"]
    assert runs and all(r["step_time_s"] for r in runs)
    with pytest.raises(ConfigError) as err:
        run_projection(projection_cfg(tmp_path, "parallel=pp", "precision=fp16"), plain_console())
    assert err.value.key == "precision.name"


def test_gpu_auto_written_out_projects_this_machines_part(tmp_path, monkeypatch):
    """`gpu=auto` on the command line means this machine's part, as python -m launch detects
    it: the H100 node's own profile alone; on a machine without a GPU, the cpu refusal."""
    from launch import resolve

    monkeypatch.setattr(resolve, "local_gpus", lambda: [("NVIDIA H100 80GB HBM3", 79.1)] * 8)
    from launch.conf_tree import load_gpu_profile

    def composed(where, *extra):  # as the command line composes it: gpu=auto not yet detected
        cfg = projection_cfg(where, *extra)
        cfg.gpu = load_gpu_profile("auto")
        return cfg

    cfg = composed(tmp_path, "project.nodes=[1]")
    run_projection(cfg, plain_console(record=True), overrides=["gpu=auto", "project.nodes=[1]"])
    runs = json.loads((tmp_path / "projection.json").read_text())["runs"]
    assert [r["gpu"] for r in runs] == ["h100_sxm"]
    monkeypatch.setattr(resolve, "local_gpus", lambda: [])
    out = tmp_path / "cpu"
    with pytest.raises(ConfigError) as err:
        run_projection(composed(out), plain_console(record=True), overrides=["gpu=auto"])
    assert str(err.value).startswith("gpu: cpu: launch.project projects GPU profiles")
    assert not out.exists()
    # A card without a profile (resolve.unknown_profile) is named, under the key the user set.
    monkeypatch.setattr(resolve, "local_gpus", lambda: [("NVIDIA RTX 6000 Ada Generation", 48)])
    with pytest.raises(ConfigError) as err:
        run_projection(composed(out), plain_console(record=True), overrides=["gpu=auto"])
    assert err.value.key == "gpu" and "RTX 6000 Ada Generation, which has no profile" in str(
        err.value
    )
    assert not out.exists()


def test_a_named_cpu_projects_collectives_as_project_gpus_does(tmp_path):
    """comm mode projects the cpu profile's link (project.gpus=[cpu] always could);
    gpu=cpu there is not refused as it is for training steps."""
    cfg = projection_cfg(tmp_path, "gpu=cpu", *COMM_PROJECTION[:1], "comm.max_bytes=4096")
    run_projection(cfg, plain_console(record=True), overrides=["gpu=cpu", "project.mode=comm"])
    rows = json.loads((tmp_path / "projection.json").read_text())["collectives"]
    assert rows and {r["gpu"] for r in rows} == {"cpu"}


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        # Job 0 (h800) used to run and write before job 1 was refused.
        (["gpu=h800,cpu"], "error: gpu: cpu: launch.project projects GPU profiles"),
        # Each job's projection.* used to land over the last one's: the h800's kept.
        (["gpu=h100_sxm,h800", "project.out=OUT"], "error: project.out: "),
    ],
)
def test_a_multirun_of_parts_is_checked_whole_before_its_first_job(
    module_in_process, tmp_path, overrides, line
):
    out = tmp_path / "out"
    args = [o.replace("OUT", str(out)) for o in overrides]
    result = module_in_process(
        "launch.project", "-m", *args, "project.nodes=[1]", "train.global_batch=32"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(line) and len(result.stderr.splitlines()) == 1, result.stderr
    assert not out.exists() and not (tmp_path / "multirun").exists()
    assert not list(tmp_path.rglob("projection.json"))


def test_a_configured_layout_names_autos_choice_where_it_is_much_faster(tmp_path):
    """TP 8 for a 7B model in one node (half its efficiency lost to NVLink) gets parallel=auto's
    layout beside it, at least AUTO_HINT_SPEEDUP faster; FSDP on an A100 node, auto's own
    choice, gets none; neither does a parallel=auto row."""
    from launch.perfmodel.projection import AUTO_HINT_SPEEDUP

    def rows(gpu, layout):
        cfg = projection_cfg(
            tmp_path / layout, "model=llama_7b", *LLAMA, "train.global_batch=64",
            f"project.gpus=[{gpu}]", "project.nodes=[1]", f"parallel={layout}",
        )  # fmt: skip
        out = plain_console(record=True, width=400)
        run_projection(cfg, out)
        runs = json.loads((tmp_path / layout / "projection.json").read_text())["runs"]
        return runs, out.export_text()

    (tp,), printed = rows("h800", "tp")
    better = tp["auto_alternative"]
    assert better["speedup"] >= AUTO_HINT_SPEEDUP and better["layout"]["name"] != "tp"
    assert better["tokens_per_s_per_device"] == pytest.approx(
        tp["tokens_per_s_per_device"] * better["speedup"]
    )
    assert f"parallel=auto: {better['layout']['name']}" in printed
    (fsdp,), _ = rows("a100_80g", "fsdp")
    assert "auto_alternative" not in fsdp
    # Under weak scaling a larger node count's row keeps TP's sequences per data-parallel
    # rank; auto's figure is at that row's own global batch, not at auto's own weak batch.
    cfg = projection_cfg(
        tmp_path / "weak", "model=llama_7b", *LLAMA, "train.global_batch=64",
        "project.gpus=[h800]", "project.nodes=[1,4]", "parallel=tp_fsdp", "parallel.tp=8",
    )  # fmt: skip
    four = project_runs(cfg, projected_profiles(["h800"]))[1]
    alone = projection_cfg(
        tmp_path / "alone", "model=llama_7b", *LLAMA, f"train.global_batch={four['global_batch']}",
        "project.gpus=[h800]", "project.nodes=[4]", "parallel=auto",
    )  # fmt: skip
    (auto_at_four,) = project_runs(alone, projected_profiles(["h800"]))
    assert four["auto_alternative"]["tokens_per_s_per_device"] == pytest.approx(
        auto_at_four["tokens_per_s_per_device"]
    )
    (auto,), _ = rows("h800", "auto")
    assert "auto_alternative" not in auto
