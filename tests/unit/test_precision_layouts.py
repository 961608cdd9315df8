"""precision=auto knows the parallel layout: no fp8 for layouts whose ranks would refuse it."""

from __future__ import annotations

import itertools

import pytest

from launch.conf_tree import group_choices, load_gpu_profile
from train.spec.catalog import CATALOG, Feature
from train.spec.config import Fp8Config, ModelConfig
from train.spec.devices import MachineProbe
from train.spec.precision import resolve_precision

PROFILES = [g for g in group_choices("gpu") if g != "auto"]
LAYOUTS = group_choices("parallel")
WIDE = ModelConfig(
    name="wide",
    n_layers=2,
    d_model=4096,
    n_heads=32,
    n_kv_heads=8,
    ffn_hidden=11008,
    vocab_size=32000,
    max_seq_len=2048,
)
NARROW = ModelConfig(
    name="narrow",
    n_layers=2,
    d_model=2048,
    n_heads=16,
    n_kv_heads=16,
    ffn_hidden=5632,
    vocab_size=50304,
    max_seq_len=2048,
)
HOPPER, AMPERE = (9, 0), (8, 0)
NO_FP8_LAYOUTS = {"zero1", "zero2", "zero3", "tp", "tp_fsdp", "pp", "pp_fsdp"}


def expected_auto(profile, layout, te, torchao, capability, cpu_bf16, model):
    """The auto table, written out case by case, with the layout column added."""
    if capability is None:  # a CPU device, whatever the profile says
        return ("bf16", None) if cpu_bf16 else ("fp32", None)
    if profile in ("a100_40g", "a100_80g", "a800", "cpu"):
        return ("bf16", None)
    if capability < (8, 9) or layout in NO_FP8_LAYOUTS:
        return ("bf16", None)
    if not (te or torchao) or model is NARROW:
        return ("bf16", None)
    return ("fp8", "te" if te else "torchao")


def test_every_layout_of_conf_is_classified():
    # A new layout in conf/parallel must be placed: either it runs fp8 or the catalog says
    # why not: the five the issue names, and the pipelines (fp8 refused inside stages).
    assert {n for n, row in CATALOG.items() if row.refusal(Feature.fp8)} == NO_FP8_LAYOUTS
    assert NO_FP8_LAYOUTS < set(LAYOUTS)
    assert {"ddp", "fsdp", "hsdp"} <= set(LAYOUTS) - NO_FP8_LAYOUTS


@pytest.mark.parametrize("profile", PROFILES)
def test_auto_table_over_every_profile_and_layout(profile):
    gpu = load_gpu_profile(profile)
    for layout, te, torchao, capability, cpu_bf16, model in itertools.product(
        LAYOUTS,
        (False, True),
        (False, True),
        (None, AMPERE, HOPPER),
        (False, True),
        (WIDE, NARROW),
    ):
        probe = MachineProbe(te, torchao, capability, cpu_bf16 and capability is None)
        plan = resolve_precision("auto", Fp8Config(), gpu, model, probe, layout_name=layout)
        case = (profile, layout, te, torchao, capability, cpu_bf16, model.name)
        assert (plan.resolved, plan.fp8_backend) == expected_auto(
            profile, layout, te, torchao, capability, cpu_bf16, model
        ), case
        fp8_hardware = gpu.fp8 and capability == HOPPER
        if layout in NO_FP8_LAYOUTS and fp8_hardware:
            assert f"fp8 skipped: parallel={layout} " in plan.reason, case


def test_zero_reason_names_deepspeed():
    plan = resolve_precision(
        "auto",
        Fp8Config(),
        load_gpu_profile("h100_sxm"),
        WIDE,
        MachineProbe(True, True, HOPPER, False),
        layout_name="zero2",
    )
    assert plan.resolved == "bf16"
    assert "fp8 skipped: parallel=zero2 runs through DeepSpeed, which has no fp8" in plan.reason


def test_an_explicit_request_is_not_rewritten_by_the_layout():
    # Refusing explicit fp8 with these layouts is the driver's validation, with a ConfigError.
    plan = resolve_precision(
        "fp8",
        Fp8Config(),
        load_gpu_profile("h100_sxm"),
        WIDE,
        MachineProbe(True, True, HOPPER, False),
        layout_name="zero2",
    )
    assert plan.resolved == "fp8"
