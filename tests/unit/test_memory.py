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


def test_a_one_rank_shard_dim_still_holds_gathered_copies_and_no_ddp_buckets():
    """torch's world-size-1 path copies each FSDP2 unit into its unsharded tensor, as a
    gather would: fsdp on one rank and ep's units (a shard dim of one) hold the same
    transient blocks as a sharded rank, and ep across replicas holds no DDP bucket copy."""
    from launch.perfmodel.memory import transient_bytes
    from tests.conftest import model_config
    from train.spec.degrees import Degrees, LayoutPlan

    m = model_config(n_experts=8, top_k=2, expert_ffn_hidden=64, moe_every=1)
    one, two = (LayoutPlan("fsdp", Degrees(1, n, 1), False, []) for n in (1, 2))
    assert transient_bytes(m, one, "bf16") > 0
    replicas = LayoutPlan("ep", Degrees(2, 1, 1, ep=2), False, [])
    held = transient_bytes(m, replicas, "bf16")
    assert 0 < held < transient_bytes(m, two, "bf16")  # gathered blocks, 2 bytes: not buckets
