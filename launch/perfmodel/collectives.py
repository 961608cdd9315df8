"""Time of one collective: an alpha-beta model on the part's links, ring or tree as NCCL picks.

A group of ``ranks`` has ``per_node`` of them in each of ``nodes`` nodes. Bandwidth (beta):
whatever the algorithm, each rank moves factor(op, n) x size bytes (nccl-tests' bus bytes:
2(n-1)/n for all-reduce, (n-1)/n for all-gather, reduce-scatter and all-to-all, 1 for
broadcast), and the slowest link sets the pace, so the bus bandwidth is

- inside one node: the link joining the group (NVLink through NVSwitch, PCIe, loopback);
- across nodes: min(the intra-node link, per_node x the NIC per GPU): a ring leaves a node
  once per channel, and NCCL spreads channels over the node's NICs, so a node sends as
  much as one rank does, through per_node rails (capped by the node's one link on an
  emulated cluster). One rank per node (hsdp's replicas): its own NIC.

Latency (alpha), NCCL's tuning model (src/graph/tuning.cc): a ring pays a base latency and
one hop latency per step, 2(n-1) steps for all-reduce and n-1 for the others, of which
2(N-1) resp. N-1 cross the network; a tree (all-reduce across nodes) pays
2((per_node-1) intra + log2(N) net) and runs at 0.9 of the ring's bus bandwidth. The faster
of the two is taken, as NCCL's tuner does. Not modelled: NVLink SHARP (NVLS) and CollNet,
protocol switches below ~64 KB, and contention between collectives running at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from launch.errors import ConfigError
from launch.perfmodel.hardware import (
    GLOO_EMULATED_ALPHA_S,
    RING_BASE_US,
    RING_STEP_US,
    TREE_BANDWIDTH_SHARE,
    TREE_BASE_US,
    TREE_STEP_US,
    Link,
    PartRates,
)
from train.spec.bus import COLLECTIVES, bus_factor

OPS = COLLECTIVES


@dataclass(frozen=True)
class CollectiveTime:
    op: str
    nbytes: int
    ranks: int
    nodes: int
    time_s: float
    algorithm: str  # ring | tree | none
    busbw_gbytes_per_s: float  # the model's bandwidth term, before latency

    @property
    def algbw_gbytes_per_s(self) -> float:
        return self.nbytes / self.time_s / 1e9 if self.time_s else 0.0

    @property
    def achieved_busbw_gbytes_per_s(self) -> float:
        """nccl-tests' busbw of this time (latency included): algbw x the bus factor."""
        return self.algbw_gbytes_per_s * bus_factor(self.op, self.ranks)


@dataclass(frozen=True)
class GroupLinks:
    """The links a group crosses and the bus bandwidth they allow."""

    intra: Link | None
    inter: Link | None
    busbw_bytes_per_s: float


def group_links(rates: PartRates, ranks: int, per_node: int) -> GroupLinks:
    nodes = max(1, ranks // max(1, per_node))
    intra = rates.link_inside(per_node) if per_node > 1 else None
    inter = rates.inter if nodes > 1 else None
    limits = []
    if intra is not None:
        limits.append(intra.gbytes_per_s)
    elif per_node > 1:
        raise ConfigError(
            "gpu.nvlink_gbytes_per_s_bidir", f"{rates.name}: no link between the ranks of a node"
        )
    if nodes > 1:
        if inter is None:
            raise ConfigError(
                "gpu.nic_gbits_per_s_per_gpu",
                f"{rates.name} has no NIC rate: it cannot be projected across nodes",
            )
        egress = per_node * inter.gbytes_per_s
        if rates.inter_node_cap_gbytes_per_s:
            egress = min(egress, rates.inter_node_cap_gbytes_per_s)
        limits.append(egress)
    return GroupLinks(intra, inter, min(limits) * 1e9)


def collective_time(
    op: str, nbytes: int, ranks: int, per_node: int, rates: PartRates
) -> CollectiveTime:
    """Seconds of one ``op`` of ``nbytes`` (nccl-tests' size) over ``ranks`` ranks."""
    factor = bus_factor(op, max(ranks, 1))
    nodes = max(1, ranks // max(1, per_node))
    if ranks <= 1 or nbytes <= 0:
        return CollectiveTime(op, nbytes, ranks, nodes, 0.0, "none", 0.0)
    links = group_links(rates, ranks, per_node)
    if rates.gloo is not None and op in rates.gloo:
        return _gloo_time(op, nbytes, ranks, nodes, per_node, factor, links, rates)
    beta = factor * nbytes / links.busbw_bytes_per_s
    if op == "all_to_all" and nodes > 1:
        # Each rank sends (n - per_node)/n of its buffer off-node, the rest over NVLink.
        off_node = (ranks - per_node) / ranks * nbytes / (links.busbw_bytes_per_s)
        on_node = 0.0
        if links.intra is not None:
            on_node = (per_node - 1) / ranks * nbytes / (links.intra.gbytes_per_s * 1e9)
        beta = max(off_node, on_node)
    ring = _ring_latency(op, ranks, nodes, links) + beta
    best, algorithm = ring, "ring"
    if op == "all_reduce" and nodes > 1:
        tree = _tree_latency(per_node, nodes, links) + beta / TREE_BANDWIDTH_SHARE
        if tree < ring:
            best, algorithm = tree, "tree"
    return CollectiveTime(op, nbytes, ranks, nodes, best, algorithm, links.busbw_bytes_per_s / 1e9)


def _gloo_time(
    op: str,
    nbytes: int,
    ranks: int,
    nodes: int,
    per_node: int,
    factor: float,
    links: GroupLinks,
    rates: PartRates,
) -> CollectiveTime:
    """CPU ranks (gloo over TCP): alpha + bus bytes / busbw, both measured per op on loopback
    (hardware.GLOO_LOOPBACK); across the emulated link its rate x TCP goodput and its own
    measured alpha (hardware.GLOO_EMULATED_ALPHA_S), the loopback's added where the group
    also has several ranks in a node."""
    cost = rates.gloo[op]
    busbw = cost.busbw_gbytes_per_s * 1e9 if per_node > 1 else math.inf
    alpha = cost.alpha_s if per_node > 1 else 0.0
    if nodes > 1:
        busbw = min(busbw, links.busbw_bytes_per_s)
        alpha += GLOO_EMULATED_ALPHA_S
    time_s = alpha + factor * nbytes / busbw
    return CollectiveTime(op, nbytes, ranks, nodes, time_s, "gloo", busbw / 1e9)


def _ring_latency(op: str, ranks: int, nodes: int, links: GroupLinks) -> float:
    if op == "all_reduce":
        steps, inter_steps = 2 * (ranks - 1), 2 * (nodes - 1)
    else:
        steps, inter_steps = ranks - 1, nodes - 1
    intra_step = links.intra.step_latency_s if links.intra else 0.0
    net_step = links.inter.step_latency_s if links.inter else 0.0
    return RING_BASE_US * 1e-6 + (steps - inter_steps) * intra_step + inter_steps * net_step


def _tree_latency(per_node: int, nodes: int, links: GroupLinks) -> float:
    intra = TREE_STEP_US.get(links.intra.kind, 0.0) * 1e-6 if links.intra else 0.0
    net = TREE_STEP_US["net"] * 1e-6
    if links.inter is not None and links.inter.step_latency_s > RING_STEP_US["net"] * 1e-6:
        net = links.inter.step_latency_s  # gloo over TCP: its own hop latency
    return TREE_BASE_US * 1e-6 + 2 * ((per_node - 1) * intra + math.log2(nodes) * net)


def group_geometry(size: int, stride: int, per_node_world: int) -> int:
    """Ranks per node of a mesh group of ``size`` ranks spaced ``stride`` apart, when nodes
    hold ``per_node_world`` consecutive ranks (train/parallel/mesh.py: rank-major mesh)."""
    if size <= 1:
        return 1
    if stride >= per_node_world:
        return 1
    return max(1, min(size, per_node_world // stride))
