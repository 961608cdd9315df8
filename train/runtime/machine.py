"""What the device a rank runs on really has (fp8 libraries, compute capability, native CPU
bf16): the torch half of train/spec/devices.py."""

from __future__ import annotations

import torch

from train.spec.devices import MachineProbe, cpu_has_native_bf16, module_imports


def probe_machine(device: torch.device) -> MachineProbe:
    capability = None
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
    return MachineProbe(
        te_available=device.type == "cuda" and module_imports("transformer_engine.pytorch"),
        torchao_available=module_imports("torchao.float8"),
        compute_capability=capability,
        cpu_native_bf16=device.type == "cpu" and cpu_has_native_bf16(),
    )
