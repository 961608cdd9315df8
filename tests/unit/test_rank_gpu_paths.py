"""Rank-side GPU-path pieces that run on CPU in-process: layout-independent init and the meta
build, FSDP2's mixed-precision policy and its bytes, Transformer Engine's checkpoint, and
torchao's float8 all-gather switch. (2-rank checks: tests/integration/
test_meta_init_and_16bit_bytes.py.)"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY, model_config
from train.model.transformer import Transformer
from train.model.weights import canonical_name, materialize
from train.parallel import build as build_module
from train.parallel.build import build_layout, build_model, fsdp_float8_all_gather
from train.parallel.fsdp import mixed_precision_policy
from train.runtime.numerics import prepare_model
from train.spec.config import ModelConfig, RunConfig, TrainConfig
from train.spec.degrees import Degrees, LayoutPlan
from train.spec.precision import PrecisionPlan
from train.spec.traffic import StepShape, comm_bytes_per_step

CPU = torch.device("cpu")
SMALL = model_config(
    name="small", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=96,
    vocab_size=128, max_seq_len=32, tie_embeddings=True,
)  # fmt: skip


def run_config(model: ModelConfig = SMALL, seed: int = 3) -> RunConfig:
    cfg = RunConfig(model=model, run_dir="/unused", seed=seed)
    cfg.train = TrainConfig(micro_batch=2, global_batch=2)
    return cfg


def plan(name="ddp", checkpointed=(), sp=False, dp_replicate=1, dp_shard=1, tp=1):
    return LayoutPlan(name, Degrees(dp_replicate, dp_shard, tp), sp, list(checkpointed))


def test_same_seed_same_weights_through_meta_and_wrappers():
    plain = dict(Transformer(SMALL, seed=3).named_parameters())
    with torch.device("meta"):
        model = Transformer(SMALL)
    assert all(p.is_meta for p in model.parameters())
    layout = build_layout(model, run_config(), plan(checkpointed=[0, 1]), "fp32", 1, CPU)
    got = dict(layout.model.named_parameters())
    assert len(got) == len(plain)  # the tied head is still one parameter after to_empty
    assert layout.model.output.weight is layout.model.tok_embeddings.weight
    for name, param in got.items():
        assert torch.equal(param, plain[canonical_name(name)]), name
    assert torch.equal(layout.model.rope_cos, Transformer(SMALL, seed=3).rope_cos)
    other = Transformer(SMALL, seed=4)
    assert not torch.equal(
        other.layers[0].attention.wq.weight, plain["layers.0.attention.wq.weight"]
    )


def test_init_rules_and_wrapper_names():
    model = Transformer(TINY, seed=0)
    wq = torch.cat([b.attention.wq.weight.flatten() for b in model.layers])
    w2 = torch.cat([b.feed_forward.w2.weight.flatten() for b in model.layers])
    assert wq.std().item() == pytest.approx(0.02, rel=0.05)
    assert w2.std().item() == pytest.approx(0.02 / (2 * 4) ** 0.5, rel=0.05)
    assert torch.equal(model.layers[0].ffn_norm.weight, torch.ones(128))
    # Parameters of one shape still differ: each has its own seed.
    assert not torch.equal(model.layers[0].attention.wq.weight, model.layers[1].attention.wq.weight)
    assert canonical_name("layers.1.block._orig_mod.attention.wq.weight") == (
        "layers.1.attention.wq.weight"
    )


def test_materialize_keeps_ties_and_rank_only_allocates_what_it_holds():
    with torch.device("meta"):
        model = Transformer(SMALL)
    materialize(model, SMALL, seed=3, device=torch.device("cpu"))
    assert model.output.weight is model.tok_embeddings.weight
    assert not any(p.is_meta for p in model.parameters())


def test_build_model_is_meta_without_zero3():
    model = build_model(run_config(), plan("fsdp", dp_shard=2), "fp32", 1, torch.device("cpu"))
    assert all(p.is_meta for p in model.parameters())


def test_fsdp_policy_per_precision():
    assert mixed_precision_policy("fp32").param_dtype is None  # fp32 runs: unchanged
    assert mixed_precision_policy("tf32").reduce_dtype is None
    bf16 = mixed_precision_policy("bf16")
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert not bf16.cast_forward_inputs  # rope tables stay fp32
    assert mixed_precision_policy("fp8").param_dtype == torch.bfloat16
    assert mixed_precision_policy("fp16", "bf16").reduce_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="^parallel.fsdp_reduce_dtype: 'fp8'"):
        mixed_precision_policy("bf16", "fp8")


def test_fsdp_bytes_gather_at_param_dtype_reduce_at_reduce_dtype():
    fsdp = plan("fsdp", dp_shard=2)
    fp32 = comm_bytes_per_step(TINY, fsdp, StepShape(2, 64, 3, False))
    bf16 = comm_bytes_per_step(TINY, fsdp, StepShape(2, 64, 3, False, "bf16"))
    assert bf16.all_gather * 2 == fp32.all_gather
    assert bf16.reduce_scatter == fp32.reduce_scatter  # reduced in fp32 by default
    low = comm_bytes_per_step(
        TINY, fsdp, StepShape(2, 64, 3, False, "bf16", fsdp_reduce_dtype="bf16")
    )
    assert low.reduce_scatter * 2 == fp32.reduce_scatter
    # fp32 runs reduce in fp32 whatever the field says.
    assert (
        comm_bytes_per_step(TINY, fsdp, StepShape(2, 64, 3, False, fsdp_reduce_dtype="bf16"))
        == fp32
    )


def test_fp8_all_gather_bytes_model():
    fsdp = plan("fsdp", dp_shard=2)
    bf16 = comm_bytes_per_step(TINY, fsdp, StepShape(2, 64, 1, False, "fp8"))
    fp8 = comm_bytes_per_step(
        TINY, fsdp, StepShape(2, 64, 1, False, "fp8", fp8_all_gather_min_dim=128)
    )
    # wq, wo, w1, w2, w3 are >= 128 wide; wk and wv (64 outputs: 2 kv heads) stay bf16.
    fp8_linears = 2 * 128 * 128 + 3 * 128 * 384
    # Gathered twice per block per micro-step, one byte less per element.
    assert bf16.all_gather - fp8.all_gather == 2 * 4 * fp8_linears
    assert fp8.all_reduce == 4 * 5 * 4  # one float32 amax per fp8 linear, once per step


def test_tp_sequence_parallel_checkpoint_replay_bytes():
    """A replay stops before the block's last reduce-scatter (non-reentrant early stop)."""
    base = comm_bytes_per_step(TINY, plan("tp", sp=True, tp=2), StepShape(1, 64, 1, False))
    ckpt = comm_bytes_per_step(TINY, plan("tp", [1, 3], sp=True, tp=2), StepShape(1, 64, 1, False))
    activation = 64 * 128 * 4
    assert ckpt.all_gather - base.all_gather == 2 * 2 * activation
    assert ckpt.reduce_scatter - base.reduce_scatter == 2 * activation


def test_te_layers_are_checkpointed_with_te_checkpoint(fake_transformer_engine):
    calls = []

    def te_checkpoint(function, *args, **kwargs):
        calls.append(kwargs)
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)

    fake_transformer_engine.checkpoint = te_checkpoint
    model = build_model(run_config(), plan(), "fp8", 1, torch.device("cpu"))
    layout = build_layout(
        model, run_config(), plan(checkpointed=[1]), "fp8", 1, CPU, fp8_backend="te"
    )
    tokens = torch.randint(0, SMALL.vocab_size, (2, 8))
    layout.model(tokens, tokens).backward()
    assert calls == [{"use_reentrant": False}]  # block 1 only, in forward (not in recompute)
    # Without TE, torch's checkpoint: the stand-in is not called.
    plain = build_layout(
        build_model(run_config(), plan(), "bf16", 1, torch.device("cpu")),
        run_config(),
        plan(checkpointed=[0, 1]),
        "bf16",
        1,
        CPU,
    )
    plain.model(tokens, tokens).backward()
    assert len(calls) == 1


def test_torchao_float8_all_gather_switch(monkeypatch):
    from torchao.float8.float8_linear import Float8Linear
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    fsdp = plan("fsdp", dp_shard=2)
    assert not fsdp_float8_all_gather(fsdp, "torchao", "tensorwise")  # no process group
    monkeypatch.setattr(build_module.dist, "is_initialized", lambda: True)
    assert fsdp_float8_all_gather(fsdp, "torchao", "tensorwise")
    assert not fsdp_float8_all_gather(fsdp, "torchao", "rowwise")  # tensorwise only
    assert not fsdp_float8_all_gather(plan("ddp", dp_replicate=2), "torchao", "tensorwise")
    assert not fsdp_float8_all_gather(fsdp, "te", "current")

    fp8 = PrecisionPlan(
        "fp8", "fp8", "test", fp8_backend="torchao", fp8_recipe="tensorwise", fp8_min_dim=64
    )
    with torch.device("meta"):
        model = Transformer(SMALL)
    model = prepare_model(model, fp8, torch.device("cpu"), fsdp_float8_all_gather=True)
    wq = model.layers[0].attention.wq
    assert isinstance(wq, Float8Linear) and wq.config.enable_fsdp_float8_all_gather
    assert isinstance(wq.weight.data, WeightWithDynamicFloat8CastTensor)
