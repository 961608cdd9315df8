"""The collective model against alpha-beta times computed by hand from the stated constants."""

from __future__ import annotations

import math

import pytest

from launch.conf_tree import load_gpu_profile
from launch.errors import ConfigError
from launch.perfmodel.collectives import bus_factor, collective_time
from launch.perfmodel.hardware import NIC_FRACTION, NVLINK_FRACTION, part_rates

GIB = 2**30
US = 1e-6


def rates(name: str, **kw):
    return part_rates(load_gpu_profile(name), **kw)


def test_all_reduce_inside_an_h100_node_is_ring_over_nvlink():
    busbw = 900 / 2 * NVLINK_FRACTION * 1e9  # 360 GB/s per direction, achievable
    alpha = 8.4 * US + 2 * 7 * 3.4 * US  # base + 2(n-1) NVLink steps
    beta = 2 * 7 / 8 * GIB / busbw
    t = collective_time("all_reduce", GIB, 8, 8, rates("h100_sxm"))
    assert t.algorithm == "ring"
    assert t.time_s == pytest.approx(alpha + beta, rel=1e-9)
    assert t.busbw_gbytes_per_s == pytest.approx(360.0)


def test_h800_nvlink_is_four_ninths_of_h100():
    h100 = collective_time("all_gather", GIB, 8, 8, rates("h100_sxm"))
    h800 = collective_time("all_gather", GIB, 8, 8, rates("h800"))
    assert h800.busbw_gbytes_per_s / h100.busbw_gbytes_per_s == pytest.approx(400 / 900)


def test_one_rank_per_node_rides_its_own_nic():
    nic = 400 / 8 * NIC_FRACTION * 1e9  # 45 GB/s
    ring_alpha = 8.4 * US + 2 * 3 * 9.6 * US  # every step crosses the network
    tree_alpha = 4.4 * US + 2 * (0 + math.log2(4) * 8.5 * US)
    beta = 2 * 3 / 4 * GIB / nic
    t = collective_time("all_reduce", GIB, 4, 1, rates("h100_sxm"))
    assert t.time_s == pytest.approx(min(ring_alpha + beta, tree_alpha + beta / 0.9), rel=1e-9)
    # The NIC dominates: the H800 (same NIC, less NVLink) takes exactly as long.
    assert collective_time("all_reduce", GIB, 4, 1, rates("h800")).time_s == t.time_s


def test_small_messages_across_nodes_take_the_tree():
    t = collective_time("all_reduce", 1024, 32, 8, rates("h100_sxm"))
    assert t.algorithm == "tree"
    tree_alpha = 4.4 * US + 2 * (7 * 1.2 * US + 2 * 8.5 * US)
    assert t.time_s == pytest.approx(tree_alpha + 2 * 31 / 32 * 1024 / 360e9 / 0.9, rel=1e-9)


def test_a_ring_across_nodes_is_capped_by_the_slower_of_nvlink_and_the_node_nics():
    # A800: NVLink 200 GB/s/dir x 0.8 = 160 < 8 NICs x 25 GB/s x 0.9 = 180.
    assert collective_time("all_reduce", GIB, 16, 8, rates("a800")).busbw_gbytes_per_s == (
        pytest.approx(160.0)
    )
    assert collective_time("all_reduce", GIB, 16, 8, rates("a100_80g")).busbw_gbytes_per_s == (
        pytest.approx(180.0)
    )


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
