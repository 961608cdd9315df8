"""gpu=auto: map the local device (name, memory) to a profile in conf/gpu/."""

from __future__ import annotations

import copy

from launch.conf_tree import group_choices, load_gpu_profile
from train.config import GpuConfig, PeakTflops
from train.hardware import name_matches


def match_profile(device_name: str, memory_gib: float | None) -> str | None:
    """The profile whose name patterns match the device name (and memory range, if it has one)."""
    for name in group_choices("gpu"):
        if name in ("auto", "cpu"):
            continue
        profile = load_gpu_profile(name)
        if not name_matches(profile.device_name_patterns, device_name):
            continue
        low_high = profile.memory_gib_range
        if low_high and memory_gib is not None and not low_high[0] <= memory_gib < low_high[1]:
            continue
        return name
    return None


def unknown_profile(device_name: str) -> GpuConfig:
    """A device with no profile gets no peak: MFU is null rather than another card's figure."""
    return GpuConfig(
        name="unknown",
        display_name=device_name,
        peak_tflops=PeakTflops(),
        source="no profile in conf/gpu matches this device",
        verified=False,
    )


def detect_local() -> tuple[GpuConfig, str]:
    """(profile, what was detected) for the machine the driver runs on."""
    import torch

    if not torch.cuda.is_available():
        return load_gpu_profile("cpu"), "no CUDA device: cpu"
    props = torch.cuda.get_device_properties(0)
    memory_gib = props.total_memory / 2**30
    name = match_profile(props.name, memory_gib)
    detected = f"{props.name} ({memory_gib:.0f} GiB)"
    if name is None:
        return unknown_profile(props.name), f"{detected}: no matching profile, MFU will be null"
    return load_gpu_profile(name), f"{detected}: profile {name}"


def local_device_name() -> tuple[str, str]:
    """(device type, device name) of the machine the driver runs on."""
    import torch

    from train.distributed import cpu_model_name

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", cpu_model_name()


def with_measured_peaks(gpu: GpuConfig, cpu_threads: int) -> tuple[GpuConfig, str | None]:
    """Attach `python -m launch.mamf`'s cached ceiling when the profile describes this machine.

    The cpu profile has no datasheet peak: a measurement becomes its peak, so CPU runs get an
    MFU from a number that was measured rather than invented.
    """
    from launch.mamf import cache_path, load_measured
    from train.hardware import profile_mismatch

    device_type, device_name = local_device_name()
    if profile_mismatch(gpu, device_type, device_name):
        return gpu, None
    threads = cpu_threads if device_type == "cpu" else None
    measured = load_measured(device_name, threads)
    if not measured:
        return gpu, None
    source = f"launch.mamf on {measured['device_name']}, {measured['measured_at']}"
    gpu = copy.deepcopy(gpu)
    for precision, tflops in measured["best_tflops"].items():
        setattr(gpu.measured_peak_tflops, precision, tflops)
        if gpu.name == "cpu":
            setattr(gpu.peak_tflops, precision, tflops)
    gpu.measured_source = source
    return gpu, f"measured matmul ceiling from {cache_path(device_name, threads)}"
