"""Counting the bytes of collectives, for tests/integration/test_parallel.py (used by
parallel_ranks.py).

Collectives are seen in a TorchDispatchMode: every collective, whether issued from Python
(FSDP2, DeepSpeed), from C++ (DDP's reducer) or as a functional collective (DTensor), is
dispatched as a ``c10d`` or ``_c10d_functional`` op, so one wrapper sees them all. Sizes
follow the accounting convention of train/spec/traffic.py.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

from train.runtime import rank_step, worker
from train.spec.config import load_run_config

# op name -> (kind, how its size is read from the op's arguments)
SIZES = {
    "c10d.allreduce_": ("all_reduce", lambda a: _nbytes(a[0])),
    "c10d.allreduce_coalesced_": ("all_reduce", lambda a: _nbytes(a[0])),
    "c10d._allgather_base_": ("all_gather", lambda a: _nbytes(a[0])),
    "c10d.allgather_": ("all_gather", lambda a: _nbytes(a[0])),
    "c10d.allgather_into_tensor_coalesced_": ("all_gather", lambda a: _nbytes(a[0])),
    "c10d._reduce_scatter_base_": ("reduce_scatter", lambda a: _nbytes(a[1])),
    "c10d.reduce_scatter_": ("reduce_scatter", lambda a: _nbytes(a[1])),
    "c10d.reduce_scatter_tensor_coalesced_": ("reduce_scatter", lambda a: _nbytes(a[1])),
    "_c10d_functional.all_reduce": ("all_reduce", lambda a: _nbytes(a[0])),
    "_c10d_functional.all_reduce_": ("all_reduce", lambda a: _nbytes(a[0])),
    "_c10d_functional.all_reduce_coalesced": ("all_reduce", lambda a: _nbytes(a[0])),
    "_c10d_functional.all_gather_into_tensor": ("all_gather", lambda a: _nbytes(a[0]) * a[1]),
    "_c10d_functional.all_gather_into_tensor_out": (
        "all_gather",
        lambda a: _nbytes(a[0]) * a[1],
    ),
    "_c10d_functional.reduce_scatter_tensor": ("reduce_scatter", lambda a: _nbytes(a[0])),
    # Point-to-point (pipelines): counted at the sender, as train/spec/traffic.py does.
    "c10d.send": ("send_recv", lambda a: _nbytes(a[0])),
    # All-to-all (expert parallelism): the bytes this rank sends, its input.
    "_c10d_functional.all_to_all_single": ("all_to_all", lambda a: _nbytes(a[0])),
    "c10d.alltoall_base_": ("all_to_all", lambda a: _nbytes(a[1])),
}
# Bookkeeping ops of functional collectives move nothing; a receive mirrors a counted send.
NOT_COLLECTIVES = ("wait_tensor", "_wrap_tensor_autograd", "recv_", "recv_any_source_")


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return sum(_nbytes(v) for v in value)


class CollectiveBytes(TorchDispatchMode):
    """Sums the bytes of the collectives dispatched while active, per kind."""

    def __init__(self):
        super().__init__()
        self.bytes = Counter()
        self.unknown: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # A DTensor op: let DTensor run first and desugar into plain ops and the collectives
        # it needs (a redistribute, the vocab-parallel loss's reductions), which come back
        # through this mode; seen here, they would run with the mode off and go uncounted.
        if any(issubclass(t, DTensor) for t in types):
            return NotImplemented
        if func.namespace in ("c10d", "_c10d_functional"):
            name = f"{func.namespace}.{func._opname}"
            if name in SIZES:
                kind, size = SIZES[name]
                self.bytes[kind] += size(args)
            elif func._opname not in NOT_COLLECTIVES:
                self.unknown.append(name)
        return func(*args, **(kwargs or {}))


class CountThirdStep:
    """Stands in for rank_step.train_step: counts the collectives of its third call only.

    The first two steps hold one-time set-up: FSDP2's lazy init in the first, DDP's bucket
    rebuild (a broadcast of the bucket order from rank 0) in the second.
    """

    def __init__(self, train_step):
        self.train_step, self.calls, self.counted = train_step, 0, None

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls != 3:
            return self.train_step(*args, **kwargs)
        with CollectiveBytes() as self.counted:
            return self.train_step(*args, **kwargs)


@contextlib.contextmanager
def counting_third_step() -> Iterator[CountThirdStep]:
    """rank_step.train_step replaced by a CountThirdStep while the block runs (RankSteps
    looks train_step up in its module at each step)."""
    real = rank_step.train_step
    counter = CountThirdStep(real)
    rank_step.train_step = counter
    try:
        yield counter
    finally:
        rank_step.train_step = real


def run_counted(path, rank) -> dict:
    """The run whose config.yaml is ``path``, on this rank, its third step's collectives
    counted: {"bytes": {kind: bytes}, "unknown": [...]}. Every rank waits for the others."""
    with counting_third_step() as counter:
        worker.run_rank(load_run_config(path), path.parent, rank)
    dist.barrier()
    return {"bytes": dict(counter.counted.bytes), "unknown": counter.counted.unknown}
