"""Pipeline arithmetic without a rank: how blocks split over stages, which rank runs which
stage, what each rank sends, the predicted bubble, and every bad pipeline input as one
ConfigError naming the key (exit 2 through the CLI, before any rank starts)."""

from __future__ import annotations

import pytest

from launch.errors import ConfigError
from tests.conftest import compose_run_config, validated
from train.spec.degrees import plan_layout
from train.spec.stages import PipelinePlan, split_layers, stage_ranks
from train.spec.traffic import StepShape, comm_bytes_per_step


@pytest.mark.parametrize(
    "n_layers, stages, expected",
    [(4, 2, [2, 2]), (5, 2, [3, 2]), (7, 4, [2, 2, 2, 1]), (10, 4, [3, 3, 2, 2]), (3, 3, [1] * 3)],
)
def test_uneven_layers_go_to_the_first_stages(n_layers, stages, expected):
    assert split_layers(n_layers, stages) == expected
    assert sum(expected) == n_layers


def test_stage_ranks_round_robin_and_v():
    assert stage_ranks("one_f_one_b", 4, 1) == [0, 1, 2, 3]
    assert stage_ranks("interleaved_one_f_one_b", 2, 3) == [0, 1, 0, 1, 0, 1]
    # V: rank r holds stages r and 2p-1-r, so stages p-1 and p share a rank.
    assert stage_ranks("zero_bubble_v", 3, 2) == [0, 1, 2, 2, 1, 0]


def plan(schedule, pp, v, m, n_layers=8):
    stages = pp * v
    return PipelinePlan(
        schedule, pp, v, m, tuple(split_layers(n_layers, stages)),
        tuple(stage_ranks(schedule, pp, v)),
    )  # fmt: skip


def test_sends_per_microbatch_count_cross_rank_boundaries_only():
    p = plan("one_f_one_b", 4, 1, 8)
    # Ends send one way (activations or gradients), middles both.
    assert [p.sends_per_microbatch(r) for r in range(4)] == [1, 2, 2, 1]
    interleaved = plan("interleaved_one_f_one_b", 2, 2, 4)  # stages 0 1 0 1
    assert [interleaved.sends_per_microbatch(r) for r in range(2)] == [3, 3]
    v = plan("zero_bubble_v", 2, 2, 4)  # stages 0 1 1 0: the middle boundary stays on rank 1
    assert [v.sends_per_microbatch(r) for r in range(2)] == [2, 2]


def test_predicted_bubble():
    assert plan("one_f_one_b", 4, 1, 8).predicted_bubble == pytest.approx(3 / 11)
    assert plan("gpipe", 2, 1, 4).predicted_bubble == pytest.approx(1 / 5)
    # Interleaving v chunks divides the idle slots by v: (p-1)/v / (m + (p-1)/v).
    assert plan("interleaved_one_f_one_b", 4, 2, 8).predicted_bubble == pytest.approx(1.5 / 9.5)
    assert plan("zero_bubble_v", 2, 2, 4).predicted_bubble == 0


def layout_for(*overrides, world=2):
    cfg = compose_run_config(["sweep=none", f"cluster.nproc_per_node={world}", "run_dir=/unused"]
                             + list(overrides))  # fmt: skip
    return cfg, plan_layout(cfg, world, world)


def test_pp_takes_the_rest_of_the_world_and_sits_outermost():
    _, layout = layout_for("parallel=pp", "model=tiny", world=2)
    assert layout.degrees.pp == 2 and layout.degrees.dp == 1 and layout.degrees.world == 2
    assert layout.pipeline.layers_per_stage == (2, 2)  # tiny has 4 blocks
    assert layout.as_dict()["pp"] == 2
    _, fsdp = layout_for("parallel=pp_fsdp", "model=tiny", "train.micro_batch=2", world=4)
    assert (fsdp.degrees.pp, fsdp.degrees.dp_shard) == (2, 2)


def test_send_recv_bytes_follow_the_formula():
    cfg, layout = layout_for(
        "parallel=pp", "model=tiny", "parallel.pp=4", "train.micro_batch=2", world=4
    )
    rows, seq, d = 8, 64, cfg.model.d_model
    volume = comm_bytes_per_step(cfg.model, layout, StepShape(2, seq, 4, grad_clip=True))
    # The busiest rank is a middle stage: activations forward and gradients back, fp32.
    assert volume.send_recv == 2 * rows * seq * d * 4
    assert volume.all_reduce == 4 + 4  # the loss to every stage, the gradient norm
    assert volume.total == volume.send_recv + 8
    # Microbatch count does not change the bytes: they split the same rows.
    assert comm_bytes_per_step(cfg.model, layout, StepShape(1, seq, 8, True)) == volume
    # Under pp_fsdp's bf16 parameters the stream, hence what is sent, is 16-bit.
    cfg, layout = layout_for("parallel=pp_fsdp", "model=tiny", "parallel.pp=2", world=2)
    bf16 = comm_bytes_per_step(cfg.model, layout, StepShape(2, seq, 4, True, "bf16"))
    assert bf16.send_recv == rows * seq * d * 2


BAD = [
    (["parallel=pp", "model=tiny", "model.n_layers=1"], "parallel.pp: pp 2 x pp_stages_per_rank 1"),
    (
        ["parallel=pp", "parallel.pp_schedule=interleaved_one_f_one_b", "model=tiny"],
        "parallel.pp_stages_per_rank: 1: pp_schedule=interleaved_one_f_one_b interleaves",
    ),
    (
        ["parallel=pp", "parallel.pp_schedule=zero_bubble_v", "parallel.pp_stages_per_rank=3"],
        "parallel.pp_stages_per_rank: 3: pp_schedule=zero_bubble_v needs exactly 2",
    ),
    (
        ["parallel=pp", "parallel.pp_stages_per_rank=2"],
        "parallel.pp_stages_per_rank: 2: pp_schedule=one_f_one_b runs one stage per rank",
    ),
    (
        [
            "parallel=pp",
            "model=tiny",
            "parallel.pp_stages_per_rank=3",
            "parallel.pp_schedule=interleaved_zero_bubble",
        ],
        "parallel.pp_stages_per_rank: pp 2 x pp_stages_per_rank 3 = 6 stages, more than the 4",
    ),  # fmt: skip
    (
        ["parallel=pp", "model=tiny", "train.global_batch=4", "train.micro_batch=4"],
        "parallel.pp_microbatches: 1 microbatches, fewer than the 2 stages: 1F1B needs",
    ),
    (
        ["parallel=pp", "model=tiny", "parallel.pp_microbatches=3"],
        "parallel.pp_microbatches: 3 does not divide the 8 rows",
    ),
    (["parallel=zero3", "parallel.pp=2"], "parallel.pp: 2: pipeline stages with DeepSpeed ZeRO"),
    # TP inside stages takes TP's own rules (train/spec/degrees.py check_tensor_parallel).
    (
        ["parallel=pp", "model=tiny", "parallel.pp=1", "parallel.tp=2", "model.n_kv_heads=1"],
        "parallel.tp: 2 does not divide model.n_kv_heads 1",
    ),
    (
        [
            "parallel=pp",
            "model=tiny",
            "parallel.pp=1",
            "parallel.tp=2",
            "parallel.sequence_parallel=false",
            "train.seq_len=63",
        ],
        "parallel.tp: 2 does not divide train.seq_len 63: pipeline stages send",
    ),  # fmt: skip
    (["parallel=pp", "model=gpt_125m"], "model.tie_embeddings: model gpt_125m ties"),
    (
        [
            "parallel=pp",
            "model=tiny",
            "parallel.pp_schedule=zero_bubble_v",
            "parallel.pp_stages_per_rank=2",
            "parallel.activation_checkpoint=selective",
        ],
        "parallel.activation_checkpoint: selective: pp_schedule=zero_bubble_v computes weight",
    ),
    (
        ["parallel=pp", "model=tiny", "precision=fp16"],
        "precision.name: fp16: parallel=pp would have to scale the fp16 loss",
    ),
    (
        ["parallel=pp", "model=tiny", "profile.twin=true"],
        "profile.twin: parallel=pp reduces gradients inside its schedule",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_pipeline_input_is_one_config_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        validated(["sweep=none", "cluster.nproc_per_node=2", "run_dir=/unused", *overrides])
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_bad_pipeline_input_exits_2_before_any_rank(launch_in_process, tmp_path):
    result = launch_in_process(
        "parallel=pp", "model=tiny", "parallel.pp_microbatches=3", "sweep=none",
        f"run_dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: parallel.pp_microbatches: 3")
    assert not (tmp_path / "run").exists()
