"""gpu=auto: map the local device (name, memory) to a profile in conf/gpu/."""

from __future__ import annotations

import re

from launch.conf_tree import group_choices, load_gpu_profile
from train.config import GpuConfig, PeakTflops


def match_profile(device_name: str, memory_gib: float | None) -> str | None:
    """The profile whose name patterns match the device name (and memory range, if it has one)."""
    for name in group_choices("gpu"):
        if name in ("auto", "cpu"):
            continue
        profile = load_gpu_profile(name)
        # Whole words only: "H20" must not claim an "H200".
        if not any(
            re.search(rf"\b{re.escape(p)}\b", device_name) for p in profile.device_name_patterns
        ):
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
