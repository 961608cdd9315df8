"""The collective model: NCCL's algorithm and protocol choice by size and group shape, alpha-beta
times from the stated constants, and busbw within the stated error of the published points
docs/performance-model.md checks against (bench/published_points.py holds them)."""

from __future__ import annotations

import math

import pytest

from launch.conf_tree import load_gpu_profile
from launch.errors import ConfigError
from launch.perfmodel import nccl_tuning as nccl
from launch.perfmodel.collectives import bus_factor, collective_time
from launch.perfmodel.hardware import NIC_FRACTION, NVLINK_FRACTION, part_rates
from tests.conftest import published_points

GIB = 2**30
US = 1e-6


def rates(name: str, **kw):
    return part_rates(load_gpu_profile(name), **kw)


def test_nvls_all_reduce_on_8_hopper_nvswitch_gpus_and_never_on_a100():
    h100 = collective_time("all_reduce", GIB, 8, 8, rates("h100_sxm"))
    assert h100.algorithm == "nvls"
    # The switch reduces: each rank moves (n+1)/n of the buffer at NVLink x NCCL's per-link
    # rate x nvlsEfficiency (tuning.cc), so algbw = 450 x 20.6/25 x 0.85 x 8/9.
    algbw = 450 * 20.6 / 25 * 0.85 * 8 / 9
    assert h100.time_s == pytest.approx(25 * US + GIB / (algbw * 1e9), rel=1e-9)
    a100 = collective_time("all_reduce", GIB, 8, 8, rates("a100_80g"))
    assert a100.algorithm == "ring"  # Ampere has no NVLink SHARP
    # A bridged PCIe card has no NVSwitch: no NVLS either.
    assert collective_time("all_reduce", GIB, 2, 2, rates("h100_pcie")).algorithm == "ring"
    # Small messages: NVLS's 25 us latency loses to the ring's low-latency protocol.
    small = collective_time("all_reduce", 4096, 8, 8, rates("h100_sxm"))
    assert (small.algorithm, small.protocol) == ("ring", "ll")


def test_ring_inside_an_a100_node_is_alpha_beta_over_nccls_nvlink_rate():
    busbw = 600 / 2 * NVLINK_FRACTION["ampere"] * 1e9  # 240 GB/s: 12 links x 20.0 GB/s
    alpha = 8.4 * US + 2 * 7 * 3.4 * US  # base + 2(n-1) NVLink steps (Simple)
    t = collective_time("all_reduce", GIB, 8, 8, rates("a100_80g"))
    assert (t.algorithm, t.protocol) == ("ring", "simple")
    assert t.time_s == pytest.approx(alpha + 2 * 7 / 8 * GIB / busbw, rel=1e-9)


def test_all_gather_and_reduce_scatter_stay_on_the_ring_on_hopper():
    for op in ("all_gather", "reduce_scatter"):
        t = collective_time(op, GIB, 8, 8, rates("h100_sxm"))
        assert t.algorithm == "ring"
        assert t.busbw_gbytes_per_s == pytest.approx(450 * 20.6 / 25)


def test_nvls_tree_across_two_nodes_beats_the_ring_and_four_nodes_fall_below_two():
    two = collective_time("all_reduce", 8 * GIB, 16, 8, rates("h100_sxm"))
    four = collective_time("all_reduce", 8 * GIB, 32, 8, rates("h100_sxm"))
    assert two.algorithm == "nvls_tree"
    assert two.achieved_busbw_gbytes_per_s > 1.3 * four.achieved_busbw_gbytes_per_s
    # At 2 nodes the NICs are not the limit (8 x 45 GB/s for 1/8 of the data each, once each
    # way): NVLS inside the node is, as on one node.
    one = collective_time("all_reduce", 8 * GIB, 8, 8, rates("h100_sxm"))
    assert two.algbw_gbytes_per_s == pytest.approx(one.algbw_gbytes_per_s, rel=0.01)


def test_one_rank_per_node_rides_its_own_nic_and_the_tree_uses_nccls_latencies():
    nic = 400 / 8 * NIC_FRACTION * 1e9  # 45 GB/s
    t = collective_time("all_reduce", GIB, 4, 1, rates("h100_sxm"))
    ring = nccl.base_latency_s("ring", "simple") + 6 * 14.0 * US + 2 * 3 / 4 * GIB / nic
    tree = 8.4 * US + 2 * 2 * 14.0 * US + 2 * 3 / 4 * GIB / (nic * 0.92)
    assert t.time_s == pytest.approx(min(ring, tree), rel=1e-9)
    # The NIC dominates: the H800 (same NIC, less NVLink) takes exactly as long.
    assert collective_time("all_reduce", GIB, 4, 1, rates("h800")).time_s == t.time_s


def test_small_messages_across_nodes_take_a_low_latency_protocol():
    t = collective_time("all_reduce", 1024, 32, 8, rates("h100_sxm"))
    assert t.protocol in ("ll", "ll128")
    assert t.time_s < 60 * US


def test_a_ring_across_nodes_is_capped_by_the_slower_of_nvlink_and_the_node_nics():
    # A800: NVLink 200 GB/s/dir x 0.8 = 160 < 8 NICs x 25 GB/s x 0.9 = 180.
    a800 = collective_time("all_gather", GIB, 16, 8, rates("a800"))
    assert a800.busbw_gbytes_per_s == pytest.approx(160.0)
    a100 = collective_time("all_gather", GIB, 16, 8, rates("a100_80g"))
    assert a100.busbw_gbytes_per_s == pytest.approx(180.0)


def test_all_to_all_across_nodes_is_each_ranks_own_nic():
    """nccl-tests' all-to-all busbw across N nodes ~ N/(N-1) x the NIC per GPU (each rank's
    off-node share through its own rail), not the node's pooled egress."""
    nic = 400 / 8 * NIC_FRACTION
    for nodes in (2, 4, 8):
        t = collective_time("all_to_all", 4 * GIB, 8 * nodes, 8, rates("h100_sxm"))
        n = 8 * nodes
        beta = (n - 8) / n * 4 * GIB / (nic * 1e9)
        assert t.busbw_gbytes_per_s == pytest.approx((n - 1) / n * 4 * GIB / beta / 1e9)
        assert t.busbw_gbytes_per_s == pytest.approx((n - 1) / (n - 8) * nic)
        assert t.achieved_busbw_gbytes_per_s == pytest.approx(nic * nodes / (nodes - 1), rel=0.07)
    # Inside a node: NVLink.
    inside = collective_time("all_to_all", GIB, 8, 8, rates("h100_sxm"))
    assert inside.busbw_gbytes_per_s == pytest.approx(450 * 20.6 / 25)


def test_emulated_link_is_shared_by_the_ranks_of_a_node():
    cpu = rates("cpu", link_gbps=0.2)  # 200 Mbit/s per node
    one = collective_time("all_reduce", 64 * 2**20, 2, 1, cpu)
    assert one.busbw_gbytes_per_s == pytest.approx(0.2 / 8 * 1448 / 1514)
    two_per_node = collective_time("all_reduce", 64 * 2**20, 4, 2, cpu)
    # Two ranks per node share the node's one link: no more egress than one rank alone.
    assert two_per_node.busbw_gbytes_per_s == pytest.approx(0.2 / 8 * 1448 / 1514)


def test_bus_factors_follow_nccl_tests():
    assert bus_factor("all_reduce", 8) == pytest.approx(1.75)
    assert bus_factor("reduce_scatter", 4) == pytest.approx(0.75)
    assert bus_factor("broadcast", 8) == 1.0
    t = collective_time("reduce_scatter", GIB, 8, 8, rates("a100_80g"))
    assert t.achieved_busbw_gbytes_per_s == pytest.approx(t.algbw_gbytes_per_s * 7 / 8)
    assert collective_time("all_reduce", GIB, 1, 1, rates("a100_80g")).time_s == 0.0


def test_a_part_without_a_nic_rate_cannot_cross_nodes():
    with pytest.raises(ConfigError, match="gpu.nic_gbits_per_s_per_gpu"):
        collective_time("all_reduce", GIB, 16, 8, rates("l40s"))


def test_send_recv_crosses_nvlink_in_a_node_and_the_nic_between_nodes():
    h100 = rates("h100_sxm")
    inside = collective_time("send_recv", GIB, 2, 2, h100)
    across = collective_time("send_recv", GIB, 2, 1, h100)
    assert inside.busbw_gbytes_per_s == pytest.approx(450 * 20.6 / 25)
    assert across.busbw_gbytes_per_s == pytest.approx(45.0)
    assert math.isclose(across.time_s, 8.4 * US + 14 * US + GIB / 45e9, rel_tol=1e-9)


@pytest.mark.parametrize("split", ["check", "held-out"])
def test_busbw_of_every_published_point_is_within_the_stated_error(split):
    """docs/performance-model.md: single-node points (check) within 10%; multi-node points
    (held-out) within 25% each; their mean absolute error is what the docs report."""
    pp = published_points()
    bound = 0.10 if split == "check" else 0.25
    for point in (p for p in pp.COMM if p.split == split):
        got = pp.predict_comm(point).achieved_busbw_gbytes_per_s
        assert abs(got / point.published - 1) <= bound, (point, got)
