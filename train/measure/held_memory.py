"""Memory per rank, counted from the tensors the rank holds.

Four kinds: parameters, gradients, optimizer state (Adam's moments and step counters) and
master weights (fp32 copies the optimizer steps when they are not the model's own parameters,
as in DeepSpeed's ZeRO). A DTensor counts its local shard only; a tensor listed twice counts
once. Bytes count wherever they live: under ZeRO-Offload the optimizer state, master weights
and gradients are in host memory and still count (the point of offload is where, not how
much). Peak memory comes from the allocator (CUDA: allocated, and reserved, which adds the
allocator's cache and fragmentation; NCCL's buffers and the CUDA context are in neither) or the
process RSS (CPU), which on a CPU also holds the Python runtime and torch itself and so barely
moves between layouts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


@dataclass(frozen=True)
class HeldMemory:
    param_bytes: int
    grad_bytes: int  # at the end of backward, the moment every layout holds its gradients
    optimizer_state_bytes: int
    master_weight_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            self.param_bytes
            + self.grad_bytes
            + self.optimizer_state_bytes
            + self.master_weight_bytes
        )


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The part of ``tensor`` this rank stores: a DTensor's local shard, else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def tensor_bytes(tensors: Iterable[torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the local parts of ``tensors``, each counted once, skipping ``exclude``."""
    seen = {_identity(local_tensor(t)) for t in exclude}
    total = 0
    for tensor in tensors:
        local = local_tensor(tensor)
        key = _identity(local)
        if key in seen:
            continue
        seen.add(key)
        total += local.numel() * local.element_size()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]


def optimizer_param_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def max_over_ranks(values: dict[str, int]) -> dict[str, int]:
    """Each value's maximum over all ranks: the report shows the busiest rank."""
    if not dist.is_initialized():
        return dict(values)
    # On the rank's device: NCCL reduces CUDA tensors only; gloo takes CPU ones.
    device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else None
    tensor = torch.tensor(list(values.values()), dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return dict(zip(values, (int(v) for v in tensor.tolist()), strict=True))


def memory_summary(
    held: HeldMemory, peak_bytes: int, peak_reserved_bytes: int | None = None
) -> dict[str, int | None]:
    """summary.json's ``memory``: the busiest rank's bytes of each kind, then its peaks.

    ``peak_bytes`` is allocated memory on CUDA (RSS on CPU), ``peak_reserved_bytes`` what the
    CUDA caching allocator held (None on CPU, and then recorded as null).
    """
    values = {**asdict(held), "total_bytes": held.total_bytes, "peak_bytes": peak_bytes}
    if peak_reserved_bytes is not None:  # the same on every rank: all CUDA or all CPU
        values["peak_reserved_bytes"] = peak_reserved_bytes
    summary: dict[str, int | None] = max_over_ranks(values)
    summary.setdefault("peak_reserved_bytes", None)
    return summary


def _identity(tensor: torch.Tensor) -> tuple[int, int, torch.dtype]:
    return (tensor.data_ptr(), tensor.numel(), tensor.dtype)


def _nccl() -> bool:
    return dist.get_backend() == "nccl"
