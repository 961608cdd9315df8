"""The measured matmul ceiling (launch.mamf's cache): validated when read, never lowered by a
later measurement unless told, and an MFU above 100% flagged with its likely cause."""

from __future__ import annotations

import json

import pytest

from launch.bench import cache
from launch.bench import matmul_ceiling as mamf
from train.measure.metrics import MfuFigures

GOOD = {"device_name": "cpu x", "measured_at": "2026-11-30T12:00:00+00:00", "cpu_threads": 1}


def write(record: dict) -> None:
    path = cache.cache_path("cpu x", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"cpu_threads": 1, "device_name": "cpu x", "best_tflops": {"fp32": 0.05}}, "measured_at"),
        ({**GOOD, "best_tflops": {"fp32": -1}}, "best_tflops.fp32 = -1"),
        ({**GOOD, "best_tflops": {"bf16": "abc"}}, "best_tflops.bf16 = 'abc'"),
        ({**GOOD, "best_tflops": {"fp32": 1e6}}, "best_tflops.fp32 = 1000000.0"),
    ],
)
def test_a_bad_record_is_ignored_with_a_warning(record, problem, capsys):
    write(record)
    assert cache.load_measured("cpu x", 1) is None
    warning = capsys.readouterr().err
    assert "ignoring matmul cache" in warning and problem in warning


def test_a_good_record_is_read():
    write({**GOOD, "best_tflops": {"fp32": 0.05}})
    assert cache.load_measured("cpu x", 1)["best_tflops"] == {"fp32": 0.05}


def full(tflops: float) -> dict:
    return {
        **GOOD,
        "best_tflops": {"fp32": tflops},
        "best_size": {"fp32": 512},
        "quick": {"fp32": False},
    }


def test_a_lower_full_measurement_keeps_the_higher_ceiling_unless_replaced():
    kept = mamf.merge_measurements(full(0.09), full(0.06))  # a run on a loaded machine
    assert kept["best_tflops"]["fp32"] == 0.09
    assert mamf.merge_measurements(full(0.06), full(0.09))["best_tflops"]["fp32"] == 0.09
    stale = mamf.merge_measurements(full(0.09), full(0.06), replace=True)
    assert stale["best_tflops"]["fp32"] == 0.06


def test_an_mfu_above_100_percent_is_flagged_with_its_cause():
    ok = MfuFigures(100.0, "bf16", 0.5, 80.0, 0.62)
    assert ok.above_peak is None
    loaded = MfuFigures(None, "fp32", None, 0.05, 1.3)
    assert "measured on a loaded machine" in loaded.above_peak and "130%" in loaded.above_peak
    wrong_part = MfuFigures(50.0, "bf16", 1.45, None, None)
    assert "another part" in wrong_part.above_peak
