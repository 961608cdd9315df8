"""NCCL's own tuning constants, as its tuner uses them to pick an algorithm and a protocol.

Copied from NVIDIA/nccl src/graph/tuning.cc (master, 2026: ``ncclTunerConstantsDefaults`` and
``ncclTopoTuneModel``) and src/graph/topo.h; docs/performance-model.md cites each. NCCL picks,
per collective and size, the (algorithm, protocol) of least predicted time ``latency + bytes /
bandwidth``; launch/perfmodel/collectives.py does the same with these latencies and protocol
factors over the bandwidths the part's links allow.
"""

from __future__ import annotations

import math

US = 1e-6
ALGORITHMS = ("tree", "ring", "nvls", "nvls_tree")
PROTOCOLS = ("ll", "ll128", "simple")

# baseLatencies (us) per algorithm, per protocol (LL, LL128, Simple).
BASE_LATENCY_US = {
    "tree": (6.8, 14.0, 8.4),
    "ring": (6.6, 14.0, 8.4),
    "nvls": (0.0, 0.0, 0.0),
    "nvls_tree": (0.0, 0.0, 0.0),
}
# hwLatencies (us) per link kind, algorithm, protocol. NVLS runs Simple only (0: not offered).
HW_LATENCY_US = {
    "nvlink": {
        "tree": (0.6, 1.25, 4.0),
        "ring": (0.6, 1.9, 3.4),
        "nvls": (0.0, 0.0, 25.0),
        "nvls_tree": (0.0, 0.0, 25.0),
    },
    "pcie": {
        "tree": (1.0, 1.9, 4.0),
        "ring": (1.0, 2.5, 5.7),
        "nvls": (0.0, 0.0, 0.0),
        "nvls_tree": (0.0, 0.0, 0.0),
    },
    "net": {
        "tree": (5.0, 8.5, 14.0),
        "ring": (2.7, 4.0, 14.0),
        "nvls": (0.0, 0.0, 18.0),
        "nvls_tree": (0.0, 0.0, 20.9),
    },
}
# The ring's LL protocol moves 8 bytes of data per 16 (flag + data): half the bandwidth, capped
# at llMaxBws (GB/s): one node by GPU generation, several nodes by CPU (Intel row taken: the
# CPU of a projected node is not known), 2 nodes and more than 2.
LL_SHARE = 0.5
LL_MAX_GBYTES_PER_S = {"ampere": 87.7, "hopper": 141.0, "two_nodes": 39.0, "more_nodes": 20.4}
# LL128 carries 120 bytes of data per 128-byte line (tuning.cc "0.92 /*120.0/128.0*/").
LL128_SHARE = 0.92
# Tree all-reduce: "busBw * .92" against the ring's; its LL protocol "1.0 / 3.8" of that.
TREE_SHARE = 0.92
TREE_LL_SHARE = 1 / 3.8
# NVLink SHARP efficiency on Hopper (``nvlsEfficiency``): the share of the NVLink rate an NVLS
# all-reduce reaches (Ampere has no NVLS).
NVLS_EFFICIENCY = {"hopper": 0.85}
# Every network step of a Simple-protocol ring pays 3 x the network overhead (1 us on Intel
# hosts, ``getNetOverhead``) when that is above the hop latency; below 1 us of hop it decides.
NET_OVERHEAD_US = 1.0
# NCCL's per-link NVLink bandwidth (topo.h SM80_NVLINK_BW, SM90_NVLINK_BW), GB/s per
# direction, against the 25 GB/s per direction of one NVLink3 / NVLink4 link.
NVLINK_LINK_GBYTES_PER_S = {"ampere": 20.0, "hopper": 20.6}
NVLINK_LINE_GBYTES_PER_S = 25.0


def base_latency_s(algorithm: str, protocol: str) -> float:
    return BASE_LATENCY_US[algorithm][PROTOCOLS.index(protocol)] * US


def hw_latency_s(link: str, algorithm: str, protocol: str) -> float:
    """One hop of ``algorithm`` in ``protocol`` over a link of ``link`` kind (loopback and
    emulated links take their own measured latency instead: see collectives.py)."""
    table = HW_LATENCY_US.get(link, HW_LATENCY_US["pcie"])
    return table[algorithm][PROTOCOLS.index(protocol)] * US


def offered(algorithm: str, protocol: str) -> bool:
    """NVLS and NVLS-tree run the Simple protocol only."""
    return protocol == "simple" or algorithm in ("ring", "tree")


def ring_protocol_bandwidth(
    bytes_per_s: float, protocol: str, generation: str | None, nodes: int
) -> float:
    """The ring's bus bandwidth in ``protocol`` given its Simple bandwidth."""
    if protocol == "ll128":
        return bytes_per_s * LL128_SHARE
    if protocol == "ll":
        return min(bytes_per_s * LL_SHARE, ll_cap(generation, nodes))
    return bytes_per_s


def tree_protocol_bandwidth(
    bytes_per_s: float, protocol: str, generation: str | None, nodes: int
) -> float:
    """The tree all-reduce's bus bandwidth in ``protocol`` given the ring's Simple bandwidth:
    0.92 of it (Simple), 120/128 of that again for LL128 across nodes (7/9 inside one),
    1/3.8 of it for LL, capped as the ring's LL is."""
    tree = bytes_per_s * TREE_SHARE
    if protocol == "ll128":
        return tree * (7 / 9 if nodes == 1 else 120 / 128)
    if protocol == "ll":
        return min(tree * TREE_LL_SHARE, ll_cap(generation, nodes))
    return tree


def ll_cap(generation: str | None, nodes: int) -> float:
    if nodes == 1:
        return LL_MAX_GBYTES_PER_S.get(generation or "", LL_MAX_GBYTES_PER_S["ampere"]) * 1e9
    key = "two_nodes" if nodes == 2 else "more_nodes"
    return LL_MAX_GBYTES_PER_S[key] * 1e9


def log2_nodes(nodes: int) -> int:
    """NCCL's log2i: the floor of log2 (a tree of N nodes is log2i(N) levels deep)."""
    return int(math.floor(math.log2(nodes))) if nodes > 1 else 0
