"""FSDP2 (torch ``fully_shard``): each block is one unit that is all-gathered when used.

Every block is its own unit and the root holds the rest (embedding, final norm, head). A unit
is all-gathered before its forward, freed after it, all-gathered again for backward, and its
gradients reduce-scattered; the root stays gathered between its forward and backward, since
backward needs it right away. On a 2-D mesh (dp_replicate, dp_shard) this is HSDP: shards
inside dp_shard, gradients all-reduced across dp_replicate after the reduce-scatter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh) -> None:
    """Shard ``model`` in place: one unit per block, then the root."""
    for block in model.layers:
        fully_shard(block, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)


@contextlib.contextmanager
def fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    """Accumulate unsharded gradients locally: no reduce-scatter until the last micro-step."""
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
