"""DistributedDataParallel: whole model on every rank, gradients all-reduced in buckets."""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def apply_ddp(model: nn.Module, device: torch.device, bucket_mb: float) -> nn.Module:
    device_ids = [device.index] if device.type == "cuda" else None
    # The only buffers are the rope tables, computed from the config and equal on every rank:
    # re-broadcasting them before every forward would be communication for nothing.
    # (torch 2.13 renamed the switch; older versions only know broadcast_buffers.)
    params = inspect.signature(DistributedDataParallel).parameters
    no_buffer_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in params
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        model, device_ids=device_ids, bucket_cap_mb=bucket_mb, **no_buffer_sync
    )
