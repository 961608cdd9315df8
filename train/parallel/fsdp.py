"""FSDP2 (torch ``fully_shard``): each block is one unit that is all-gathered when used.

Every block is its own unit and the root holds the rest (embedding, final norm, head). A unit
is all-gathered before its forward, freed after it, all-gathered again for backward, and its
gradients reduce-scattered; the root stays gathered between its forward and backward, since
backward needs it right away. On a 2-D mesh (dp_replicate, dp_shard) this is HSDP: shards
inside dp_shard, gradients all-reduced across dp_replicate after the reduce-scatter.

Under bf16/fp16/fp8 the units are gathered in the compute dtype (as torchtitan), so the
all-gathers move 16-bit parameters and each block computes with them; gradients are
reduce-scattered (and HSDP-all-reduced) in parallel.fsdp_reduce_dtype, fp32 by default. The
fp32 shards remain the master weights the optimizer steps.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Shard

from train.model.moe import moe_blocks

# Resolved precision -> the dtype FSDP2 gathers parameters in (fp8 layers left out of fp8 run
# in bf16, and torchao's fp8 layers gather in fp8 only with its float8 all-gather).
COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp16": torch.float16}
REDUCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # parallel.fsdp_reduce_dtype


def mixed_precision_policy(precision: str, reduce_dtype: str = "fp32") -> MixedPrecisionPolicy:
    """FSDP2's policy for a resolved precision: none for fp32/tf32 (everything in fp32)."""
    if reduce_dtype not in REDUCE_DTYPES:
        raise ValueError(
            f"parallel.fsdp_reduce_dtype: {reduce_dtype!r} is not one of {', '.join(REDUCE_DTYPES)}"
        )
    if precision not in COMPUTE_DTYPES:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(
        param_dtype=COMPUTE_DTYPES[precision],
        reduce_dtype=REDUCE_DTYPES[reduce_dtype],
        # The blocks' inputs stay as they are: the residual stream is already in param_dtype
        # (the embedding's output), and casting would round the fp32 rope tables to 16 bits.
        cast_forward_inputs=False,
    )


def apply_fsdp(
    model: nn.Module,
    dp_mesh: DeviceMesh,
    policy: MixedPrecisionPolicy | None = None,
    *,
    expert_dim: int = 0,
) -> None:
    """Shard ``model`` in place: one unit per block, then the root. ``expert_dim``: the dim a
    mixture of experts' routed-expert tensors (experts, out, in) are sharded on
    (train/spec/shapes.py expert_shard_dim): 1 where the shard group outnumbers the experts,
    as torchtitan does without EP, since FSDP2 pads dim 0 to the shard count and every rank
    would gather a shard group's worth of experts (Mixtral's 8 on 32 ranks: 32)."""
    policy = policy or MixedPrecisionPolicy()
    for block in model.layers:
        experts = {id(p) for moe in moe_blocks(block) for p in moe.experts.parameters()}
        placement = None
        if expert_dim and experts:

            def placement(param: nn.Parameter, experts: set[int] = experts) -> Shard | None:
                return Shard(expert_dim) if id(param) in experts else None

        fully_shard(block, mesh=dp_mesh, mp_policy=policy, shard_placement_fn=placement)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy)


@contextlib.contextmanager
def fsdp_accumulate(model: nn.Module) -> Iterator[None]:
    """A non-final micro-step: reduce-scatter as every micro-step does (FSDP2 adds each
    shard's result to the last), but leave HSDP's all-reduce across the replicas to the last
    micro-step (FSDP2 keeps the partial shard until then). Without it a micro-step would keep
    the whole model's unsharded gradients, upcast to fp32, until the step's last (FSDP2's
    no-sync accumulation): 4 bytes per parameter of the model on every rank, which sharding
    exists to avoid. torchtitan reduce-scatters every micro-step too."""
    model.set_requires_all_reduce(False)
    try:
        yield
    finally:
        model.set_requires_all_reduce(True)


@contextlib.contextmanager
def fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    """No reduction at all: the no-sync twin (train/measure/profiling.py), whose gradients
    are never used."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def fsdp_sync_contexts(model: nn.Module, reduce_each_micro_step: bool):
    """(no_sync, accumulate) for train/parallel/layout.py's TorchLayout: the twin's context,
    and a non-final micro-step's (None: no_sync's, the unsharded accumulation that
    parallel.fsdp_reduce_every_micro_step=false asks for)."""
    accumulate = functools.partial(fsdp_accumulate, model) if reduce_each_micro_step else None
    return functools.partial(fsdp_no_sync, model), accumulate
