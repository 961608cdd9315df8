"""precision=auto: the table from the precision issue (no layout given), and the layout column
added to it: no fp8 for layouts whose ranks would refuse it."""

from __future__ import annotations

import itertools

import pytest

from launch.conf_tree import group_choices, load_gpu_profile
from tests.conftest import AMPERE, GPU_PROFILES, HOPPER, NARROW, WIDE, compose_run_config
from train.spec.catalog import CATALOG, Feature
from train.spec.config import Fp8Config
from train.spec.devices import MachineProbe
from train.spec.precision import resolve_precision
from train.spec.rules import layout_precision_refusal

LAYOUTS = group_choices("parallel")
NO_FP8_LAYOUTS = {"zero1", "zero2", "zero3"}
# Tensor parallel runs fp8 through torchao's float8 TP styles only (no TE layers); so do the
# pipelines, under the schedules that keep each backward whole (the default one_f_one_b).
TORCHAO_ONLY = {"tp", "tp_fsdp", "pp", "pp_fsdp"}


def expected_auto(profile, layout, te, torchao, capability, cpu_bf16, model):
    """The auto table, written out case by case, with the layout column added (None: no
    layout given)."""
    if capability is None:  # a CPU device, whatever the profile says
        return ("bf16", None) if cpu_bf16 else ("fp32", None)
    if profile in ("a100_40g", "a100_80g", "a800", "cpu"):
        return ("bf16", None)
    if capability < (8, 9) or layout in NO_FP8_LAYOUTS:
        return ("bf16", None)
    if not (te or torchao) or model is NARROW:
        return ("bf16", None)
    if layout in TORCHAO_ONLY:
        return ("fp8", "torchao") if torchao else ("bf16", None)
    return ("fp8", "te" if te else "torchao")


def test_every_layout_of_conf_is_classified():
    # A new layout in conf/parallel must be placed: either it runs fp8 or the catalog says
    # why not: DeepSpeed's zero stages; TP and the pipelines run torchao's fp8 but not
    # Transformer Engine's.
    assert {n for n, row in CATALOG.items() if row.refusal(Feature.fp8)} == NO_FP8_LAYOUTS
    te_refused = {n for n, row in CATALOG.items() if row.refusal(Feature.fp8_te)}
    assert te_refused == NO_FP8_LAYOUTS | TORCHAO_ONLY
    assert NO_FP8_LAYOUTS < set(LAYOUTS)
    assert {"ddp", "fsdp", "hsdp"} <= set(LAYOUTS) - NO_FP8_LAYOUTS


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_auto_table_over_every_profile_and_layout(profile):
    gpu = load_gpu_profile(profile)
    for layout, te, torchao, capability, cpu_bf16, model in itertools.product(
        [None, *LAYOUTS],
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
        if layout is None:
            assert plan.reason.startswith("auto on"), case
            if plan.resolved == "bf16" and fp8_hardware:
                assert "fp8 skipped" in plan.reason, case  # says why fp8 was not used


def on_h100_with_te_and_torchao(requested: str, layout: str):
    return resolve_precision(
        requested,
        Fp8Config(),
        load_gpu_profile("h100_sxm"),
        WIDE,
        MachineProbe(True, True, HOPPER, False),
        layout_name=layout,
    )


def test_zero_reason_names_deepspeed():
    plan = on_h100_with_te_and_torchao("auto", "zero2")
    assert plan.resolved == "bf16"
    assert "fp8 skipped: parallel=zero2 runs through DeepSpeed, which has no fp8" in plan.reason
    # DeepSpeed's engine casts the model itself; the loop does not autocast (it said it did).
    assert "DeepSpeed's bf16 engine: bf16 weights, fp32 master weights" in plan.reason
    assert "autocast" not in plan.reason
    cpu = MachineProbe(False, False, None, True)
    plan = resolve_precision("auto", Fp8Config(), load_gpu_profile("cpu"), WIDE, cpu,
                             layout_name="zero1")  # fmt: skip
    assert plan.resolved == "bf16" and "DeepSpeed's bf16 engine" in plan.reason
    ampere = MachineProbe(False, False, AMPERE, False)
    plan = resolve_precision("auto", Fp8Config(), load_gpu_profile("a100_80g"), WIDE, ampere,
                             layout_name="fsdp")  # fmt: skip
    assert "bf16 autocast over fp32 master weights" in plan.reason


def test_an_explicit_request_is_not_rewritten_by_the_layout():
    # Refusing explicit fp8 with these layouts is the driver's validation, with a ConfigError.
    plan = on_h100_with_te_and_torchao("fp8", "zero2")
    assert plan.resolved == "fp8"


@pytest.mark.parametrize("schedule", ["interleaved_zero_bubble", "zero_bubble_v"])
def test_auto_keeps_bf16_under_a_zero_bubble_schedule(schedule):
    """The split backward (input, then weight gradients) is not checked with fp8 linears: auto
    keeps bf16 there and says why; the whole-backward schedules run torchao's fp8."""
    gpu, probe = load_gpu_profile("h100_sxm"), MachineProbe(True, True, HOPPER, False)
    for layout in ("pp", "pp_fsdp"):
        plan = resolve_precision(
            "auto", Fp8Config(), gpu, WIDE, probe, layout_name=layout, pp_schedule=schedule
        )
        assert plan.resolved == "bf16"
        assert f"fp8 skipped: pp_schedule={schedule} splits each backward" in plan.reason
        whole = resolve_precision(
            "auto", Fp8Config(), gpu, WIDE, probe, layout_name=layout, pp_schedule="one_f_one_b"
        )
        assert (whole.resolved, whole.fp8_backend) == ("fp8", "torchao")
    # Outside a pipeline the schedule is not read.
    plan = resolve_precision(
        "auto", Fp8Config(), gpu, WIDE, probe, layout_name="fsdp", pp_schedule=schedule
    )
    assert plan.resolved == "fp8"


def test_auto_keeps_bf16_where_the_fp8_settings_given_are_refused():
    """precision=auto with fp8 settings the layout refuses when they are asked for explicitly
    (train/spec/rules.py): TE's layers by name on a pipeline or TP layout, rowwise scaling
    with TP (inside pipeline stages too, tp=-1 included): bf16, with the refusal as reason."""
    gpu, probe = load_gpu_profile("h100_sxm"), MachineProbe(True, True, HOPPER, False)
    te, rowwise = Fp8Config(backend="te"), Fp8Config(backend="torchao", recipe="rowwise")
    cases = [
        (te, "pp_fsdp", 1, "no Transformer Engine fp8 inside pipeline stages"),
        (te, "tp_fsdp", 2, "would need TE's own tensor-parallel layers"),
        (rowwise, "pp", 2, "with TP inside its stages runs fp8 through torchao's float8"),
        (rowwise, "pp_fsdp", -1, "with TP inside its stages runs fp8 through torchao's float8"),
        (rowwise, "tp", 2, "take tensorwise scaling only"),
    ]
    for fp8, layout, tp, why in cases:
        plan = resolve_precision("auto", fp8, gpu, WIDE, probe, layout_name=layout, tp=tp)
        assert plan.resolved == "bf16" and f"fp8 skipped: parallel={layout}" in plan.reason
        assert why in plan.reason, (layout, plan.reason)
    # Where nothing refuses them, they run.
    assert resolve_precision("auto", te, gpu, WIDE, probe, layout_name="fsdp").fp8_backend == "te"
    plan = resolve_precision("auto", rowwise, gpu, WIDE, probe, layout_name="pp", tp=1)
    assert (plan.resolved, plan.fp8_recipe) == ("fp8", "rowwise")


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ([], None),
        (["parallel.pp_schedule=interleaved_one_f_one_b", "parallel.pp_stages_per_rank=2"], None),
        (
            ["parallel.pp_schedule=zero_bubble_v", "parallel.pp_stages_per_rank=2"],
            "pp_schedule=zero_bubble_v splits each backward into input and weight passes",
        ),
        (["precision.fp8.backend=te"], "no Transformer Engine fp8 inside pipeline stages"),
        (["precision.fp8.recipe=rowwise"], None),  # no TP inside the stages
        (["precision.fp8.recipe=rowwise", "parallel.tp=-1"], "with TP inside its stages"),
    ],
)
def test_an_explicit_fp8_pipeline_is_refused_only_where_it_is_not_checked(overrides, why):
    cfg = compose_run_config(
        ["gpu=h100_sxm", "model=llama_7b", "parallel=pp_fsdp", "precision=fp8", *overrides]
    )
    refusal = layout_precision_refusal(cfg, on_cpu=False)
    assert refusal == why if why is None else why in refusal
