"""Per-step measurements and the throughput figures of the run summary (rank 0 writes them)."""

from __future__ import annotations

import resource
import statistics
from dataclasses import dataclass

import torch

from train.spec.config import GpuConfig


def model_tflops_per_device(flops_per_token: float, tokens_per_s_per_device: float) -> float:
    return flops_per_token * tokens_per_s_per_device / 1e12


def mfu(flops_per_token: float, tokens_per_s_per_device: float, peak_tflops: float | None):
    """Model FLOPs utilisation: achieved model FLOP/s over the precision's dense peak.

    None when the peak is unknown: an unknown part never borrows another part's peak.
    """
    if not peak_tflops:
        return None
    return model_tflops_per_device(flops_per_token, tokens_per_s_per_device) / peak_tflops


@dataclass(frozen=True)
class MfuFigures:
    """summary.json's MFU keys: against the peak of the precision in use, fp8 runs also against
    the bf16 peak, and against the measured matmul ceiling (null where a peak is unknown)."""

    peak_tflops: float | None
    mfu_peak_precision: str
    mfu: float | None
    measured_peak_tflops: float | None
    mfu_vs_measured: float | None
    mfu_vs_bf16_peak: float | None = None  # fp8 runs
    mfu_vs_fp8_peak: float | None = None  # fp8 runs

    @property
    def above_peak(self) -> str | None:
        """Why an MFU above 100% cannot be a true figure, or None: a run cannot beat the peak
        it is measured against, so that peak is too low for this device."""
        if self.mfu_vs_measured is not None and self.mfu_vs_measured > 1:
            return (
                f"MFU against the measured ceiling is {self.mfu_vs_measured:.0%}: the ceiling "
                "was likely measured on a loaded machine or another device; measure again on "
                "a quiet one (python -m launch.mamf --replace)"
            )
        if self.mfu is not None and self.mfu > 1:
            return (
                f"MFU is {self.mfu:.0%}: the profile's {self.mfu_peak_precision} peak is below "
                "what this device did; the profile likely describes another part (gpu=...)"
            )
        return None


def mfu_figures(
    flops_per_token: float, tokens_per_s_per_device: float, gpu: GpuConfig | None, resolved: str
) -> MfuFigures:
    """MFU against the peak of the precision in use; fp8 runs also against the bf16 peak (the
    head and narrow layers stay bf16, so neither figure alone is the whole truth), and against
    the measured matmul ceiling when `python -m launch.mamf` has measured one. ``gpu`` None:
    no profile describes the device (devices.peaks_describe), so every figure is None."""
    peak = getattr(gpu.peak_tflops, resolved, None) if gpu else None
    measured = getattr(gpu.measured_peak_tflops, resolved, None) if gpu else None
    bf16_peak = gpu.peak_tflops.bf16 if gpu else None
    figure = mfu(flops_per_token, tokens_per_s_per_device, peak)
    fp8 = resolved == "fp8"
    return MfuFigures(
        peak_tflops=peak,
        mfu_peak_precision=resolved,
        mfu=figure,
        measured_peak_tflops=measured,
        mfu_vs_measured=mfu(flops_per_token, tokens_per_s_per_device, measured),
        mfu_vs_bf16_peak=(
            mfu(flops_per_token, tokens_per_s_per_device, bf16_peak) if fp8 else None
        ),
        mfu_vs_fp8_peak=figure if fp8 else None,
    )


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated CUDA memory, or this process's peak RSS on CPU.

    Allocated: the bytes of live tensors at their peak. It leaves out what the caching
    allocator holds besides them (freed blocks kept for reuse, fragmentation: see
    peak_memory_reserved_bytes) and everything outside the allocator (NCCL's buffers, the CUDA
    context, cuDNN/cuBLAS handles), which nvidia-smi counts too.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


def peak_memory_reserved_bytes(device: torch.device) -> int | None:
    """Peak CUDA memory the caching allocator held: allocated plus its cached free blocks and
    fragmentation, so what an out-of-memory comes from. NCCL's buffers and the CUDA context are
    still outside it. None on CPU, where there is no such allocator (RSS is all there is)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_reserved(device))
    return None


@dataclass
class StepRecord:
    step: int
    loss: float
    step_time_s: float
    tokens_per_s: float
    tokens_per_s_per_device: float
    model_tflops_per_device: float
    mfu: float | None
    memory_bytes: int
    timed: bool
    loss_scale: float | None = None  # fp16 only: halves on a step skipped for overflow
    # Run by an attempt after a restart (torchrun's) or a resume from a checkpoint.
    after_restart: bool = False
    # This step had already run before the failure; this line is its run again.
    repeated: bool = False
    # MoE models: how the step routed, over every rank (train/measure/routing.py).
    moe: dict | None = None

    @classmethod
    def measured(
        cls,
        *,
        step: int,
        loss: float,
        step_time_s: float,
        tokens_per_step: int,
        world_size: int,
        flops_per_token: float,
        peak_tflops: float | None,
        memory_bytes: int,
        timed: bool,
        loss_scale: float | None = None,
        after_restart: bool = False,
        repeated: bool = False,
        moe: dict | None = None,
    ) -> StepRecord:
        """Every derived figure of a step, computed once here for all sinks."""
        tokens_per_s = tokens_per_step / step_time_s
        per_device = tokens_per_s / world_size
        return cls(
            step=step,
            loss=loss,
            model_tflops_per_device=model_tflops_per_device(flops_per_token, per_device),
            mfu=mfu(flops_per_token, per_device, peak_tflops),
            step_time_s=step_time_s,
            tokens_per_s=tokens_per_s,
            tokens_per_s_per_device=per_device,
            memory_bytes=memory_bytes,
            timed=timed,
            loss_scale=loss_scale,
            after_restart=after_restart,
            repeated=repeated,
            moe=moe,
        )


def step_time_stats(step_times: list[float]) -> dict:
    return {
        "median": statistics.median(step_times),
        "min": min(step_times),
        "max": max(step_times),
    }


def format_step_line(r: StepRecord, total_steps: int) -> str:
    """One torchtitan-style log line per step."""
    mfu_text = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
    warm = ("" if r.timed else "  (warm-up)") + ("  (repeated)" if r.repeated else "")
    load = (r.moe or {}).get("load_max_over_mean")
    moe = f"  expert load max/mean {load:.2f}" if load else ""
    return (
        f"step {r.step:>4}/{total_steps}  loss {r.loss:8.4f}  "
        f"memory {r.memory_bytes / 2**30:6.2f}GiB  tps {r.tokens_per_s:,.0f}  "
        f"tps/device {r.tokens_per_s_per_device:,.0f}  "
        f"tflops {r.model_tflops_per_device:.3f}  mfu {mfu_text}{moe}{warm}"
    )
