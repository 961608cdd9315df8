"""Which numeric format a run uses, decided without torch: the rules of `precision=auto`, which
layers fp8 may take, and the peak MFU is measured against.

Ranks decide on their own device (train/runtime/machine.py fills the MachineProbe); the
driver asks the same function what they will pick, here or on nodes it cannot see
(launch/resolve.py). The torch half (autocast, backend flags, the fp8 layer swap) is
train/runtime/numerics.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from train.spec.catalog import Feature, Layout, layout, rowwise_fp8_refusal
from train.spec.config import Fp8Config, GpuConfig, ModelConfig, RunConfig
from train.spec.devices import FP8_CAPABILITY, MachineProbe
from train.spec.shapes import block_linears
from train.spec.stages import fp8_schedule_refusal

FP8_RECIPES = {"te": ("current", "delayed"), "torchao": ("tensorwise", "rowwise")}
# fp8 GEMMs (cuBLASLt, TE, torch._scaled_mm) need every dimension, tokens included, a multiple
# of 16.
FP8_GEMM_MULTIPLE = 16
# The dtype autocast runs matmuls in, by resolved precision (None: no autocast). fp8 runs the
# layers it leaves out (the head, narrow layers) under bf16 autocast.
AUTOCAST = {"bf16": "bf16", "fp16": "fp16", "fp8": "bf16"}
SIXTEEN_BIT = ("bf16", "fp16", "fp8")


@dataclass(frozen=True)
class PrecisionPlan:
    requested: str
    resolved: str  # fp32 | tf32 | bf16 | fp16 | fp8
    reason: str
    fp8_backend: str | None = None  # te | torchao
    fp8_recipe: str | None = None
    fp8_min_dim: int = 0

    @property
    def autocast_dtype(self) -> str | None:
        return AUTOCAST.get(self.resolved)

    @property
    def allow_tf32(self) -> bool:
        """Matmuls left in fp32 use TF32 tensor cores, except in fp32 runs, which keep full
        precision as the correctness reference."""
        return self.resolved != "fp32"

    @property
    def loss_scaling(self) -> bool:
        return self.resolved == "fp16"

    @property
    def sixteen_bit(self) -> bool:
        return self.resolved in SIXTEEN_BIT

    def as_dict(self) -> dict:
        out = {"requested": self.requested, "resolved": self.resolved, "reason": self.reason}
        if self.resolved == "fp8":
            out.update(
                fp8_backend=self.fp8_backend,
                fp8_recipe=self.fp8_recipe,
                fp8_min_dim=self.fp8_min_dim,
            )
        return out


def fp8_eligible(in_features: int, out_features: int, min_dim: int) -> bool:
    """fp8 kernels need dimensions that are multiples of 16, and only pay on wide layers."""
    return (
        in_features % FP8_GEMM_MULTIPLE == 0
        and out_features % FP8_GEMM_MULTIPLE == 0
        and min(in_features, out_features) >= min_dim
    )


def gathers_weights_in_fp8(row: Layout, fp8_backend: str | None, fp8_recipe: str | None) -> bool:
    """Whether FSDP2 gathers torchao's fp8 weights in fp8 (half the bytes of bf16): torchao
    supports it for tensorwise scaling only, and only FSDP layouts gather weights at all. Not
    pipeline stages (pp_fsdp): they gather once a step and keep their units gathered through
    every microbatch (train/parallel/pipeline_stages.py), in bf16: torchao's fp8 all-gather is
    not wired into the stages."""
    return (
        row.shards_parameters
        and not row.pipeline
        and fp8_backend == "torchao"
        and fp8_recipe == "tensorwise"
    )


def compiles_blocks(train_compile: bool, fp8_backend: str | None, *, on_gpu: bool) -> bool:
    """Whether a run's blocks (and loss) are compiled: train.compile, or torchao fp8 on a GPU,
    whose casts are only fast once the compiler fuses them (the performance model reads this
    rule too)."""
    return train_compile or (fp8_backend == "torchao" and on_gpu)


def tp_gathers_in_fp8(fp8_backend: str | None, *, on_gpu: bool) -> bool:
    """Whether tensor parallelism takes torchao's float8 styles, whose sequence-parallel
    all-gathers carry fp8 (gloo cannot: CPU ranks keep the plain styles)."""
    return fp8_backend == "torchao" and on_gpu


def fp8_linear_count(model: ModelConfig, min_dim: int) -> int:
    """Linear layers per block that fp8 runs (the head never)."""
    return sum(
        fp8_eligible(lin.in_features, lin.out_features, min_dim) for lin in block_linears(model)
    )


def peak_tflops_for(gpu: GpuConfig, resolved: str) -> float | None:
    """The profile's dense peak for the format the matmuls actually run in (None if unknown)."""
    return getattr(gpu.peak_tflops, resolved, None)


def resolve_precision(
    requested: str,
    fp8: Fp8Config,
    gpu: GpuConfig,
    model: ModelConfig,
    probe: MachineProbe,
    *,
    layout_name: str | None = None,
    tokens_per_micro_batch: int | None = None,
    pp_schedule: str | None = None,
    tp: int = 1,
) -> PrecisionPlan:
    """Turn the requested precision (or `auto`) into a plan for this profile, machine and
    parallel layout (``layout_name`` is parallel.name).

    ``tokens_per_micro_batch`` (micro_batch x seq_len) is each GEMM's row count: fp8 kernels
    need a multiple of 16 there as in the weights, so auto keeps bf16 otherwise (an explicit
    fp8 with such a shape is refused by the driver's validation).

    ``layout_name=None`` means the caller does not know the layout; auto then cannot rule fp8
    out for it. Ranks always pass it, with ``pp_schedule`` and ``tp`` (parallel.*): a
    pipeline's zero-bubble schedules keep bf16 (stages.fp8_schedule_refusal), and so does
    rowwise scaling under TP (catalog.rowwise_fp8_refusal).
    """
    on_cpu = probe.compute_capability is None
    deepspeed = layout_name not in (None, "auto") and layout(layout_name).deepspeed
    # DeepSpeed's engine casts the model itself (train/parallel/zero.py): no autocast there.
    how = (
        "DeepSpeed's bf16 engine: bf16 weights, fp32 master weights in the optimizer"
        if deepspeed
        else "bf16 autocast over fp32 master weights"
    )
    if requested != "auto":
        if requested != "fp8":
            reason = f"requested {requested}"
            if requested == "tf32" and on_cpu:
                reason += " (TF32 is a no-op on CPU: matmuls run in fp32)"
            return PrecisionPlan(requested, requested, reason)
        return _fp8_plan(requested, fp8, model, probe, layout_name, "requested fp8")
    if on_cpu:  # whatever the profile says, the matmuls run on this CPU
        if probe.cpu_native_bf16:
            return PrecisionPlan(
                "auto", "bf16", f"auto on cpu: native bf16 (avx512_bf16/amx), {how}"
            )
        # Measured on an AVX2-only EPYC: bf16 autocast ran the tiny model 9x slower than fp32.
        return PrecisionPlan(
            "auto", "fp32", "auto on cpu: no native bf16 (avx512_bf16/amx), fp32 is faster"
        )
    bf16 = f"auto on {gpu.name}: {how}, TF32 elsewhere"
    if not gpu.fp8:
        return PrecisionPlan("auto", "bf16", bf16)
    skipped = _why_not_fp8(fp8, model, probe, layout_name, tokens_per_micro_batch, pp_schedule, tp)
    if skipped:
        return PrecisionPlan("auto", "bf16", f"{bf16}; {skipped}")
    return _fp8_plan("auto", fp8, model, probe, layout_name, f"auto on {gpu.name}")


def precision_for_run(cfg: RunConfig, probe: MachineProbe) -> PrecisionPlan:
    """The plan a rank of ``cfg`` resolves on a machine like ``probe``: what the ranks decide,
    and what the driver asks to say beforehand (launch/resolve.py)."""
    return resolve_precision(
        cfg.precision.name,
        cfg.precision.fp8,
        cfg.gpu,
        cfg.model,
        probe,
        layout_name=cfg.parallel.name,
        tokens_per_micro_batch=cfg.train.micro_batch * cfg.train.seq_len,
        pp_schedule=str(cfg.parallel.pp_schedule),
        tp=cfg.parallel.tp,
    )


def fp8_refusal(row: Layout, fp8: Fp8Config, tp: int, pp_schedule: str | None) -> str | None:
    """Why ``row`` cannot run fp8 with these settings, or None: the layout's own refusal,
    TE's layers asked for by name, rowwise scaling under TP (catalog.rowwise_fp8_refusal), a
    pipeline's zero-bubble schedule (stages.fp8_schedule_refusal; ``pp_schedule`` None: not
    known). One rule for an explicit fp8 (train/spec/rules.py) and for auto, which keeps bf16."""
    rowwise = fp8.backend != "te" and fp8.recipe == "rowwise"
    return (
        row.refusal(Feature.fp8)
        or (fp8.backend == "te" and row.refusal(Feature.fp8_te))
        or (rowwise and rowwise_fp8_refusal(row, tp))
        or (row.pipeline and pp_schedule is not None and fp8_schedule_refusal(pp_schedule))
        or None
    )


def _why_not_fp8(
    fp8: Fp8Config,
    model: ModelConfig,
    probe: MachineProbe,
    layout_name: str | None,
    tokens: int | None,
    pp_schedule: str | None = None,
    tp: int = 1,
) -> str | None:
    """Why auto keeps bf16 on a GPU with fp8 tensor cores, or None when fp8 runs."""
    if probe.compute_capability < FP8_CAPABILITY:
        cc = ".".join(map(str, probe.compute_capability))
        return f"compute capability {cc} < 8.9 has no fp8"
    # Before the libraries: installing them would not make this layout run fp8.
    known = layout_name is not None and layout_name != "auto"
    refusal = fp8_refusal(layout(layout_name), fp8, tp, pp_schedule) if known else None
    if refusal:
        return f"fp8 skipped: {refusal}"
    if tokens is not None and tokens % FP8_GEMM_MULTIPLE:
        return (
            f"fp8 skipped: micro_batch x seq_len = {tokens} is not a multiple of "
            f"{FP8_GEMM_MULTIPLE}, which fp8 GEMMs need"
        )
    if not (probe.te_available or probe.torchao_available):
        return "fp8 skipped: neither Transformer Engine nor torchao imports (pip install -e .[fp8])"
    te_refusal = layout(layout_name).refusal(Feature.fp8_te) if known else None
    if te_refusal and not probe.torchao_available:
        return f"fp8 skipped: {te_refusal}, and torchao does not import (pip install -e .[fp8])"
    if not fp8_linear_count(model, fp8.min_dim):
        return (
            f"fp8 skipped: no layer of {model.name} is {fp8.min_dim} wide "
            "(precision.fp8.min_dim), fp8 would not pay"
        )
    return None


def fp8_backend_for(fp8: Fp8Config, probe: MachineProbe, layout_name: str | None) -> str:
    """fp8.backend, or for auto: Transformer Engine where it imports and the layout can run
    it, else torchao."""
    if fp8.backend != "auto":
        return str(fp8.backend)
    known = layout_name is not None and layout_name != "auto"
    te_refused = known and layout(layout_name).refusal(Feature.fp8_te) is not None
    return "te" if probe.te_available and not te_refused else "torchao"


def _fp8_plan(
    requested: str,
    fp8: Fp8Config,
    model: ModelConfig,
    probe: MachineProbe,
    layout_name: str | None,
    reason_prefix: str,
) -> PrecisionPlan:
    backend = fp8_backend_for(fp8, probe, layout_name)
    recipe = fp8.recipe or FP8_RECIPES[backend][0]
    eligible = fp8_linear_count(model, fp8.min_dim)
    total = len(block_linears(model))
    reason = (
        f"{reason_prefix}: fp8 via {backend} ({recipe}) on {eligible} of {total} linears per "
        f"block (min_dim {fp8.min_dim}), bf16 for the rest and the head"
    )
    if backend == "torchao" and probe.compute_capability is None:
        reason += "; emulated on CPU (torchao emulate=True: numerics only, no speed-up)"
    return PrecisionPlan(
        requested,
        "fp8",
        reason,
        fp8_backend=str(backend),
        fp8_recipe=str(recipe),
        fp8_min_dim=fp8.min_dim,
    )
