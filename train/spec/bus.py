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


def message_sizes(min_bytes: int, max_bytes: int) -> list[int]:
    """The comm benchmark's sweep: sizes doubling from min_bytes to max_bytes (nccl-tests'
    -b/-e/-f 2). Here, torch-free, so the driver counts the points the ranks will time."""
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= 2
    return sizes


def scope_labels(nodes: int, per_node: int) -> list[str]:
    """The groups the comm benchmark times, in order: one node's ranks, one rank per node,
    or (several nodes of several ranks) all ranks first, then each of the two."""
    if nodes == 1:
        return ["intra-node"]
    if per_node == 1:
        return ["inter-node"]
    return ["world", "intra-node", "inter-node"]
