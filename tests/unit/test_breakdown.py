"""Step breakdown by interval arithmetic on hand-made traces (train/measure/intervals.py,
trace_events.py, twin.py)."""

from __future__ import annotations

import gzip
import json

import pytest

from train.measure.intervals import intersect, length, subtract, union
from train.measure.trace_events import (
    TraceError,
    TraceEvent,
    breakdown_steps,
    comm_seconds_by_kind,
    last_arrivals,
    load_trace,
    trace_breakdown,
)
from train.measure.twin import twin_breakdown
from train.spec.catalog import Feature, layout

MAIN, GLOO = 100, 200


def op(name, start, dur, thread=MAIN, cat="cpu_op"):
    return TraceEvent(name=name, category=cat, thread=thread, start=start, duration=dur)


def step_mark(n, start, dur):
    return op(f"step#{n}", start, dur, cat="user_annotation")


def test_union_merges_nested_overlapping_and_touching_intervals():
    assert union([(0, 10), (2, 3), (8, 12), (12, 15), (20, 21), (5, 5)]) == [(0, 15), (20, 21)]
    assert length([(0, 10), (2, 3), (5, 12)]) == 12


def test_intersect_and_subtract():
    a, b = [(0, 10), (20, 30)], [(5, 25)]
    assert intersect(a, b) == [(5, 10), (20, 25)]
    assert subtract(a, b) == [(0, 5), (25, 30)]
    assert subtract([(0, 10)], [(2, 3), (5, 6)]) == [(0, 2), (3, 5), (6, 10)]
    assert subtract([(0, 10)], []) == [(0, 10)]


def test_overlap_nesting_and_gaps_in_one_step():
    # Step 0..1000 us. Compute on the main thread: forward 0..400 with nested ops, backward
    # 450..800 (a 50 us gap before it). gloo works 700..950: 100 us under backward
    # (overlapped), 150 us after it (exposed, DDP waits). 800..1000 less comm = idle 50 us.
    events = [
        step_mark(1, 0, 1000),
        op("forward", 0, 400, cat="user_annotation"),  # a mark, not an op: not compute
        op("aten::linear", 0, 400),
        op("aten::addmm", 10, 300),  # nested in linear
        op("aten::mul", 450, 350),
        op("c10d::allreduce_", 700, 5),  # enqueue: not compute
        op("gloo:all_reduce", 700, 250, thread=GLOO, cat="user_annotation"),
        op("aten::add", 5000, 10),  # outside the step window
    ]
    (step,) = breakdown_steps(events)
    assert step.step == 1 and step.step_s == pytest.approx(1e-3)
    assert step.compute_s == pytest.approx(750e-6)
    assert step.comm_s == pytest.approx(250e-6)
    assert step.overlapped_comm_s == pytest.approx(100e-6)
    assert step.exposed_comm_s == pytest.approx(150e-6)
    assert step.idle_s == pytest.approx(100e-6)  # 400..450 and 950..1000
    parts = step.compute_s + step.exposed_comm_s + step.idle_s
    assert parts == pytest.approx(step.step_s)
    d = step.as_dict()
    assert d["exposed_comm_share"] == pytest.approx(0.15)


def test_comm_clipped_to_each_step_and_other_threads_ops_not_compute():
    events = [
        step_mark(1, 0, 100),
        step_mark(2, 100, 100),
        op("gloo:all_reduce", 80, 40, thread=GLOO, cat="user_annotation"),  # spans both
        op("aten::copy_", 0, 50, thread=999),  # another thread's op: not this step's compute
    ]
    one, two = breakdown_steps(events)
    assert one.comm_s == pytest.approx(20e-6) and two.comm_s == pytest.approx(20e-6)
    assert one.compute_s == 0 and one.idle_s == pytest.approx(80e-6)


def test_gpu_trace_uses_kernels_and_the_gpu_step_mark():
    events = [
        step_mark(3, 0, 50),  # CPU side, ignored when a GPU mark exists
        op("step#3", 10, 100, thread="stream 7", cat="gpu_user_annotation"),
        op("sm90_gemm", 10, 60, thread="stream 7", cat="kernel"),
        op("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 50, 40, thread="stream 9", cat="kernel"),
    ]
    (step,) = breakdown_steps(events)
    assert step.compute_s == pytest.approx(60e-6)
    assert step.overlapped_comm_s == pytest.approx(20e-6)
    assert step.exposed_comm_s == pytest.approx(20e-6)
    assert step.idle_s == pytest.approx(20e-6)


def test_no_step_marks_and_unparsable_files_raise(tmp_path):
    with pytest.raises(TraceError, match="no step#N marks"):
        breakdown_steps([op("aten::mm", 0, 10)])
    bad = tmp_path / "trace_rank0.json.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(TraceError, match="cannot parse"):
        load_trace(bad)


def test_load_trace_reads_complete_events(tmp_path):
    path = tmp_path / "t.json.gz"
    raw = {
        "traceEvents": [
            {"ph": "X", "name": "step#1", "cat": "user_annotation", "tid": 1, "ts": 5, "dur": 9},
            {"ph": "M", "name": "thread_name", "tid": 1, "args": {}},
        ]
    }
    with gzip.open(path, "wt") as f:
        json.dump(raw, f)
    assert load_trace(path) == [TraceEvent("step#1", "user_annotation", 1, 5.0, 9.0)]


def test_headline_takes_the_last_rank_to_arrive_per_step():
    def s(step, exposed):
        step_s = 1.0 if step == 1 else 0.8
        return {
            "step": step,
            "step_s": step_s,
            "compute_s": step_s - exposed,
            "comm_s": exposed,
            "overlapped_comm_s": 0.0,
            "exposed_comm_s": exposed,
            "idle_s": 0.0,
        }

    per_rank = {0: [s(1, 0.5), s(2, 0.1)], 1: [s(1, 0.2), s(2, 0.4)]}
    assert [(x["rank"], x["exposed_comm_s"]) for x in last_arrivals(per_rank)] == [
        (1, 0.2),
        (0, 0.1),
    ]
    out = trace_breakdown(per_rank, {})
    # The median of an even count is the lower one by exposed comm: step 2 (0.1 s).
    assert out["step_s"] == 0.8 and out["exposed_comm_s"] == 0.1
    assert trace_breakdown({}, {1: "x: cannot parse"})["unavailable"] == "x: cannot parse"


def test_twin_exposed_comm_and_refusals_for_layouts_that_cannot_skip_comm():
    out = twin_breakdown("ddp", step_s=1.0, twin_step_s=0.7, twin_step_s_per_rank={0: 0.6, 1: 0.65})
    assert out["exposed_comm_s"] == pytest.approx(0.3)
    assert out["exposed_comm_share"] == pytest.approx(0.3)
    assert out["compute_s"] is None
    for name in ("tp", "tp_fsdp", "zero1", "zero2", "zero3"):
        assert layout(name).refusal(Feature.twin)
    for name in ("ddp", "fsdp", "hsdp"):
        assert layout(name).refusal(Feature.twin) is None


def test_gloo_work_takes_the_kind_of_the_launch_that_enqueued_it():
    # gloo runs FSDP's reduce-scatter as all_reduce work; the loss all-reduce is left out.
    events = [
        step_mark(1, 0, 1000),
        op("c10d::_allgather_base_", 10, 2),
        op("gloo:all_gather", 12, 100, thread=GLOO, cat="user_annotation"),
        op("c10d::_reduce_scatter_base_", 500, 2),
        op("gloo:all_reduce", 502, 200, thread=GLOO, cat="user_annotation"),
        op("loss_all_reduce", 900, 50, cat="user_annotation"),
        op("c10d::allreduce_", 901, 2),
        op("gloo:all_reduce", 903, 40, thread=GLOO, cat="user_annotation"),
    ]
    seconds = comm_seconds_by_kind(events)
    assert seconds == {"all_gather": [100e-6], "reduce_scatter": [200e-6]}
