"""HTA's breakdown with a stand-in ``hta.trace_analysis`` shaped like HolisticTraceAnalysis
0.5.0 (issue 22 item 1: its "sum (us)" column crashed rank 0 after training)."""

from __future__ import annotations

import sys
import types

import pytest

from train.measure.hta import hta_breakdown


class Table:
    """The one DataFrame method hta.py uses: ``to_dict("records")``."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def to_dict(self, orient: str) -> list[dict]:
        assert orient == "records"
        return self.rows


def temporal(rank, kernel_us, compute_us, idle_us):
    return {
        "rank": rank,
        "idle_time(us)": idle_us,
        "compute_time(us)": compute_us,
        "non_compute_time(us)": kernel_us - compute_us - idle_us,
        "kernel_time(us)": kernel_us,
        "idle_time_pctg": 100 * idle_us / kernel_us,
        "compute_time_pctg": 100 * compute_us / kernel_us,
        "non_compute_time_pctg": 100 * (kernel_us - compute_us - idle_us) / kernel_us,
    }


def kernel(rank, kind, sum_us, column):
    return {
        "name": "k",
        column: sum_us,
        "max (us)": 1,
        "min (us)": 1,
        "stddev": 0.0,
        "mean (us)": 1,
        "kernel_type": kind,
        "rank": rank,
    }


def install_hta(monkeypatch, analysis_class) -> None:
    package = types.ModuleType("hta")
    module = types.ModuleType("hta.trace_analysis")
    module.TraceAnalysis = analysis_class
    package.trace_analysis = module
    monkeypatch.setitem(sys.modules, "hta", package)
    monkeypatch.setitem(sys.modules, "hta.trace_analysis", module)


def analysis_with(sum_column: str):
    class TraceAnalysis:
        def __init__(self, trace_dir: str):
            self.trace_dir = trace_dir

        def get_temporal_breakdown(self, visualize=True):
            return Table([temporal(0, 2000.0, 1200.0, 300.0), temporal(1, 2000.0, 1000.0, 500.0)])

        def get_comm_comp_overlap(self, visualize=True):
            return Table(
                [
                    {"rank": 0, "comp_comm_overlap_ratio": 0.4, "comp_comm_overlap_pctg": 40.0},
                    {"rank": 1, "comp_comm_overlap_ratio": 0.2, "comp_comm_overlap_pctg": 20.0},
                ]
            )

        def get_gpu_kernel_breakdown(self, visualize=True):
            by_type = Table([{"kernel_type": "COMMUNICATION", "sum": 1100, "percentage": 30.0}])
            return by_type, Table(
                [
                    kernel(0, "COMMUNICATION", 400.0, sum_column),
                    kernel(0, "COMMUNICATION", 100.0, sum_column),
                    kernel(0, "COMPUTATION", 1200.0, sum_column),
                    kernel(1, "COMMUNICATION", 600.0, sum_column),
                ]
            )

    return TraceAnalysis


@pytest.mark.parametrize("sum_column", ["sum (us)", "sum"])  # HTA 0.5.0, earlier releases
def test_hta_tables_become_seconds_per_step(monkeypatch, tmp_path, sum_column):
    install_hta(monkeypatch, analysis_with(sum_column))
    out = hta_breakdown(tmp_path, profiled_steps=2)
    assert "unavailable" not in out
    rank0 = out["ranks"]["0"]  # 2 steps: 1000 us each, 250 us of comm, 40% of it hidden
    assert rank0["step_s"] == pytest.approx(1e-3)
    assert rank0["compute_s"] == pytest.approx(600e-6)
    assert rank0["comm_s"] == pytest.approx(250e-6)
    assert rank0["overlapped_comm_s"] == pytest.approx(100e-6)
    assert rank0["exposed_comm_s"] == pytest.approx(150e-6)
    assert rank0["idle_s"] == pytest.approx(150e-6)
    assert out["ranks"]["1"]["exposed_comm_s"] == pytest.approx(240e-6)
    # Headline: the rank with the median exposed comm (the lower of two).
    assert out["exposed_comm_s"] == pytest.approx(150e-6)


def test_hta_failures_are_recorded_not_raised(monkeypatch, tmp_path):
    broken = analysis_with("sum (us)")

    def fail(self, visualize=True):
        raise RuntimeError("trace has no GPU kernels")

    monkeypatch.setattr(broken, "get_gpu_kernel_breakdown", fail)
    install_hta(monkeypatch, broken)
    out = hta_breakdown(tmp_path, profiled_steps=2)
    assert out == {
        "method": "hta",
        "unavailable": "HTA failed: RuntimeError: trace has no GPU kernels",
    }


def test_an_unknown_column_name_is_recorded_with_the_columns_hta_gave(monkeypatch, tmp_path):
    install_hta(monkeypatch, analysis_with("total (ms)"))
    reason = hta_breakdown(tmp_path, profiled_steps=2)["unavailable"]
    assert "no 'sum' column" in reason and "total (ms)" in reason


def test_without_hta_installed_it_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "hta.trace_analysis", None)  # import raises ImportError
    assert hta_breakdown(tmp_path, 2)["unavailable"] == "holistictraceanalysis is not installed"
