"""What the device a rank runs on really has (fp8 libraries, compute capability, native CPU
bf16): the torch half of train/spec/devices.py."""

from __future__ import annotations

import torch

from train.spec.devices import MachineProbe, machine_probe


def probe_machine(device: torch.device) -> MachineProbe:
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    return machine_probe(device.type, capability)
