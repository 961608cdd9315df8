"""cluster.link_match_gpu: the link rate that keeps a GPU cluster's comm:compute ratio."""

from __future__ import annotations

import pytest

from launch.cluster.link_match import matched_link_gbps
from launch.conf_tree import load_gpu_profile
from launch.errors import ConfigError


def test_link_rate_scales_by_cpu_over_gpu_flops():
    h100 = load_gpu_profile("h100_sxm")  # 400 Gbit/s NIC per GPU, 989.4 TFLOP/s bf16
    gbps = matched_link_gbps(h100, "nic", cpu_flops_per_rank=100e9, nproc_per_node=2)
    assert gbps == pytest.approx(400 * 100e9 / 989.4e12 * 2)
    # NVLink: 400 GB/s both ways on an H800 is 200 GB/s = 1600 Gbit/s one way.
    h800 = load_gpu_profile("h800")
    assert matched_link_gbps(h800, "nvlink", 989.4e9, 1) == pytest.approx(1.6)
    with pytest.raises(ConfigError, match="l40s has no NVLink rate"):
        matched_link_gbps(load_gpu_profile("l40s"), "nvlink", 1e9, 1)
