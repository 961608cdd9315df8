"""What a read of the CUDA paths found before the first 8-GPU and 2x8 runs (issue 22), each
piece checked in one process on CPU: DeepSpeed's 16-bit shard names, weights drawn on the
rank's device, float32 rope tables under ZeRO-3's zero.Init, the multi-tensor clip,
Transformer Engine's floor and amax all-reduces, MIG slices and mixed GPU nodes, the
benchmark's bf16 MFU column, and the words for ranks that disagree. Their 2-rank halves
(shared folders, one precision plan, the compiled loss and blocks):
tests/integration/test_multinode_and_compile.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import pytest
import torch

from launch import resolve
from launch.terminal import plain_console
from tests.conftest import REPO, TINY, compose_run_config, model_config
from train.checkpoint.markers import file_rank, save_record
from train.model import weights
from train.model.rope import rope_tables
from train.model.transformer import Transformer
from train.parallel.layout import clip_grad_norm_
from train.runtime.agreement import agreed_precision, rank_ranges, ranks_by_value
from train.runtime.numerics import te_autocast
from train.runtime.shared_folders import folders_to_share
from train.spec.config_error import ConfigError
from train.spec.degrees import Degrees, LayoutPlan
from train.spec.devices import mig_slice, profile_mismatch
from train.spec.precision import PrecisionPlan
from train.spec.traffic import WORLD, StepShape, comm_bytes_per_step, step_collectives

CPU = torch.device("cpu")
SMALL = model_config(
    name="small", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=96,
    vocab_size=128, max_seq_len=32, tie_embeddings=True,
)  # fmt: skip


# -- item 3: DeepSpeed's shards of 16-bit runs ------------------------------------------------


def test_deepspeed_16bit_optimizer_shards_count_for_their_rank():
    # Names as DeepSpeed 0.19.8 writes them (runtime/engine.py _get_zero_ckpt_prefix: a bf16
    # run prefixes "bf16_"; fp16 and fp32 runs do not; ZeRO-3 adds per-rank model states).
    files = {
        "step_000002/mp_rank_00_model_states.pt": 100,
        "step_000002/bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt": 10,
        "step_000002/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt": 20,
        "step_000002/zero_pp_rank_2_mp_rank_00_optim_states.pt": 30,
        "step_000002/zero_pp_rank_3_mp_rank_00_model_states.pt": 40,
    }
    assert [file_rank(name) for name in files] == [0, 0, 1, 2, 3]
    record = save_record(2, {"files": files}, [1.0, 1.0, 1.0, 1.0], 0.5)
    assert record["bytes_per_rank"] == [110, 20, 30, 40]


# -- item 4: weights drawn on the rank's device -----------------------------------------------


def test_weights_are_drawn_on_the_device_they_are_materialised_on(monkeypatch):
    drawn_on = []
    real = weights.full_parameter

    def recording(name, shape, cfg, seed, device="cpu"):
        drawn_on.append(torch.device(device))
        return real(name, shape, cfg, seed, device)

    monkeypatch.setattr(weights, "full_parameter", recording)
    with torch.device("meta"):
        model = Transformer(SMALL)
    weights.materialize(model, SMALL, seed=3, device=CPU)
    assert drawn_on and set(drawn_on) == {CPU}
    # A generator on that device, seeded by (seed, name): the values a CPU run always had.
    name = "layers.1.attention.wq.weight"
    generator = torch.Generator(device=CPU).manual_seed(weights.parameter_seed(3, name))
    expected = torch.empty(64, 64).normal_(0.0, weights.STD, generator=generator)
    assert torch.equal(dict(model.named_parameters())[name], expected)


# -- item 8: rope tables stay float32 whatever built the buffers ------------------------------


def test_rope_tables_are_float32_after_init_even_if_built_in_bf16():
    model = Transformer(SMALL, seed=3)
    # What deepspeed.zero.Init leaves under bf16: it patches torch.arange and casts to bf16.
    model.register_buffer("rope_cos", model.rope_cos.bfloat16(), persistent=False)
    model.register_buffer("rope_sin", model.rope_sin.bfloat16(), persistent=False)
    model.init_weights(3)
    cos, sin = rope_tables(SMALL.d_model // SMALL.n_heads, SMALL.max_seq_len, SMALL.rope_theta)
    assert model.rope_cos.dtype == torch.float32 and torch.equal(model.rope_cos, cos)
    assert torch.equal(model.rope_sin, sin)


# -- speed: the multi-tensor clip (the compiled loss: tests/integration) -------------------


def test_clip_matches_torchs_clip_grad_norm():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(n)) for n in (7, 300, 31)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    norm = clip_grad_norm_(ours, 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs, 0.5)
    assert float(norm) == pytest.approx(float(expected), rel=1e-6)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    before = [p.grad.clone() for p in ours]
    clip_grad_norm_(ours, 1e9)  # under the bound: unchanged
    assert all(torch.equal(p.grad, g) for p, g in zip(ours, before, strict=True))


# -- item 7: Transformer Engine ---------------------------------------------------------------


def test_te_current_scaling_on_an_old_te_names_the_floor(fake_transformer_engine, monkeypatch):
    recipe = types.ModuleType("transformer_engine.common.recipe")
    recipe.DelayedScaling = lambda: "delayed"  # TE 2.0/2.1: no Float8CurrentScaling
    common = types.ModuleType("transformer_engine.common")
    common.recipe = recipe
    monkeypatch.setitem(sys.modules, "transformer_engine.common", common)
    monkeypatch.setitem(sys.modules, "transformer_engine.common.recipe", recipe)
    sys.modules["transformer_engine"].__version__ = "2.1.0"
    fake_transformer_engine.autocast = lambda enabled, recipe: recipe
    with pytest.raises(ImportError, match=r"Transformer Engine >= 2\.2 .* has 2\.1\.0"):
        te_autocast("current")
    assert te_autocast("delayed") == "delayed"
    floor = (REPO / "pyproject.toml").read_text()
    assert 'te = ["transformer-engine[pytorch]>=2.2"]' in floor


def test_te_delayed_scaling_amax_all_reduces_are_counted():
    fsdp = LayoutPlan("fsdp", Degrees(1, 2, 1), False, [])
    plain = StepShape(2, 64, 3, False, "fp8")
    delayed = StepShape(2, 64, 3, False, "fp8", fp8_delayed_min_dim=128)
    amaxes = [c for c in step_collectives(TINY, fsdp, delayed) if c.role.startswith("fp8 amax")]
    linears = 5 * TINY.n_layers  # wq, wo, w1, w2, w3: 128 wide or more (wk, wv: 64)
    # One MAX all-reduce after each forward (input, weight, output amax of every fp8 linear)
    # and one after each backward (two gradients'), per micro-step, over every rank.
    assert [(c.kind, c.nbytes, c.calls, c.group) for c in amaxes] == [
        ("all_reduce", 3 * linears * 4, 3, WORLD),
        ("all_reduce", 2 * linears * 4, 3, WORLD),
    ]
    grown = comm_bytes_per_step(TINY, fsdp, delayed).all_reduce
    assert grown - comm_bytes_per_step(TINY, fsdp, plain).all_reduce == 5 * linears * 4 * 3
    one_rank = LayoutPlan("ddp", Degrees(1, 1, 1), False, [])
    assert comm_bytes_per_step(TINY, one_rank, delayed).total == 0  # TE reduces nothing alone


# -- item 9: MIG slices, GPU nodes of several kinds -------------------------------------------


def test_a_mig_slice_gets_no_whole_chip_profile():
    name = "NVIDIA A100-SXM4-40GB MIG 1g.5gb"
    assert mig_slice(name) == "1g.5gb" and mig_slice("NVIDIA A100-SXM4-40GB") is None
    assert resolve.match_profile(name, 4.8) is None
    warning = profile_mismatch(resolve.load_gpu_profile("a100_40g"), "cuda", name)
    assert "MIG slice" in warning and "whole chip's peak" in warning


def test_gpu_auto_on_a_mig_slice_and_on_a_mixed_node(monkeypatch):
    monkeypatch.setattr(resolve, "local_gpus", lambda: [("NVIDIA H100 80GB HBM3 MIG 3g.40gb", 40)])
    profile, detected = resolve.detect_local()
    assert profile.name == "unknown" and "a MIG slice" in detected
    mixed = [("NVIDIA H100 80GB HBM3", 79.1)] * 7 + [("NVIDIA A100-SXM4-80GB", 79.2)]
    monkeypatch.setattr(resolve, "local_gpus", lambda: mixed)
    profile, detected = resolve.detect_local()
    assert profile.name == "h100_sxm" and "GPU 7: NVIDIA A100-SXM4-80GB" in detected


def test_the_node_defaults_leave_the_odd_gpu_out_and_refuse_to_take_it(monkeypatch):
    mixed = [("NVIDIA H100 80GB HBM3", 79.1)] * 7 + [("NVIDIA A100-SXM4-80GB", 79.2)]
    monkeypatch.setattr(resolve, "local_gpus", lambda: mixed)
    cfg = compose_run_config(["gpu=h100_sxm", "run_dir=/x"])
    resolve.resolve_node_defaults(cfg, [], plain_console(quiet=True))
    assert cfg.cluster.nproc_per_node == 7 and cfg.sweep.world_sizes == [1, 2, 4]
    overrides = ["cluster.nproc_per_node=8"]
    cfg = compose_run_config(["gpu=h100_sxm", "run_dir=/x", *overrides])
    with pytest.raises(ConfigError, match="^cluster.nproc_per_node: 8 ranks would take GPUs"):
        resolve.resolve_node_defaults(cfg, overrides, plain_console(quiet=True))


# -- item 12: the benchmark's MFU against the bf16 peak ---------------------------------------


def test_the_benchmark_fills_mfu_vs_bf16_peak_for_every_precision(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_vs_anchor", REPO / "bench/gpu_vs_anchor.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["gpu_vs_anchor"] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    (tmp_path / "config.yaml").write_text("gpu:\n  peak_tflops:\n    bf16: 989.4\n")
    summary = {
        "precision": {"resolved": "bf16", "reason": "requested bf16"},
        "tokens_per_s": 53526.3,
        "model_tflops_per_device": 493.8,
        "mfu": 0.499,
        "mfu_vs_bf16_peak": None,  # what a bf16 run's summary.json says
        "peak_memory_bytes": 2**30,
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert bench.ours_row(tmp_path)["mfu_bf16_peak"] == pytest.approx(493.8 / 989.4)


# -- item 5: which folders must be one across nodes (the 2-rank check: tests/integration) -----


def test_the_folders_every_node_must_share(tmp_path):
    def folders(*overrides):
        cfg = compose_run_config([f"run_dir={tmp_path}", *overrides])
        return folders_to_share(cfg, tmp_path)

    assert folders() == {}  # rank 0 alone writes the run's files
    assert folders("checkpoint.every=5") == {"checkpoint.dir": tmp_path / "checkpoints"}
    assert folders("profile.enabled=true") == {"run_dir": tmp_path}  # rank 0 and the last
    assert folders("profile.enabled=true", "profile.ranks=[0]") == {}


# -- item 6 (the words; the 2-rank check is an integration test) ------------------------------


def test_ranks_are_named_by_value_in_ranges():
    groups = ranks_by_value(["fp8", "fp8", "bf16", "fp8", "fp8", "bf16"])
    assert groups == [("fp8", [0, 1, 3, 4]), ("bf16", [2, 5])]
    assert rank_ranges([0, 1, 3, 4]) == "ranks 0-1, 3-4" and rank_ranges([7]) == "rank 7"
    plan = PrecisionPlan("auto", "bf16", "why")
    assert agreed_precision(plan) is plan  # alone: nothing to compare
