"""Numeric format of a run: which autocast dtype, TF32 or not, loss scaling, and which peak
TFLOP/s the MFU is measured against."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from train.config import GpuConfig


@dataclass(frozen=True)
class PrecisionPlan:
    requested: str
    resolved: str  # fp32 | tf32 | bf16 | fp16 | fp8
    reason: str
    autocast_dtype: torch.dtype | None
    allow_tf32: bool
    loss_scaling: bool

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def apply_backend_flags(self) -> None:
        # Matmuls that stay in fp32 (optimizer-side, or fp32 runs) use TF32 tensor cores only
        # when the plan allows it; fp32 runs keep full precision as the correctness reference.
        precision = "high" if self.allow_tf32 else "highest"
        torch.set_float32_matmul_precision(precision)
        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
            torch.backends.cudnn.allow_tf32 = self.allow_tf32

    def as_dict(self) -> dict:
        return {"requested": self.requested, "resolved": self.resolved, "reason": self.reason}


def resolve_precision(requested: str, gpu: GpuConfig, device_type: str) -> PrecisionPlan:
    """Turn the requested precision (or `auto`) into a plan for this device."""
    if requested == "auto" and device_type == "cpu" and not cpu_has_native_bf16():
        # Measured on an AVX2-only EPYC: bf16 autocast ran the tiny model 9x slower than fp32.
        resolved = "fp32"
        reason = "auto on cpu: no native bf16 (avx512_bf16/amx) on this CPU, fp32 is faster"
    elif requested == "auto":
        resolved = "bf16"
        reason = f"auto on {gpu.name}: bf16 autocast over fp32 master weights, TF32 elsewhere"
    else:
        resolved, reason = requested, f"requested {requested}"
    if resolved == "fp32":
        return PrecisionPlan(requested, "fp32", reason, None, False, False)
    if resolved == "tf32":
        if device_type == "cpu":
            reason += " (TF32 is a no-op on CPU: matmuls run in fp32)"
        return PrecisionPlan(requested, "tf32", reason, None, True, False)
    if resolved == "bf16":
        return PrecisionPlan(requested, "bf16", reason, torch.bfloat16, True, False)
    if resolved == "fp16":
        return PrecisionPlan(requested, "fp16", reason, torch.float16, True, True)
    raise ValueError(f"precision.name: {requested!r} is not available on {gpu.name}")


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def peak_tflops_for(gpu: GpuConfig, resolved: str) -> float | None:
    """The profile's dense peak for the format the matmuls actually run in (None if unknown)."""
    return getattr(gpu.peak_tflops, resolved, None)
