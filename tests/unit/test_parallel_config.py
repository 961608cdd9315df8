"""Layout arithmetic and bad input, without starting a rank: degrees with -1 for the rest,
the DeepSpeed JSON built from the config, activation-checkpointing choices and their extra
FLOPs, and every layout rule's one-line ConfigError (exit 2 through the CLI)."""

from __future__ import annotations

import sys

import pytest

from launch.errors import ConfigError
from launch.plan import plan_runs
from launch.validate import validate
from tests.conftest import compose_run_config, validated
from train.parallel.zero import deepspeed_config, import_deepspeed
from train.spec.config import ParallelConfig
from train.spec.degrees import (
    Degrees,
    checkpointed_layers,
    plan_layout,
    resolve_degrees,
)
from train.spec.shapes import flops_per_token, recompute_flops_per_token


@pytest.mark.parametrize(
    "layout, world, per_node, expected",
    [
        (ParallelConfig(name="ddp"), 8, 8, (8, 1, 1)),
        (ParallelConfig(name="fsdp", dp_replicate=1, dp_shard=-1), 8, 8, (1, 8, 1)),
        # hsdp's defaults follow the nodes: shard inside one, replicate across them.
        (ParallelConfig(name="hsdp", dp_replicate=-1, dp_shard=-1), 16, 8, (2, 8, 1)),
        (ParallelConfig(name="hsdp", dp_replicate=2, dp_shard=1), 2, 2, (2, 1, 1)),
        (ParallelConfig(name="tp", dp_replicate=1, tp=-1), 4, 4, (1, 1, 4)),
        # tp_fsdp's defaults: TP inside a node, FSDP across nodes.
        (ParallelConfig(name="tp_fsdp", dp_replicate=1, dp_shard=-1, tp=-1), 16, 8, (1, 2, 8)),
        (ParallelConfig(name="tp_fsdp", dp_replicate=1, dp_shard=-1, tp=2), 8, 8, (1, 4, 2)),
        (ParallelConfig(name="tp_fsdp", dp_replicate=2, dp_shard=2, tp=2), 8, 8, (2, 2, 2)),
        (ParallelConfig(name="zero3", dp_replicate=1, dp_shard=-1), 4, 4, (1, 4, 1)),
        (ParallelConfig(name="fsdp", dp_replicate=1, dp_shard=-1), 1, 1, (1, 1, 1)),
    ],
)
def test_degrees_with_minus_one_for_the_rest(layout, world, per_node, expected):
    assert resolve_degrees(layout, world, per_node) == Degrees(*expected)


@pytest.mark.parametrize(
    "layout, world, key, message",
    [
        (ParallelConfig(name="ddp", tp=2), 2, "parallel.tp", "parallel=ddp only spreads over"),
        (
            ParallelConfig(name="tp_fsdp", dp_replicate=1, dp_shard=2, tp=2),
            2,
            "parallel.tp",
            "dp_replicate 1 x dp_shard 2 x tp 2 = 4, but the world size is 2",
        ),
        (ParallelConfig(name="fsdp", dp_replicate=1, dp_shard=0), 2, "parallel.dp_shard", ">= 1"),
        (
            ParallelConfig(name="tp_fsdp", dp_replicate=-1, dp_shard=-1, tp=1),
            4,
            "parallel.dp_shard",
            "only one of dp_replicate, dp_shard may be -1",
        ),
    ],
)
def test_degrees_that_do_not_fit(layout, world, key, message):
    with pytest.raises(ConfigError) as err:
        resolve_degrees(layout, world, world)
    assert err.value.key == key and message in err.value.message


def test_checkpointed_layers_and_their_recompute():
    assert checkpointed_layers("none", 4, 2) == []
    assert checkpointed_layers("full", 4, 2) == [0, 1, 2, 3]
    assert checkpointed_layers("selective", 4, 2) == [1, 3]
    assert checkpointed_layers("selective", 6, 3) == [2, 5]
    cfg = compose_run_config(["model=gpt_125m", "run_dir=/unused"]).model
    model = flops_per_token(cfg, 1024)
    # Full recompute re-runs every block's forward, a third of the blocks' forward + backward;
    # the head is not recomputed (norm weights, left out here, are ~1e-3 of the FLOPs).
    extra = recompute_flops_per_token(cfg, 1024, list(range(cfg.n_layers)))
    head = 6 * cfg.vocab_size * cfg.d_model
    assert extra == pytest.approx((model - head) / 3, rel=1e-3)
    assert recompute_flops_per_token(cfg, 1024, [1, 3, 5, 7, 9, 11]) * 2 == extra


def ds_config(overrides, precision="fp32", accum=2):
    cfg = compose_run_config(["run_dir=/unused", *overrides])
    stage = int(cfg.parallel.name[-1])
    return deepspeed_config(cfg, stage, precision, cfg.train.micro_batch, accum)


def test_deepspeed_json_from_the_config():
    config = ds_config(
        ["parallel=zero3", "train.micro_batch=2", "train.global_batch=8", "train.grad_clip=0.5"]
    )
    assert config["train_micro_batch_size_per_gpu"] == 2
    assert config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 8
    assert config["gradient_clipping"] == 0.5
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    # parallel.bucket_mb=25 in elements of 4-byte fp32 gradients.
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 25 * 2**20 // 4
    assert "bf16" not in config and "fp16" not in config
    assert "offload_optimizer" not in zero and "offload_param" not in zero


def test_deepspeed_json_precision_and_offload():
    bf16 = ds_config(["parallel=zero2", "parallel.offload_optimizer=true"], "bf16")
    assert bf16["bf16"] == {"enabled": True}
    assert bf16["zero_optimization"]["reduce_bucket_size"] == 25 * 2**20 // 2
    assert bf16["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert bf16["zero_force_ds_cpu_optimizer"] is False  # torch AdamW stays the optimizer
    fp16 = ds_config(
        ["parallel=zero3", "parallel.offload_params=true", "precision.loss_scale_init=1024"],
        "fp16",
    )
    assert fp16["fp16"]["enabled"] and fp16["fp16"]["initial_scale_power"] == 10
    assert fp16["fp16"]["loss_scale_window"] == 2000
    assert fp16["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="fp8 is not available with parallel=zero1"):
        ds_config(["parallel=zero1"], "fp8")


BAD_LAYOUTS = [
    (
        ["parallel=tp", "model.n_heads=1", "model.n_kv_heads=1"],
        "parallel.tp: 2 does not divide model.n_heads 1",
    ),
    (["parallel=tp", "model.n_kv_heads=1"], "parallel.tp: 2 does not divide model.n_kv_heads 1"),
    (
        ["parallel=tp", "model.ffn_hidden=385"],
        "parallel.tp: 2 does not divide model.ffn_hidden 385",
    ),
    (
        ["parallel=tp", "parallel.sequence_parallel=true", "train.seq_len=63"],
        "parallel.tp: sequence parallelism splits the sequence: 2 does not divide train.seq_len 63",
    ),
    (
        ["parallel=tp_fsdp", "parallel.tp=2", "parallel.dp_shard=2"],
        "parallel.tp: dp_replicate 1 x dp_shard 2 x tp 2 = 4, but the world size is 2",
    ),
    (["parallel=hsdp"], "parallel.dp_replicate: hsdp shards inside a node and replicates across"),
    (
        ["parallel=ddp", "parallel.offload_optimizer=true"],
        "parallel.offload_optimizer: parallel=ddp has no",
    ),
    (
        ["parallel=zero2", "parallel.offload_params=true"],
        "parallel.offload_params: parallel=zero2 has no",
    ),
    (["parallel=ddp", "parallel.sequence_parallel=true"], "parallel.sequence_parallel: splits"),
    (
        ["parallel.activation_checkpoint=some"],
        "parallel.activation_checkpoint: Invalid value 'some'",
    ),
    (
        ["parallel=zero3", "precision=fp8"],
        "precision.name: fp8: parallel=zero3 runs through DeepSpeed, which has no fp8",
    ),
    (
        ["parallel=zero1", "precision=fp16"],
        "precision.name: fp16: parallel=zero1 runs through DeepSpeed, whose CPU accelerator",
    ),
    (
        ["parallel=tp", "precision=fp8", "precision.fp8.backend=te", "gpu=h100_sxm"],
        "precision.name: fp8: parallel=tp with Transformer Engine's fp8",
    ),
    (
        ["parallel=tp", "precision=fp8", "precision.fp8.recipe=rowwise", "gpu=h100_sxm"],
        "precision.name: fp8: parallel=tp runs fp8 through torchao's float8 tensor-parallel",
    ),
    (
        ["parallel=tp", "train.global_batch=6", "train.micro_batch=4"],
        "train.global_batch: 6 (at world size 2) is not divisible by micro_batch 4 x "
        "data-parallel size 1",
    ),
]


@pytest.mark.parametrize(
    "overrides, message", BAD_LAYOUTS, ids=[" ".join(o) for o, _ in BAD_LAYOUTS]
)
def test_bad_layouts_are_one_config_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        validated(["sweep=none", "cluster.nproc_per_node=2", "run_dir=/unused", *overrides])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_tp_global_batch_splits_over_data_parallel_ranks_only():
    # 2 TP ranks share their rows: a global batch of 4 at micro batch 4 is one micro-step.
    cfg = compose_run_config(
        ["sweep=none", "parallel=tp", "cluster.nproc_per_node=2", "train.micro_batch=4"]
        + ["train.global_batch=4", "run_dir=/unused"]
    )
    validate(cfg, plan_runs(cfg))
    assert plan_layout(cfg, 2, 2).degrees.dp == 1


def test_deepspeed_missing_names_the_extra(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a),
    )
    cfg = compose_run_config(["sweep=none", "parallel=zero2", "run_dir=/unused"])
    with pytest.raises(ConfigError, match=r"zero2 needs DeepSpeed.*pip install -e \.\[deepspeed\]"):
        validate(cfg, plan_runs(cfg))
    # A rank started by hand fails the same way, in one line.
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(ImportError) as err:
        import_deepspeed()
    assert "pip install -e .[deepspeed]" in str(err.value) and "\n" not in str(err.value)


def test_hsdp_on_one_node_exits_2_in_one_line(launch_in_process, tmp_path):
    result = launch_in_process("parallel=hsdp", "sweep=none", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: parallel.dp_replicate: hsdp")
    assert "parallel=fsdp" in lines[0] and "parallel.dp_replicate=2 parallel.dp_shard=1" in lines[0]
    assert not (tmp_path / "run").exists()
