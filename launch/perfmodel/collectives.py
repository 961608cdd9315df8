"""Time of one collective on the part's links, with the algorithm and protocol NCCL would pick.

A group of ``ranks`` has ``per_node`` of them in each of ``nodes`` nodes. Every algorithm is
timed as NCCL's tuner times it (src/graph/tuning.cc; constants in nccl_tuning.py): a latency
(base + hops x per-hop latency of the link kind and protocol) plus bytes over a bandwidth,
and the fastest (algorithm, protocol) is taken:

- ring (every collective): each rank moves nccl-tests' bus bytes, factor(op, n) x size
  (2(n-1)/n for all-reduce, (n-1)/n for all-gather and reduce-scatter, 1 for broadcast), at
  the slowest link's rate: inside a node the link joining the group (NVLink through an
  NVSwitch, PCIe, loopback); across nodes min(that, per_node x the NIC per GPU): a ring leaves
  a node once per channel and NCCL spreads its channels over the node's NICs (capped by an
  emulated node's one link). LL halves that rate (capped), LL128 takes 120/128 of it;
- tree (all-reduce across nodes): 0.92 of the ring's rate, log-deep across nodes;
- NVLS (all-reduce inside a node on an NVSwitch Hopper part): the switch reduces, so each
  rank moves (n+1)/n x size per direction (nccl #1083, nccl-tests #212: algbw = busbw x n/(n+1))
  at the NVLink rate x NCCL's NVLS efficiency (0.85);
- NVLS-tree (all-reduce across such nodes): NVLS inside, and across nodes each rank carries
  1/per_node of the node's data on its own NIC, once each way with 2 nodes and twice in a
  deeper tree (tuning.cc doubles the inter-node rate "for the 2 node case of NVLSTree"), so
  4+ nodes fall below 2;
- all-to-all: inside a node (n-1)/n x size over NVLink; across nodes each rank sends the
  share bound off its node through its own NIC rail and the rest over NVLink, whichever is
  slower (nccl-tests' all-to-all busbw across N nodes ~ N/(N-1) x the NIC per GPU);
- send_recv (pipeline stages): one transfer over NVLink or, between nodes, the rank's NIC.

Not modelled: CollNet/IB SHARP, PAT, contention between collectives running at once, and
fabric congestion at scale (published busbw at 4 to 248 nodes stays within ~10% of the 4-node
figure: docs/performance-model.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from launch.errors import ConfigError
from launch.perfmodel import nccl_tuning as nccl
from launch.perfmodel.hardware import GLOO_EMULATED_ALPHA_S, Link, PartRates
from train.spec.bus import COLLECTIVES, bus_factor

OPS = COLLECTIVES
POINT_TO_POINT = "send_recv"
# NCCL channels (one SM each) a collective occupies while it runs: 24 for ring and tree (the
# channel count NCCL logs on 8 x A100, nccl-tests #100, and 8 x H100, nccl #1259), 16 for
# NVLS (its default, NCCL maintainer in nccl #1649). overlap.py charges them to compute.
CHANNEL_SMS = {"ring": 24, "tree": 24, "nvls": 16, "nvls_tree": 16, "p2p": 8}


@dataclass(frozen=True)
class CollectiveTime:
    op: str
    nbytes: int
    ranks: int
    nodes: int
    time_s: float
    algorithm: str  # ring | tree | nvls | nvls_tree | p2p | gloo | none
    busbw_gbytes_per_s: float  # the bandwidth term's bus bandwidth, before latency
    protocol: str = "simple"  # ll | ll128 | simple (NCCL), gloo, none

    @property
    def algbw_gbytes_per_s(self) -> float:
        return self.nbytes / self.time_s / 1e9 if self.time_s else 0.0

    @property
    def achieved_busbw_gbytes_per_s(self) -> float:
        """nccl-tests' busbw of this time (latency included): algbw x the bus factor."""
        factor = 1.0 if self.op == POINT_TO_POINT else bus_factor(self.op, self.ranks)
        return self.algbw_gbytes_per_s * factor

    @property
    def sms(self) -> int:
        """SMs NCCL's channels hold while this runs (0 off the GPU)."""
        return CHANNEL_SMS.get(self.algorithm, 0)


@dataclass(frozen=True)
class GroupLinks:
    """The links a group crosses and the ring's bus bandwidth they allow."""

    intra: Link | None
    inter: Link | None
    busbw_bytes_per_s: float
    nic_per_rank_bytes_per_s: float | None  # one rank's share of its node's egress


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
    nic = None
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
        nic = egress / per_node * 1e9
    return GroupLinks(intra, inter, min(limits) * 1e9, nic)


def collective_time(
    op: str, nbytes: int, ranks: int, per_node: int, rates: PartRates
) -> CollectiveTime:
    """Seconds of one ``op`` of ``nbytes`` (nccl-tests' size; send_recv: the bytes sent) over
    ``ranks`` ranks, ``per_node`` of them in each node."""
    nodes = max(1, ranks // max(1, per_node))
    if ranks <= 1 or nbytes <= 0:
        return CollectiveTime(op, nbytes, ranks, nodes, 0.0, "none", 0.0, "none")
    links = group_links(rates, ranks, per_node)
    if rates.gloo is not None:
        cost_op = "all_gather" if op in (POINT_TO_POINT, "all_to_all", "broadcast") else op
        return _gloo_time(op, cost_op, nbytes, ranks, nodes, per_node, links, rates)
    if op == POINT_TO_POINT:
        return _send_recv(nbytes, nodes, links)
    if op == "all_to_all":
        return _all_to_all(nbytes, ranks, per_node, nodes, links)
    candidates = _ring(op, nbytes, ranks, per_node, nodes, links, rates.generation)
    if op == "all_reduce":
        candidates += _tree(nbytes, ranks, per_node, nodes, links, rates.generation)
        candidates += _nvls(nbytes, per_node, nodes, links, rates)
    best = min(candidates, key=lambda c: c.time_s)
    return CollectiveTime(op, nbytes, ranks, nodes, *best.as_tuple())


@dataclass(frozen=True)
class _Candidate:
    time_s: float
    algorithm: str
    busbw_bytes_per_s: float
    protocol: str

    def as_tuple(self) -> tuple[float, str, float, str]:
        return self.time_s, self.algorithm, self.busbw_bytes_per_s / 1e9, self.protocol


def _link_kind(link: Link | None) -> str:
    return link.kind if link is not None and link.kind in ("nvlink", "pcie") else "pcie"


def _ring(
    op: str,
    nbytes: int,
    ranks: int,
    per_node: int,
    nodes: int,
    links: GroupLinks,
    generation: str | None,
) -> list[_Candidate]:
    """The ring in each protocol: NCCL's latency (base + a hop per step, network hops at the
    network's latency, the tree's when one rank per node) plus bus bytes over its rate."""
    steps = 2 * (ranks - 1) if op == "all_reduce" else ranks - 1
    inter_steps = (2 if op == "all_reduce" else 1) * (nodes - 1)
    factor = bus_factor(op, ranks) * nbytes
    out = []
    for protocol in nccl.PROTOCOLS:
        intra = nccl.hw_latency_s(_link_kind(links.intra), "ring", protocol)
        net = nccl.hw_latency_s("net", "tree" if per_node == 1 else "ring", protocol)
        if nodes > 1 and protocol == "simple":
            intra = max(intra, 3 * nccl.NET_OVERHEAD_US * nccl.US)
        latency = nccl.base_latency_s("ring", protocol)
        latency += (steps - inter_steps) * intra + inter_steps * net
        bw = nccl.ring_protocol_bandwidth(links.busbw_bytes_per_s, protocol, generation, nodes)
        out.append(_Candidate(latency + factor / bw, "ring", bw, protocol))
    return out


def _tree(
    nbytes: int, ranks: int, per_node: int, nodes: int, links: GroupLinks, generation: str | None
) -> list[_Candidate]:
    """NCCL's tree all-reduce across nodes: a chain inside each node, a double binary tree
    across them (latency 2((per_node - 1) intra + log2(nodes) net hops))."""
    if nodes == 1:
        return []
    factor = bus_factor("all_reduce", ranks) * nbytes
    out = []
    for protocol in nccl.PROTOCOLS:
        hops = (per_node - 1) * nccl.hw_latency_s(_link_kind(links.intra), "tree", protocol)
        hops += nccl.log2_nodes(nodes) * nccl.hw_latency_s("net", "tree", protocol)
        latency = nccl.base_latency_s("tree", protocol) + 2 * hops
        bw = nccl.tree_protocol_bandwidth(links.busbw_bytes_per_s, protocol, generation, nodes)
        out.append(_Candidate(latency + factor / bw, "tree", bw, protocol))
    return out


def _nvls(
    nbytes: int, per_node: int, nodes: int, links: GroupLinks, rates: PartRates
) -> list[_Candidate]:
    """NVLink SHARP inside a node, NVLS-tree across nodes (Simple protocol only)."""
    intra = links.intra
    if rates.nvls_efficiency is None or per_node < 2 or intra is None or intra.kind != "nvlink":
        return []
    ranks = per_node * nodes
    algbw = intra.gbytes_per_s * 1e9 * rates.nvls_efficiency * per_node / (per_node + 1)
    latency = nccl.hw_latency_s("nvlink", "nvls", "simple")
    algorithm = "nvls"
    if nodes > 1:
        crossings = 1 if nodes == 2 else 2  # each way once (2 nodes), else up and down a tree
        algbw = min(algbw, per_node * links.nic_per_rank_bytes_per_s / crossings)
        latency += 2 * nccl.log2_nodes(nodes) * nccl.hw_latency_s("net", "nvls_tree", "simple")
        algorithm = "nvls_tree"
    busbw = algbw * bus_factor("all_reduce", ranks)
    return [_Candidate(latency + nbytes / algbw, algorithm, busbw, "simple")]


def _all_to_all(
    nbytes: int, ranks: int, per_node: int, nodes: int, links: GroupLinks
) -> CollectiveTime:
    """Each rank keeps 1/n of its buffer, sends (per_node - 1)/n over NVLink and, across
    nodes, (n - per_node)/n through its own NIC (its rail: a node's NICs are not pooled for
    one rank's traffic); the slower side sets the time."""
    on_node = 0.0
    if links.intra is not None:
        on_node = (per_node - 1) / ranks * nbytes / (links.intra.gbytes_per_s * 1e9)
    off_node = 0.0
    if nodes > 1:
        off_node = (ranks - per_node) / ranks * nbytes / links.nic_per_rank_bytes_per_s
    hops = nccl.hw_latency_s(_link_kind(links.intra), "ring", "simple") * (per_node - 1)
    hops += nccl.hw_latency_s("net", "ring", "simple") * (nodes - 1)
    beta = max(on_node, off_node)
    busbw = bus_factor("all_to_all", ranks) * nbytes / beta if beta else 0.0
    time_s = nccl.base_latency_s("ring", "simple") + hops + beta
    return CollectiveTime("all_to_all", nbytes, ranks, nodes, time_s, "ring", busbw / 1e9)


def _send_recv(nbytes: int, nodes: int, links: GroupLinks) -> CollectiveTime:
    """One pipeline transfer: over the intra-node link, or the sending rank's NIC."""
    if nodes > 1:
        rate, latency = links.nic_per_rank_bytes_per_s, nccl.hw_latency_s("net", "ring", "simple")
    else:
        rate = links.intra.gbytes_per_s * 1e9
        latency = nccl.hw_latency_s(_link_kind(links.intra), "ring", "simple")
    time_s = nccl.base_latency_s("ring", "simple") + latency + nbytes / rate
    return CollectiveTime(POINT_TO_POINT, nbytes, 2, nodes, time_s, "p2p", rate / 1e9)


def _gloo_time(
    op: str,
    cost_op: str,
    nbytes: int,
    ranks: int,
    nodes: int,
    per_node: int,
    links: GroupLinks,
    rates: PartRates,
) -> CollectiveTime:
    """CPU ranks (gloo over TCP): alpha + bus bytes / busbw, both measured per op on loopback
    (hardware.GLOO_LOOPBACK; point-to-point, all-to-all and broadcast take all-gather's,
    assumed); across the emulated link its rate x TCP goodput and its own measured alpha
    (hardware.GLOO_EMULATED_ALPHA_S), the loopback's added where the group also has several
    ranks in a node."""
    cost = rates.gloo[cost_op]
    factor = 1.0 if op == POINT_TO_POINT else bus_factor(op, ranks)
    busbw = cost.busbw_gbytes_per_s * 1e9 if per_node > 1 else math.inf
    alpha = cost.alpha_s if per_node > 1 else 0.0
    if nodes > 1:
        busbw = min(busbw, links.busbw_bytes_per_s)
        alpha += GLOO_EMULATED_ALPHA_S
    time_s = alpha + factor * nbytes / busbw
    return CollectiveTime(op, nbytes, ranks, nodes, time_s, "gloo", busbw / 1e9, "gloo")


def group_geometry(size: int, stride: int, per_node_world: int) -> int:
    """Ranks per node of a mesh group of ``size`` ranks spaced ``stride`` apart, when nodes
    hold ``per_node_world`` consecutive ranks (train/parallel/mesh.py: rank-major mesh)."""
    if size <= 1:
        return 1
    if stride >= per_node_world:
        return 1
    return max(1, min(size, per_node_world // stride))
