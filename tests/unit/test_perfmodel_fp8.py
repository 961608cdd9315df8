"""fp8's casts in the step model (launch/perfmodel/fp8.py), and what sequence parallelism
changes (compute.py: the elementwise work it shards, the copies its collectives make): the
counts their docstrings derive, checked by hand."""

from __future__ import annotations

import pytest

from launch.perfmodel.compute import (
    ELEMENTWISE_D,
    ROPE_SHARE_OF_D,
    ComputeTime,
    memory_bound_bytes,
    sequence_regroup_bytes,
    with_sequence_regroups,
)
from launch.perfmodel.fp8 import Fp8Casts, cast_work, projection_note
from launch.perfmodel.hardware import COPY_FRACTION, HBM_FRACTION, part_rates
from launch.perfmodel.step import Placement, predict, predict_run
from tests.conftest import compose_run_config
from train.spec.config import ModelConfig
from train.spec.degrees import Degrees, LayoutPlan, plan_layout
from train.spec.traffic import StepShape, step_collectives

# d 64, 4 heads of 16, f 128: Linears (in, out) wq wk wv wo (64, 64), w1 w3 (64, 128),
# w2 (128, 64).
TINY = ModelConfig(
    name="tiny", d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=128,
    vocab_size=256, max_seq_len=128,
)  # fmt: skip
DDP = LayoutPlan("ddp", Degrees(1, 1, 1), False, [])
OUTPUTS = 4 * 64 + 2 * 128 + 64  # output-gradient elements per token and block
WEIGHTS = 4 * 64 * 64 + 3 * 64 * 128


def casts(*, compiled: bool, recipe: str = "tensorwise", gathered: bool = False) -> Fp8Casts:
    return Fp8Casts("torchao", recipe, 16, compiled, gathered)


def test_compiled_torchao_casts_each_tensor_once_fused_into_its_producer():
    """Compiled: the inputs wq/wk/wv share and w1/w3 share are cast once (4 distinct inputs:
    64 + 64 + 64 + 128 = 320 elements), 3 bytes forward and 3 backward; each output gradient
    once in both layouts, 4; each weight 5 + 5 per micro-step."""
    work = cast_work(casts(compiled=True), TINY, DDP, tokens=1000, accum_steps=2, shard_ranks=1)
    per_token = 320 * (3 + 3) + OUTPUTS * 4
    assert work.nbytes == TINY.n_layers * (1000 * per_token + 2 * 10 * WEIGHTS)


def test_eager_torchao_runs_every_cast_of_every_linear():
    """Eager: each Linear casts its own input (64 x 6 + 128 = 512 elements), 33 bytes forward,
    33 + a layout copy of 2 backward; the output gradient twice plus a copy, 68; the weight
    33 forward, 35 backward."""
    work = cast_work(casts(compiled=False), TINY, DDP, tokens=1000, accum_steps=2, shard_ranks=1)
    per_token = 512 * (33 + 35) + OUTPUTS * 68
    assert work.nbytes == TINY.n_layers * (1000 * per_token + 2 * 68 * WEIGHTS)
    fused = cast_work(casts(compiled=True), TINY, DDP, tokens=1000, accum_steps=2, shard_ranks=1)
    assert work.kernels > fused.kernels


def test_rowwise_casts_the_output_gradient_along_both_axes():
    tensorwise = cast_work(casts(compiled=True), TINY, DDP, tokens=1, accum_steps=1, shard_ranks=1)
    rowwise = cast_work(
        casts(compiled=True, recipe="rowwise"), TINY, DDP, tokens=1, accum_steps=1, shard_ranks=1
    )
    assert rowwise.nbytes - tensorwise.nbytes == TINY.n_layers * OUTPUTS * (6 - 4)


def test_weights_gathered_in_fp8_are_cast_on_the_shard():
    """torchao's float8 all-gather: 21 bytes per fp32 shard element at each of the two
    gathers, and the gathered weight copied into the input gradient's layout."""
    plan = LayoutPlan("fsdp", Degrees(1, 4, 1), False, [])
    work = cast_work(
        casts(compiled=True, gathered=True), TINY, plan, tokens=0, accum_steps=1, shard_ranks=4
    )
    assert work.nbytes == pytest.approx(TINY.n_layers * (2 * 21 * WEIGHTS / 4 + 2 * WEIGHTS))


def fp8_prediction(precision: str, *overrides: str):
    cfg = compose_run_config(
        ["gpu=h100_sxm", "run_dir=/unused", "model=llama_7b", "train.seq_len=4096",
         "train.micro_batch=1", "train.global_batch=8", "parallel=fsdp",
         "precision.fp8.backend=torchao", *overrides]
    )  # fmt: skip
    plan = plan_layout(cfg, 8, 8)
    return predict(
        cfg, plan, Placement(8, 8, 1), global_batch=8, precision=precision,
        rates=part_rates(cfg.gpu),
    )  # fmt: skip


def test_an_fp8_step_pays_its_casts_and_gathers_its_weights_in_fp8():
    bf16, fp8 = fp8_prediction("bf16"), fp8_prediction("fp8")
    assert fp8.compute.matmul_s < bf16.compute.matmul_s
    assert fp8.comm_s["all_gather"] < 0.75 * bf16.comm_s["all_gather"]  # fp8 linears in 1 byte
    # The single-device base casts the shard FSDP would (as it steps the optimizer's share):
    # sharding is not a scaling gain, and communication only loses.
    assert 0.9 < fp8.scaling_efficiency < 1
    # torchao's fp8 runs compile their blocks on a GPU whatever train.compile says (the
    # runtime's rule, train/spec/precision.py compiles_blocks): the elementwise work is the
    # compiled bf16 run's, plus the casts.
    assert fp8_prediction("fp8", "train.compile=true").step_time_s == fp8.step_time_s
    compiled_bf16 = fp8_prediction("bf16", "train.compile=true")
    assert fp8.compute.memory_s > compiled_bf16.compute.memory_s
    # projection.json itemises the casts (part of the memory-bound work).
    casts = fp8.as_dict()["compute_breakdown_s"]["fp8_casts"]
    assert casts == pytest.approx(fp8.compute.memory_s - compiled_bf16.compute.memory_s)
    assert compiled_bf16.as_dict()["compute_breakdown_s"]["fp8_casts"] == 0


def test_sequence_parallelism_shards_the_norms_and_residual_adds():
    """Under TP the norms and residual adds run on every token a rank holds, rope on its own
    heads; sequence parallelism gives each rank 1/tp of the tokens for all of them."""
    tp = 4
    plain = LayoutPlan("tp", Degrees(1, 1, tp), False, [])
    sharded = LayoutPlan("tp", Degrees(1, 1, tp), True, [])
    given = dict(tokens=1000, accum=1, precision="bf16", optimizer_split=1)
    saved = memory_bound_bytes(TINY, plain, **given) - memory_bound_bytes(TINY, sharded, **given)
    norms_and_adds = ELEMENTWISE_D * (1 - ROPE_SHARE_OF_D[False]) * TINY.d_model
    assert saved == pytest.approx(1000 * TINY.n_layers * norms_and_adds * (1 - 1 / tp))


def test_a_projection_says_which_fp8_it_assumed():
    """The machine is not seen: backend=auto is projected as torchao and says so; a named
    backend is taken as named, with its default recipe."""
    auto = compose_run_config(["run_dir=/unused", "precision=fp8"])
    te = compose_run_config(["run_dir=/unused", "precision=fp8", "precision.fp8.backend=te"])
    assert "fp8 via torchao tensorwise (backend=auto" in projection_note(auto)
    assert projection_note(te).startswith("fp8 via te current, Linears >= 4096 wide")


def test_torchaos_float8_tp_styles_gather_fp8_activations():
    """Under sequence parallelism the all-gathers into fp8 linears (forward) and out of them
    (backward) carry 1 byte when torchao's float8 styles run (train/spec/traffic.py); the
    reduce-scatters stay 16-bit."""
    m = ModelConfig(
        name="m", d_model=4096, n_layers=2, n_heads=32, n_kv_heads=32, ffn_hidden=8192,
        vocab_size=256, max_seq_len=128,
    )  # fmt: skip
    plan = LayoutPlan("tp", Degrees(1, 1, 4), True, [])

    def gathered(min_dim):
        shape = StepShape(1, 128, 1, False, "fp8", fp8_tp_min_dim=min_dim)
        by_kind = {}
        for c in step_collectives(m, plan, shape):
            by_kind[c.kind] = by_kind.get(c.kind, 0) + c.nbytes * c.calls
        return by_kind

    plain, fp8 = gathered(None), gathered(16)
    assert fp8["reduce_scatter"] == plain["reduce_scatter"]
    # Per block 2 inputs (the norms' outputs: fp32 under autocast over tp's fp32 weights, 4
    # bytes) and 2 output gradients (16-bit) in 1 byte; the head's input and the embedding's
    # gradient keep their width.
    elements = 128 * m.d_model
    saved = m.n_layers * elements * (2 * (4 - 1) + 2 * (2 - 1))
    assert plain["all_gather"] - fp8["all_gather"] == saved


def test_a_measured_runs_prediction_takes_the_fp8_library_it_resolved():
    """The report predicts a run as it ran: summary.json's precision names the backend and
    recipe that precision.fp8.backend=auto resolved to on its nodes."""
    cfg = compose_run_config(
        ["gpu=h100_sxm", "run_dir=/unused", "model=llama_7b", "train.seq_len=4096",
         "train.micro_batch=1", "train.global_batch=8", "parallel=fsdp", "precision=fp8"]
    )  # fmt: skip
    ran = {"world_size": 8, "nproc_per_node": 8, "nodes": 1}

    def casts_s(**resolved):
        return predict_run(cfg, ran, precision="fp8", fp8_resolved=resolved).compute.fp8_casts_s

    te = casts_s(resolved="fp8", fp8_backend="te", fp8_recipe="delayed")
    torchao = casts_s(resolved="fp8", fp8_backend="torchao", fp8_recipe="tensorwise")
    assert te > 0 and torchao > 0 and te != torchao
    assert casts_s(resolved="fp8") == torchao  # none recorded: auto, projected as torchao


def test_sequence_parallel_collectives_pay_torchs_regrouping_copies():
    """DTensor gathers and scatters along the sequence, NCCL along dim 0: every reduce-scatter
    input is reordered (a copy), every gathered tensor too unless a micro-step holds one
    sequence; each copy reads and writes the whole tensor. No SP, no copies."""
    m = ModelConfig(
        name="m", d_model=256, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=512,
        vocab_size=256, max_seq_len=128,
    )  # fmt: skip
    sp = LayoutPlan("tp", Degrees(1, 1, 4), True, [])
    plain = LayoutPlan("tp", Degrees(1, 1, 4), False, [])

    def regrouped(plan, micro_batch):
        shape = StepShape(micro_batch, 128, 1, False, "bf16")
        return sequence_regroup_bytes(step_collectives(m, plan, shape), micro_batch)

    def moved(plan, micro_batch, kind):
        shape = StepShape(micro_batch, 128, 1, False, "bf16")
        return sum(
            c.nbytes * c.calls
            for c in step_collectives(m, plan, shape)
            if c.kind == kind and c.role == "activations"
        )

    assert regrouped(plain, 2) == 0
    assert regrouped(sp, 1) == 2 * moved(sp, 1, "reduce_scatter")
    assert regrouped(sp, 2) == 2 * (moved(sp, 2, "reduce_scatter") + moved(sp, 2, "all_gather"))


def test_exactly_counted_streaming_bytes_run_at_a_device_copys_rate():
    """The casts and the regrouping copies stream at COPY_FRACTION of the datasheet rate, not
    at the elementwise work's HBM_FRACTION (which stands in for what that count misses)."""
    rates = part_rates(compose_run_config(["gpu=h100_sxm", "run_dir=/unused"]).gpu)
    assert rates.copy_gbytes_per_s == pytest.approx(3350 * COPY_FRACTION)
    assert rates.hbm_gbytes_per_s == pytest.approx(3350 * HBM_FRACTION)
    sp = LayoutPlan("tp", Degrees(1, 1, 4), True, [])
    collectives = step_collectives(TINY, sp, StepShape(2, 128, 1, False, "bf16"))
    before = ComputeTime(1.0, 0.0, 0.5, 0.4, 0.0, 0.0)
    after = with_sequence_regroups(before, collectives, 2, rates)
    seconds = sequence_regroup_bytes(collectives, 2) / (rates.copy_gbytes_per_s * 1e9)
    assert after.regroup_s == pytest.approx(seconds)
    assert after.memory_s == pytest.approx(0.5 + seconds)
