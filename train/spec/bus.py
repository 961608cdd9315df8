"""nccl-tests' bus bandwidth: the bytes a rank moves over its links per byte of buffer.

For a collective over n ranks with nccl-tests' "size" (the whole buffer: an all-gather's
output, a reduce-scatter's input), a ring moves size x factor through each rank's link, so
busbw = algbw x factor is the figure comparable with a link's rate across group sizes
(nccl-tests doc/PERFORMANCE.md). The comm benchmark, the breakdown's achieved bandwidth and
the performance model all read this table.
"""

from __future__ import annotations

from collections.abc import Callable

BUS_FACTORS: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
}
COLLECTIVES = tuple(BUS_FACTORS)


def bus_factor(op: str, n: int) -> float:
    if op not in BUS_FACTORS:
        raise ValueError(f"unknown collective {op!r}; one of {', '.join(COLLECTIVES)}")
    return BUS_FACTORS[op](max(n, 1))
