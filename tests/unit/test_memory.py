"""Memory per rank from the tensors themselves: each tensor once, local shards only.

(Sharded layouts against DDP, measured in real 2-rank runs, are in tests/test_parallel.py.)
"""

from __future__ import annotations

import torch

from train.measure.held_memory import (
    HeldMemory,
    memory_summary,
    optimizer_param_tensors,
    optimizer_state_tensors,
    tensor_bytes,
)


def test_each_tensor_counts_once_and_excluded_ones_not_at_all():
    a = torch.zeros(10, dtype=torch.float32)
    b = torch.zeros(3, dtype=torch.bfloat16)
    assert tensor_bytes([a, b, a]) == 40 + 6
    assert tensor_bytes([a, b], exclude=[a]) == 6
    # Views of different parts of one buffer are different tensors; each counts its part.
    flat = torch.zeros(8)
    assert tensor_bytes([flat[:4], flat[4:]]) == 32


def test_adam_state_is_two_moments_per_parameter():
    model = torch.nn.Linear(16, 8, bias=False)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(2, 16)).sum().backward()
    optimizer.step()
    state = tensor_bytes(optimizer_state_tensors(optimizer))
    assert state - 2 * 4 * 16 * 8 in (4, 8)  # plus the step counter, a scalar tensor
    params = list(model.parameters())
    # A torch optimizer steps the model's own parameters: no master copy.
    assert tensor_bytes(optimizer_param_tensors(optimizer), exclude=params) == 0


def test_summary_without_a_process_group_is_this_rank():
    held = HeldMemory(param_bytes=4, grad_bytes=4, optimizer_state_bytes=8, master_weight_bytes=0)
    assert memory_summary(held, peak_bytes=100) == {
        "param_bytes": 4,
        "grad_bytes": 4,
        "optimizer_state_bytes": 8,
        "master_weight_bytes": 0,
        "total_bytes": 16,
        "peak_bytes": 100,
        "peak_reserved_bytes": None,  # CPU: no caching allocator, null rather than a guess
    }
