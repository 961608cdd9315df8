"""Precision: explicit choices, fp8 layer choice, honest MFU, fp16 loss scaling, fp8 training.
(The auto table, with and without a layout: test_precision_layouts.py.)"""

from __future__ import annotations

import pytest
import torch

from launch.conf_tree import load_gpu_profile
from launch.errors import ConfigError
from launch.plan import plan_runs
from launch.validate import validate
from tests.conftest import HOPPER, NARROW, WIDE, compose_run_config
from train.measure.metrics import mfu_figures
from train.model.transformer import Transformer
from train.runtime.numerics import fp8_linears_built, fp8_module_filter, prepare_model
from train.spec.config import Fp8Config
from train.spec.devices import MachineProbe, peaks_describe
from train.spec.precision import resolve_precision


def test_explicit_choices_are_kept():
    gpu, probe = load_gpu_profile("h100_sxm"), MachineProbe(False, True, HOPPER, False)
    for name in ("fp32", "tf32", "bf16", "fp16"):
        assert resolve_precision(name, Fp8Config(), gpu, NARROW, probe).resolved == name
    fp16 = resolve_precision("fp16", Fp8Config(), gpu, NARROW, probe)
    assert fp16.loss_scaling and fp16.autocast_dtype == "fp16"
    fp8 = resolve_precision("fp8", Fp8Config(recipe="rowwise"), gpu, WIDE, probe)
    assert (fp8.fp8_backend, fp8.fp8_recipe) == ("torchao", "rowwise")
    cpu_tf32 = resolve_precision(
        "tf32",
        Fp8Config(),
        load_gpu_profile("cpu"),
        NARROW,
        MachineProbe(False, False, None, False),
    )
    assert "no-op on CPU" in cpu_tf32.reason


def test_fp8_filter_keeps_the_head_narrow_and_odd_layers_in_bf16():
    keep = fp8_module_filter(min_dim=128)
    assert keep(torch.nn.Linear(128, 384), "layers.0.feed_forward.w1")
    assert not keep(torch.nn.Linear(128, 64), "layers.0.attention.wk")  # narrower than 128
    assert not keep(torch.nn.Linear(136, 200), "layers.0.x")  # 200 is not a multiple of 16
    assert not keep(torch.nn.Linear(4096, 32000), "output")  # the head, however wide
    assert not keep(torch.nn.LayerNorm(4096), "norm")


def test_mfu_by_hand_for_bf16_and_fp8():
    h100 = load_gpu_profile("h100_sxm")
    flops_per_token, per_device = 6e9, 50_000.0  # 300 TFLOP/s achieved
    bf16 = mfu_figures(flops_per_token, per_device, h100, "bf16")
    assert bf16.mfu == pytest.approx(300 / 989.4)
    assert bf16.mfu_vs_bf16_peak is None and bf16.mfu_vs_measured is None
    fp8 = mfu_figures(flops_per_token, per_device, h100, "fp8")
    assert fp8.mfu_vs_fp8_peak == fp8.mfu == pytest.approx(300 / 1978.9)
    assert fp8.mfu_vs_bf16_peak == pytest.approx(300 / 989.4)
    # A part with no known peak never borrows one.
    assert mfu_figures(flops_per_token, per_device, load_gpu_profile("cpu"), "bf16").mfu is None
    # Nor does a CPU run borrow the H100's it was given as its profile (the fp8 emulation
    # runs): the rank passes no profile where devices.peaks_describe says no.
    assert not peaks_describe(h100, "cpu") and peaks_describe(h100, "cuda")
    assert peaks_describe(load_gpu_profile("cpu"), "cpu")
    fp8 = mfu_figures(flops_per_token, per_device, None, "fp8")
    assert (fp8.mfu, fp8.mfu_vs_bf16_peak, fp8.mfu_vs_measured, fp8.peak_tflops) == (None,) * 4


def test_fp16_loss_scaling_skips_an_overflowing_step_and_goes_on():
    from train.parallel.layout import TorchLayout
    from train.runtime.rank_step import train_step

    torch.manual_seed(0)
    cfg = compose_run_config(["run_dir=/tmp/x", "train.seq_len=16"])
    model = Transformer(cfg.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    layout = TorchLayout(model, optimizer, dp_rank=0, dp_size=1)  # one rank, unwrapped
    plan = resolve_precision(
        "fp16", Fp8Config(), cfg.gpu, cfg.model, MachineProbe(False, False, None, False)
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    tokens = torch.randint(0, cfg.model.vocab_size, (2, 17))
    batch = [(tokens[:, :-1], tokens[:, 1:])]
    weight = model.layers[0].attention.wq.weight
    poison = weight.register_hook(lambda grad: grad * float("inf"))
    before = weight.detach().clone()
    train_step(layout, scaler, batch, 1, plan, torch.device("cpu"), grad_clip=1.0)
    assert torch.equal(weight, before)  # the overflowing step was skipped
    assert scaler.get_scale() == 512.0  # and the scale halved
    poison.remove()
    loss = train_step(layout, scaler, batch, 1, plan, torch.device("cpu"), 1.0)
    assert torch.isfinite(loss) and not torch.equal(weight, before)  # training went on


def tiny_fp8(backend: str, probe: MachineProbe):
    """The tiny model's config and an fp8 plan for it down to 128 wide (its widest layers)."""
    cfg = compose_run_config(["run_dir=/tmp/x"])
    fp8 = Fp8Config(backend=backend, min_dim=128)
    return cfg, resolve_precision("fp8", fp8, cfg.gpu, cfg.model, probe)


def test_torchao_conversion_follows_the_filter():
    pytest.importorskip("torchao.float8")
    cfg, plan = tiny_fp8("torchao", MachineProbe(False, True, None, False))
    model = prepare_model(Transformer(cfg.model), plan, torch.device("cpu"))
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    assert kinds["layers.0.attention.wq"] == "Float8Linear"
    assert kinds["layers.0.feed_forward.w2"] == "Float8Linear"
    assert kinds["layers.0.attention.wk"] == "Linear"  # 64 wide: below min_dim
    assert kinds["output"] == "Linear"
    # What a rank checks before it runs (rank_setup) and the summary records: tiny's 4 blocks
    # x 5 linears 128 wide or wider; none in the plain model.
    assert fp8_linears_built(model) == 4 * 5
    assert fp8_linears_built(Transformer(cfg.model)) == 0


def test_te_path_swaps_eligible_layers(fake_transformer_engine):
    """Transformer Engine needs CUDA; the swap logic is checked against a stand-in module."""

    class FakeTeLinear(torch.nn.Linear):
        def __init__(self, in_features, out_features, bias, params_dtype, device):
            super().__init__(
                in_features, out_features, bias=bias, dtype=params_dtype, device=device
            )

    fake_transformer_engine.Linear = FakeTeLinear
    cfg, plan = tiny_fp8("te", MachineProbe(True, False, HOPPER, False))
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    original = model.layers[0].attention.wq.weight.detach().clone()
    model = prepare_model(model, plan, torch.device("cpu"))
    assert isinstance(model.layers[0].attention.wq, FakeTeLinear)
    assert torch.equal(model.layers[0].attention.wq.weight, original)  # weights carried over
    assert not isinstance(model.layers[0].attention.wk, FakeTeLinear)
    assert not isinstance(model.output, FakeTeLinear)
    assert fp8_linears_built(model) == 4 * 5  # TE's layers count as fp8 ones


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["gpu=a100_80g", "precision=fp8"],
            "precision: fp8 needs FP8 tensor cores, which "
            "gpu=a100_80g lacks; profiles with FP8: h100_hbm2e",
        ),
        (["gpu=cpu", "precision=fp8"], "precision: fp8 needs FP8 tensor cores"),
        (
            ["gpu=h100_sxm", "precision=fp8", "precision.fp8.recipe=mxfp9"],
            "precision.fp8.recipe: Invalid value 'mxfp9', expected one of",
        ),
        (
            [
                "gpu=h100_sxm",
                "precision=fp8",
                "precision.fp8.backend=te",
                "precision.fp8.recipe=rowwise",
            ],
            "precision.fp8.recipe: rowwise is not a te recipe; choose from: current",
        ),
    ],
)
def test_fp8_bad_input(overrides, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        cfg = compose_run_config(["run_dir=/tmp/x", *overrides])
        validate(cfg, plan_runs(cfg))


def test_te_backend_without_te_says_how_to_install(monkeypatch):
    import launch.validate

    monkeypatch.setattr(launch.validate, "module_imports", lambda name: False)
    cfg = compose_run_config(
        [
            "run_dir=/tmp/x",
            "gpu=h100_sxm",
            "precision=fp8",
            "precision.fp8.backend=te",
            "precision.fp8.min_dim=128",  # tiny's layers: the shapes pass, the library is next
        ]
    )
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[te\]'.*backend=torchao"):
        validate(cfg, plan_runs(cfg))
