"""A board power limit below TDP (gpu.power_limit_w) slows the part as its measured curve says."""

from __future__ import annotations

import dataclasses

import pytest

from launch.conf_tree import load_gpu_profile
from launch.perfmodel.hardware import POWER_LIMIT_THROUGHPUT, part_rates, power_limit_share
from train.spec.config_error import ConfigError
from train.spec.rules import check_gpu


def _hbm2e(limit: float | None):
    return dataclasses.replace(load_gpu_profile("h100_hbm2e"), power_limit_w=limit)


def test_the_grand_teton_profile_runs_at_500_of_700_watts():
    gpu = load_gpu_profile("h100_hbm2e")
    assert (gpu.power_limit_w, gpu.tdp_w) == (500, 700)
    capped, full = part_rates(gpu), part_rates(_hbm2e(None))
    share = 0.915  # Mayr et al. 2026 Table 4, 500 W row
    assert capped.matmul_fraction == pytest.approx(full.matmul_fraction * share)
    assert capped.attention_fraction == pytest.approx(full.attention_fraction * share)
    assert capped.hbm_gbytes_per_s == pytest.approx(full.hbm_gbytes_per_s * share)
    assert capped.fp8_matmul_fraction == pytest.approx(full.fp8_matmul_fraction * share)
    assert capped.intra == full.intra and capped.inter == full.inter  # links are not slowed
    assert "500 W of 700 W: x0.915" in capped.compute_source


def test_at_tdp_nothing_changes_and_between_rows_is_linear():
    assert power_limit_share(_hbm2e(700)) == (1.0, "")
    assert power_limit_share(_hbm2e(None)) == (1.0, "")
    share, _ = power_limit_share(_hbm2e(550))
    assert share == pytest.approx((0.915 + 0.966) / 2)
    lowest = POWER_LIMIT_THROUGHPUT["h100_hbm2e"][0][1]
    assert power_limit_share(_hbm2e(100))[0] == lowest  # no extrapolation below


@pytest.mark.parametrize("name, watts", [("a100_80g", 300), ("h200", 500), ("h100_pcie", 300)])
def test_a_part_without_a_published_curve_is_not_slowed_and_says_so(name, watts):
    # The H100 curve is the 700 W H100's; the H200 behaves otherwise in the same paper.
    part = dataclasses.replace(load_gpu_profile(name), power_limit_w=watts)
    share, source = power_limit_share(part)
    assert share == 1.0 and "not modelled" in source
    assert "not modelled" in part_rates(part).compute_source


def test_a_measured_ceiling_already_ran_at_the_cards_limit():
    rates = part_rates(load_gpu_profile("h100_hbm2e"), compute_tflops=700.0)
    assert rates.matmul_fraction == pytest.approx(700.0 / 989.4)


@pytest.mark.parametrize(
    "limit, tdp, message",
    [
        (800, 700, "800: must be in (0, 700]"),
        (0, 700, "0: must be in (0, 700]"),
        (300, None, "has no gpu.tdp_w"),
    ],
)
def test_a_limit_outside_the_tdp_is_refused(limit, tdp, message):
    gpu = dataclasses.replace(load_gpu_profile("h100_hbm2e"), power_limit_w=limit, tdp_w=tdp)
    with pytest.raises(ConfigError) as caught:
        check_gpu(gpu)
    assert caught.value.key == "gpu.power_limit_w" and message in str(caught.value)


def _fake_nvidia_smi(tmp_path, monkeypatch, output: str) -> None:
    tool = tmp_path / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '{output}'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")


def test_gpu_auto_reads_a_capped_hosts_power_limit(tmp_path, monkeypatch):
    from launch import resolve

    _fake_nvidia_smi(tmp_path, monkeypatch, "500.00\\n")
    assert resolve.local_power_limit_w() == 500.0
    monkeypatch.setattr(resolve, "local_gpus", lambda: [("NVIDIA H100 80GB HBM3", 79.6)])
    profile, detected = resolve.detect_local()
    assert (profile.name, profile.power_limit_w) == ("h100_sxm", 500.0)
    assert "power limit 500 of 700 W (nvidia-smi)" in detected
    _fake_nvidia_smi(tmp_path, monkeypatch, "700.00\\n")  # at TDP: the profile as it is
    profile, detected = resolve.detect_local()
    assert profile.power_limit_w is None and "power limit" not in detected


def test_no_nvidia_smi_means_no_limit(tmp_path, monkeypatch):
    from launch import resolve

    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no nvidia-smi
    assert resolve.local_power_limit_w() is None
    _fake_nvidia_smi(tmp_path, monkeypatch, "[N/A]\\n")
    assert resolve.local_power_limit_w() is None
