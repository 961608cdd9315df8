"""Numeric format of a run: which autocast dtype, TF32 or not, loss scaling, fp8 through
Transformer Engine or torchao, and which peak TFLOP/s the MFU is measured against."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from train.runtime.machine import MachineProbe
from train.spec.config import Fp8Config, GpuConfig, ModelConfig

FP8_RECIPES = {"te": ("current", "delayed"), "torchao": ("tensorwise", "rowwise")}
FP8_MIN_CAPABILITY = (8, 9)
# fp8 GEMMs (cuBLASLt, TE, torch._scaled_mm) need every dimension, tokens included, a multiple
# of 16.
FP8_GEMM_MULTIPLE = 16  # Ada and Hopper have fp8 tensor cores
# Parallel layouts (parallel.name) that cannot run fp8, and why: precision=auto resolves them to
# bf16 instead of resolving fp8 that every rank would then refuse.
FP8_LAYOUT_GAPS = {
    **{f"zero{s}": f"parallel=zero{s} runs through DeepSpeed, which has no fp8" for s in (1, 2, 3)},
    "tp": "parallel=tp needs fp8-aware tensor-parallel plans, which are not wired up",
    "tp_fsdp": "parallel=tp_fsdp needs fp8-aware tensor-parallel plans, which are not wired up",
    **{
        name: f"parallel={name} has no fp8 inside pipeline stages (not wired up)"
        for name in ("pp", "pp_fsdp")
    },
}


@dataclass(frozen=True)
class PrecisionPlan:
    requested: str
    resolved: str  # fp32 | tf32 | bf16 | fp16 | fp8
    reason: str
    autocast_dtype: torch.dtype | None = None
    allow_tf32: bool = False
    loss_scaling: bool = False
    fp8_backend: str | None = None  # te | torchao
    fp8_recipe: str | None = None
    fp8_min_dim: int = 0

    def autocast(self, device: torch.device):
        stack = contextlib.ExitStack()
        if self.autocast_dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=self.autocast_dtype))
        if self.fp8_backend == "te":
            stack.enter_context(te_autocast(self.fp8_recipe))
        return stack

    def apply_backend_flags(self) -> None:
        # Matmuls that stay in fp32 use TF32 tensor cores only when the plan allows it; fp32
        # runs keep full precision as the correctness reference.
        torch.set_float32_matmul_precision("high" if self.allow_tf32 else "highest")
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
            torch.backends.cudnn.allow_tf32 = self.allow_tf32

    def as_dict(self) -> dict:
        out = {"requested": self.requested, "resolved": self.resolved, "reason": self.reason}
        if self.resolved == "fp8":
            out.update(
                fp8_backend=self.fp8_backend,
                fp8_recipe=self.fp8_recipe,
                fp8_min_dim=self.fp8_min_dim,
            )
        return out


def _plan(requested: str, resolved: str, reason: str, **fp8) -> PrecisionPlan:
    if resolved == "fp32":
        return PrecisionPlan(requested, "fp32", reason)
    if resolved == "tf32":
        return PrecisionPlan(requested, "tf32", reason, allow_tf32=True)
    if resolved == "bf16":
        return PrecisionPlan(requested, "bf16", reason, torch.bfloat16, allow_tf32=True)
    if resolved == "fp16":
        return PrecisionPlan(requested, "fp16", reason, torch.float16, True, loss_scaling=True)
    if resolved == "fp8":
        # Layers left out of fp8 (the head, narrow layers) run under bf16 autocast.
        return PrecisionPlan(requested, "fp8", reason, torch.bfloat16, allow_tf32=True, **fp8)
    raise ValueError(f"precision.name: {resolved!r} is not one of fp32, tf32, bf16, fp16, fp8")


def fp8_eligible(in_features: int, out_features: int, min_dim: int) -> bool:
    """fp8 kernels need dimensions that are multiples of 16, and only pay on wide layers."""
    return (
        in_features % 16 == 0
        and out_features % 16 == 0
        and min(in_features, out_features) >= min_dim
    )


def fp8_module_filter(min_dim: int) -> Callable[[nn.Module, str], bool]:
    """Which modules become fp8: eligible Linear layers, never the output head (its logits
    feed the loss, where fp8's error shows first)."""

    def keep(module: nn.Module, fqn: str) -> bool:
        return (
            isinstance(module, nn.Linear)
            and fqn.split(".")[-1] != "output"
            and fp8_eligible(module.in_features, module.out_features, min_dim)
        )

    return keep


def model_linear_shapes(model: ModelConfig) -> list[tuple[int, int]]:
    """(in, out) of every Linear inside the blocks of the reference transformer."""
    head_dim = model.d_model // model.n_heads
    kv = model.n_kv_heads * head_dim
    d, ffn = model.d_model, model.ffn_hidden
    return [(d, d), (d, kv), (d, kv), (d, d), (d, ffn), (ffn, d), (d, ffn)]


def resolve_precision(
    requested: str,
    fp8: Fp8Config,
    gpu: GpuConfig,
    model: ModelConfig,
    probe: MachineProbe,
    *,
    layout: str | None = None,
    tokens_per_micro_batch: int | None = None,
) -> PrecisionPlan:
    """Turn the requested precision (or `auto`) into a plan for this profile, machine and
    parallel layout (``layout`` is parallel.name).

    ``tokens_per_micro_batch`` (micro_batch x seq_len) is each GEMM's row count: fp8 kernels
    need a multiple of 16 there as in the weights, so auto keeps bf16 otherwise (an explicit
    fp8 with such a shape is refused by the driver's validation).

    ``layout=None`` means the caller does not know the layout; auto then cannot rule fp8 out
    for it. Ranks always pass it.
    """
    on_cpu = probe.compute_capability is None
    if requested != "auto":
        if requested != "fp8":
            reason = f"requested {requested}"
            if requested == "tf32" and on_cpu:
                reason += " (TF32 is a no-op on CPU: matmuls run in fp32)"
            return _plan(requested, requested, reason)
        return _fp8_plan(requested, fp8, model, probe, reason_prefix="requested fp8")

    if on_cpu:  # whatever the profile says, the matmuls run on this CPU
        if probe.cpu_native_bf16:
            return _plan(
                "auto", "bf16", "auto on cpu: native bf16 (avx512_bf16/amx), bf16 autocast"
            )
        # Measured on an AVX2-only EPYC: bf16 autocast ran the tiny model 9x slower than fp32.
        return _plan(
            "auto", "fp32", "auto on cpu: no native bf16 (avx512_bf16/amx), fp32 is faster"
        )
    bf16_reason = f"auto on {gpu.name}: bf16 autocast over fp32 master weights, TF32 elsewhere"
    if not gpu.fp8:
        return _plan("auto", "bf16", bf16_reason)
    if probe.compute_capability < FP8_MIN_CAPABILITY:
        cc = ".".join(map(str, probe.compute_capability))
        return _plan("auto", "bf16", f"{bf16_reason}; compute capability {cc} < 8.9 has no fp8")
    # Before the libraries: installing them would not make this layout run fp8.
    if layout in FP8_LAYOUT_GAPS:
        return _plan("auto", "bf16", f"{bf16_reason}; fp8 skipped: {FP8_LAYOUT_GAPS[layout]}")
    if tokens_per_micro_batch is not None and tokens_per_micro_batch % FP8_GEMM_MULTIPLE:
        return _plan(
            "auto",
            "bf16",
            f"{bf16_reason}; fp8 skipped: micro_batch x seq_len = {tokens_per_micro_batch} is "
            f"not a multiple of {FP8_GEMM_MULTIPLE}, which fp8 GEMMs need",
        )
    if not (probe.te_available or probe.torchao_available):
        return _plan(
            "auto",
            "bf16",
            f"{bf16_reason}; fp8 skipped: neither Transformer Engine "
            "nor torchao imports (pip install -e .[fp8])",
        )
    widths = [s for s in model_linear_shapes(model) if fp8_eligible(*s, fp8.min_dim)]
    if not widths:
        return _plan(
            "auto",
            "bf16",
            f"{bf16_reason}; fp8 skipped: no layer of {model.name} is "
            f"{fp8.min_dim} wide (precision.fp8.min_dim), fp8 would not pay",
        )
    return _fp8_plan("auto", fp8, model, probe, reason_prefix=f"auto on {gpu.name}")


def _fp8_plan(
    requested: str, fp8: Fp8Config, model: ModelConfig, probe: MachineProbe, reason_prefix: str
) -> PrecisionPlan:
    backend = fp8.backend
    if backend == "auto":
        backend = "te" if probe.te_available else "torchao"
    recipe = fp8.recipe or FP8_RECIPES[backend][0]
    eligible = sum(fp8_eligible(*s, fp8.min_dim) for s in model_linear_shapes(model))
    reason = (
        f"{reason_prefix}: fp8 via {backend} ({recipe}) on {eligible} of 7 linears per "
        f"block (min_dim {fp8.min_dim}), bf16 for the rest and the head"
    )
    if backend == "torchao" and probe.compute_capability is None:
        reason += "; emulated on CPU (torchao emulate=True: numerics only, no speed-up)"
    return _plan(
        requested, "fp8", reason, fp8_backend=backend, fp8_recipe=recipe, fp8_min_dim=fp8.min_dim
    )


def prepare_model(
    model: nn.Module,
    plan: PrecisionPlan,
    device: torch.device,
    *,
    fsdp_float8_all_gather: bool = False,
) -> nn.Module:
    """Swap eligible layers to fp8 before the model is wrapped for parallelism.

    ``fsdp_float8_all_gather`` (torchao, tensorwise, FSDP2): FSDP gathers those layers'
    weights in fp8 (train/parallel/build.py fsdp_float8_all_gather).
    """
    if plan.resolved != "fp8":
        return model
    keep = fp8_module_filter(plan.fp8_min_dim)
    if plan.fp8_backend == "torchao":
        import dataclasses

        from torchao.float8 import Float8LinearConfig, convert_to_float8_training

        config = Float8LinearConfig.from_recipe_name(plan.fp8_recipe)
        if device.type != "cuda":
            config = dataclasses.replace(config, emulate=True)
        if fsdp_float8_all_gather:
            config = dataclasses.replace(config, enable_fsdp_float8_all_gather=True)
        return convert_to_float8_training(model, config=config, module_filter_fn=keep)
    return swap_to_te_linear(model, keep)


def swap_to_te_linear(model: nn.Module, keep: Callable[[nn.Module, str], bool]) -> nn.Module:
    import transformer_engine.pytorch as te

    for fqn, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            child_fqn = f"{fqn}.{child_name}" if fqn else child_name
            if not keep(child, child_fqn):
                continue
            replacement = te.Linear(
                child.in_features,
                child.out_features,
                bias=False,
                params_dtype=child.weight.dtype,
                device=child.weight.device,
            )
            with torch.no_grad():
                replacement.weight.copy_(child.weight)
            setattr(module, child_name, replacement)
    return model


def te_autocast(recipe_name: str | None):
    import transformer_engine.pytorch as te
    from transformer_engine.common import recipe as te_recipe

    recipe = (
        te_recipe.DelayedScaling() if recipe_name == "delayed" else te_recipe.Float8CurrentScaling()
    )
    if hasattr(te, "autocast"):  # TE 2.x; fp8_autocast is deprecated there
        return te.autocast(enabled=True, recipe=recipe)
    return te.fp8_autocast(enabled=True, fp8_recipe=recipe)


def peak_tflops_for(gpu: GpuConfig, resolved: str) -> float | None:
    """The profile's dense peak for the format the matmuls actually run in (None if unknown)."""
    return getattr(gpu.peak_tflops, resolved, None)
