"""What a machine has and which gpu profile describes it, without importing torch: the
record a rank's probe fills (train/runtime/machine.py), import checks for the optional
libraries, and device-name matching (gpu=auto, profile mismatch warnings)."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import re
from dataclasses import dataclass

from train.spec.config import GpuConfig

# Ada and Hopper have fp8 tensor cores: the compute capability fp8 GEMMs need.
FP8_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class MachineProbe:
    te_available: bool
    torchao_available: bool
    compute_capability: tuple[int, int] | None  # None without CUDA
    cpu_native_bf16: bool


def machine_probe(device_type: str, compute_capability: tuple[int, int] | None) -> MachineProbe:
    """What a device of ``device_type`` (with this CUDA compute capability) has here: the
    facts precision=auto decides from (train/spec/precision.py).

    The fp8 libraries are imported (2 s for torchao, more than torch itself) only where auto
    could pick fp8: a CUDA device with fp8 tensor cores. Elsewhere auto never asks, and an
    explicit fp8 run imports its library when it swaps the layers (train/runtime/numerics.py).
    """
    fp8_device = device_type == "cuda" and (compute_capability or (0, 0)) >= FP8_CAPABILITY
    return MachineProbe(
        te_available=fp8_device and module_imports("transformer_engine.pytorch"),
        torchao_available=fp8_device and module_imports("torchao.float8"),
        compute_capability=compute_capability,
        cpu_native_bf16=device_type == "cpu" and cpu_has_native_bf16(),
    )


def module_imports(name: str) -> bool:
    """True when the module imports (find_spec alone misses broken installs)."""
    if importlib.util.find_spec(name.split(".")[0]) is None:
        return False
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any import failure means "not usable here"
        return False
    return True


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def peaks_describe(gpu: GpuConfig, device_type: str) -> bool:
    """Whether the profile's peaks can be this device's: a GPU profile's are no CPU's, nor the
    cpu profile's a GPU's (an h100_sxm profile on a CPU run, as the fp8 emulation tests use,
    gave an MFU of 0.0055% against 989 TFLOP/s: another part's figure)."""
    return (gpu.name == "cpu") == (device_type == "cpu")


def profile_mismatch(gpu: GpuConfig, device_type: str, device_name: str) -> str | None:
    """A warning when the requested profile does not describe this device, else None."""
    if gpu.name == "unknown":
        return f"no gpu profile matches {device_name!r}: MFU is null"
    if device_type == "cpu":
        if gpu.name != "cpu":
            return (
                f"gpu={gpu.name} was requested but this run is on CPU ({device_name}): MFU is null"
            )
        return None
    if gpu.name == "cpu":
        return f"gpu=cpu was requested but this run is on {device_name}"
    if not name_matches(gpu.device_name_patterns, device_name, gpu.device_name_excludes):
        return (
            f"gpu={gpu.name} was requested but the device is {device_name}: "
            f"MFU uses {gpu.name}'s peak"
        )
    if mig_slice(device_name) is not None:
        return (
            f"the device is a MIG slice ({device_name}) of the chip gpu={gpu.name} describes: "
            f"MFU uses the whole chip's peak, which the slice has only a part of"
        )
    return None


# CUDA names a MIG instance after its chip, then the slice: "NVIDIA A100-SXM4-40GB MIG 1g.5gb".
_MIG = re.compile(r"\bMIG\b\s*(\S*)")


def mig_slice(device_name: str) -> str | None:
    """The MIG profile ("1g.5gb", or "" if unnamed) when the device is a MIG instance, else
    None: a slice of a chip has a fraction of its SMs and memory, so no chip's peak fits it."""
    match = _MIG.search(device_name)
    return None if match is None else match.group(1)


def name_matches(patterns: list[str], device_name: str, excludes: list[str] = ()) -> bool:
    """Whole words only: "H20" must not claim an "H200"; nor "H800" an "H800 PCIe" when the
    profile excludes "PCIe" (another part with another peak)."""

    def has(word: str) -> bool:
        return re.search(rf"\b{re.escape(word)}\b", device_name, re.IGNORECASE) is not None

    return any(has(p) for p in patterns) and not any(has(x) for x in excludes)


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
