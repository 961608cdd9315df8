"""Where a step's time went, from a profiler trace: compute, communication, the part of the
communication hidden behind compute, the exposed part, and idle.

Interval arithmetic over the trace's events, as pure functions on event lists (testable on
hand-made traces). What counts as what:

- CPU trace (gloo): communication is the ``gloo:<collective>`` work on gloo's own threads
  (``pt_gloo_runloop``; torch 2.13 records each collective there, from enqueue to completion,
  waiting for the peers included). Compute is the time the step's own thread spends inside
  profiler ops (``cpu_op``), minus the ops that only hand a collective to gloo (``c10d::*``).
  Time the step's thread spends in no op (DDP waiting for its last bucket, Python between
  ops) is neither: it is exposed comm where gloo is busy, idle where it is not.
- GPU trace (NCCL): communication is the NCCL kernels, compute every other kernel; the step
  window is the step's mark on the GPU timeline where the profiler recorded one. On GPU the
  Holistic Trace Analysis method (``hta_breakdown``) is preferred when installed.

Per step: overlapped = comm ∩ compute, exposed = comm − compute, idle = step − (compute ∪
comm), so compute + exposed + idle is the step window exactly.

The no-sync twin, a second measurement, lives here too (``twin_breakdown``; which layouts can run it: train/spec/catalog.py).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from train.spec.bus import bus_factor
from train.spec.catalog import layout

Interval = tuple[float, float]  # (start, end), microseconds like the trace

STEP_MARK = re.compile(r"^step#(\d+)$")  # record_function name of each profiled step
LOSS_MARK = "loss_all_reduce"  # the logged-loss all-reduce, not part of comm_volume's bytes
# Ops on the step's thread that only enqueue a collective (or wait for one): not compute.
COMM_LAUNCH_PREFIXES = ("c10d::", "record_param_comms", "nccl:", "gloo:")
NCCL_KINDS = {
    "allreduce": "all_reduce",
    "allgather": "all_gather",
    "reducescatter": "reduce_scatter",
}


class TraceError(ValueError):
    """A trace that cannot be read or holds no profiled step."""


@dataclass(frozen=True)
class TraceEvent:
    name: str
    category: str
    thread: int | str
    start: float  # microseconds
    duration: float  # microseconds

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def interval(self) -> Interval:
        return (self.start, self.end)


@dataclass(frozen=True)
class StepBreakdown:
    """One profiled step of one rank, in seconds."""

    step: int
    step_s: float
    compute_s: float
    comm_s: float
    overlapped_comm_s: float
    exposed_comm_s: float
    idle_s: float

    def as_dict(self) -> dict:
        out = {
            "step": self.step,
            "step_s": self.step_s,
            "compute_s": self.compute_s,
            "comm_s": self.comm_s,
            "overlapped_comm_s": self.overlapped_comm_s,
            "exposed_comm_s": self.exposed_comm_s,
            "idle_s": self.idle_s,
        }
        out.update(shares(out))
        return out


# -- intervals ---------------------------------------------------------------------------------


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, disjoint intervals covering the same time (nested and overlapping ones merge)."""
    merged: list[list[float]] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def length(intervals: Iterable[Interval]) -> float:
    return sum(e - s for s, e in union(intervals))


def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    a, b = union(a), union(b)
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if end > start:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """The parts of ``a`` that no interval of ``b`` covers."""
    b = union(b)
    out = []
    for start, end in union(a):
        cursor = start
        for b_start, b_end in b:
            if b_end <= cursor or b_start >= end:
                continue
            if b_start > cursor:
                out.append((cursor, b_start))
            cursor = max(cursor, b_end)
        if cursor < end:
            out.append((cursor, end))
    return out


def clip(intervals: Iterable[Interval], window: Interval) -> list[Interval]:
    return intersect(intervals, [window])


# -- classification ----------------------------------------------------------------------------


def comm_kind(event: TraceEvent) -> str | None:
    """The collective an event is the work of (``all_reduce``...), or None if not comm."""
    if event.name.startswith("gloo:"):
        return event.name.removeprefix("gloo:")
    if event.category == "kernel" and "nccl" in event.name.lower():
        squashed = event.name.lower().replace("_", "")
        for key, kind in NCCL_KINDS.items():
            if key in squashed:
                return kind
        return "other"
    return None


def is_device_trace(events: Sequence[TraceEvent]) -> bool:
    return any(e.category == "kernel" for e in events)


def step_windows(events: Sequence[TraceEvent]) -> list[tuple[int, TraceEvent]]:
    """(step number, its mark) for every ``step#N`` mark; on a GPU trace the GPU-side mark."""
    marks = [e for e in events if STEP_MARK.match(e.name)]
    device_marks = [e for e in marks if e.category == "gpu_user_annotation"]
    chosen = device_marks or [e for e in marks if e.category == "user_annotation"]
    return sorted(((int(STEP_MARK.match(e.name).group(1)), e) for e in chosen), key=lambda x: x[0])


def compute_intervals(events: Sequence[TraceEvent], thread: int | str) -> list[Interval]:
    """Compute: on a GPU trace every non-NCCL kernel; on CPU the step thread's ops."""
    if is_device_trace(events):
        return [e.interval for e in events if e.category == "kernel" and comm_kind(e) is None]
    return [
        e.interval
        for e in events
        if e.category == "cpu_op"
        and e.thread == thread
        and not e.name.startswith(COMM_LAUNCH_PREFIXES)
    ]


def comm_intervals(events: Sequence[TraceEvent], kind: str | None = None) -> list[Interval]:
    return [
        e.interval
        for e in events
        if (k := comm_kind(e)) is not None and (kind is None or k == kind)
    ]


def breakdown_steps(events: Sequence[TraceEvent]) -> list[StepBreakdown]:
    """Per profiled step: compute, comm, overlapped, exposed and idle seconds."""
    windows = step_windows(events)
    if not windows:
        raise TraceError("no step#N marks in the trace")
    out = []
    for step, mark in windows:
        window = mark.interval
        compute = clip(compute_intervals(events, mark.thread), window)
        comm = clip(comm_intervals(events), window)
        busy = union([*compute, *comm])
        out.append(
            StepBreakdown(
                step=step,
                step_s=mark.duration / 1e6,
                compute_s=length(compute) / 1e6,
                comm_s=length(comm) / 1e6,
                overlapped_comm_s=length(intersect(comm, compute)) / 1e6,
                exposed_comm_s=length(subtract(comm, compute)) / 1e6,
                idle_s=(mark.duration - length(busy)) / 1e6,
            )
        )
    return out


def _launch_kind(name: str) -> str:
    """The collective a ``c10d::`` op enqueues (``c10d::_reduce_scatter_base_``...)."""
    for key, kind in (
        ("allreduce", "all_reduce"),
        ("allgather", "all_gather"),
        ("reduce_scatter", "reduce_scatter"),
    ):
        if key in name:
            return kind
    return name.removeprefix("c10d::")


def attributed_comm(events: Sequence[TraceEvent]) -> list[tuple[TraceEvent, str]]:
    """Each comm event with the collective it serves.

    gloo has no reduce-scatter of its own: FSDP's ``c10d::_reduce_scatter_base_`` runs as
    ``gloo:all_reduce`` work. So on a CPU trace the i-th gloo work item (by start) takes the
    kind of the i-th ``c10d::`` launch, which gloo runs in order; where the counts differ
    (a trace cut mid-collective) the gloo name is used as it is.
    """
    work = sorted((e for e in events if e.name.startswith("gloo:")), key=lambda e: e.start)
    launches = sorted(
        (e for e in events if e.name.startswith("c10d::") and e.category == "cpu_op"),
        key=lambda e: e.start,
    )
    if work and len(launches) == len(work):
        paired = [(w, _launch_kind(launch.name)) for w, launch in zip(work, launches, strict=True)]
    else:
        paired = [(w, comm_kind(w)) for w in work]
    others = [(e, k) for e in events if not e.name.startswith("gloo:") and (k := comm_kind(e))]
    return paired + others


def comm_seconds_by_kind(events: Sequence[TraceEvent]) -> dict[str, list[float]]:
    """Per collective kind, its busy time (union) in each step, seconds; the logged-loss
    all-reduce excluded (comm_volume does not count its bytes)."""
    loss_marks = [e.interval for e in events if e.name == LOSS_MARK]
    comm = [
        (e, kind)
        for e, kind in attributed_comm(events)
        if not any(s <= e.start < t for s, t in loss_marks)
    ]
    out: dict[str, list[float]] = {}
    for kind in sorted({k for _, k in comm}):
        work = [e.interval for e, k in comm if k == kind]
        out[kind] = [length(clip(work, mark.interval)) / 1e6 for _, mark in step_windows(events)]
    return out


# -- trace files -------------------------------------------------------------------------------


def load_trace(path: str | Path) -> list[TraceEvent]:
    """The complete ('X') events of a Chrome trace (.json or .json.gz) as TraceEvents."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            raw = json.load(f)
        entries = raw["traceEvents"] if isinstance(raw, dict) else raw
        return [
            TraceEvent(
                name=str(e["name"]),
                category=str(e.get("cat", "")),
                thread=e.get("tid", 0),
                start=float(e["ts"]),
                duration=float(e["dur"]),
            )
            for e in entries
            if e.get("ph") == "X"
        ]
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise TraceError(f"{path.name}: cannot parse ({type(exc).__name__}: {exc})") from None


# -- summaries ---------------------------------------------------------------------------------

PARTS = ("compute_s", "comm_s", "overlapped_comm_s", "exposed_comm_s", "idle_s")


def shares(seconds: dict) -> dict:
    """``<part>_share`` = part / step for each part present (None where either is None)."""
    step = seconds.get("step_s")
    out = {}
    for part in PARTS:
        if part in seconds:
            value = seconds[part]
            ok = value is not None and step
            out[part.removesuffix("_s") + "_share"] = value / step if ok else None
    return out


def median_breakdown(steps: Sequence[dict]) -> dict:
    """The parts of the step with the median exposed comm (the lower one of an even count),
    so they still add up to its step, with their shares. Ranked by exposed comm, not step
    time: the label rests on it, and one descheduled gloo thread must not decide it."""
    median = sorted(steps, key=lambda s: s["exposed_comm_s"])[(len(steps) - 1) // 2]
    out = {"step_s": median["step_s"], **{part: median[part] for part in PARTS}}
    out.update(shares(out))
    return out


def last_arrivals(per_rank: dict[int, list[dict]]) -> list[dict]:
    """Per step, the profiled rank that waited least in its collectives (the last to arrive).

    A collective on the other ranks also holds the wait for the slowest rank, which is
    imbalance between ranks, not the link; the last rank to arrive pays only the transfer.
    """
    by_step: dict[int, list[dict]] = {}
    for rank, rank_steps in per_rank.items():
        for s in rank_steps:
            by_step.setdefault(s["step"], []).append({**s, "rank": rank})
    return [min(steps, key=lambda s: s["exposed_comm_s"]) for _, steps in sorted(by_step.items())]


def trace_breakdown(per_rank: dict[int, list[dict]], errors: dict[int, str]) -> dict:
    """summary.json's ``breakdown.trace``: the headline is the median step (by exposed comm)
    of the last rank to arrive at each step's collectives (``last_arrivals``); each rank's
    own median step and steps follow, and the ranks whose trace failed."""
    out: dict = {
        "method": "trace",
        "how": "interval arithmetic over torch.profiler events (train/measure/trace_breakdown.py); per "
        "step the profiled rank with the least exposed comm, then the step with the median "
        "exposed comm",
        "ranks": {},
        "errors": {str(k): v for k, v in errors.items()},
    }
    if not any(per_rank.values()):
        out["unavailable"] = "; ".join(errors.values()) or "no profiled steps"
        return out
    out.update(median_breakdown(last_arrivals(per_rank)))
    for rank, rank_steps in sorted(per_rank.items()):
        out["ranks"][str(rank)] = {**median_breakdown(rank_steps), "steps": rank_steps}
    return out


def twin_breakdown(
    layout_name: str,
    *,
    step_s: float,
    twin_step_s: float,
    twin_step_s_per_rank: dict[int, float],
    timed_step_s: float | None = None,
) -> dict:
    """summary.json's ``breakdown.twin``: exposed comm ≈ synchronised step − no-sync twin
    step, both medians of steps run in alternation (``step_s``: the synchronised ones).

    ``twin_step_s``: the median over the twin steps of the slowest rank's time in each (a
    synchronised step waits for it too); ``twin_step_s_per_rank``: each rank's own median.
    Only exposed comm is measured this way; compute, overlap and idle are not separable (null).
    """
    twin_step = twin_step_s
    exposed = max(0.0, step_s - twin_step)
    out = {
        "method": "twin",
        "how": "median synchronised step minus the median no-sync twin step (each the "
        "slowest rank's), run in alternating pairs after the timed steps",
        "skips": layout(layout_name).twin_skips,
        "step_s": step_s,
        "timed_step_s": timed_step_s,
        "twin_step_s": twin_step,
        "twin_step_s_per_rank": {str(k): v for k, v in sorted(twin_step_s_per_rank.items())},
        "compute_s": None,
        "comm_s": None,
        "overlapped_comm_s": None,
        "exposed_comm_s": exposed,
        "idle_s": None,
        # The twin step itself: compute, idle and everything that is not skipped comm.
        "not_comm_s": twin_step,
    }
    out.update(shares(out))
    return out


def hta_breakdown(trace_dir: str | Path, profiled_steps: int) -> dict:
    """summary.json's ``breakdown.hta`` on GPU traces: Holistic Trace Analysis' temporal
    breakdown and comm/comp overlap, per rank, divided over the profiled steps.

    Optional: without ``holistictraceanalysis`` installed it says so and nothing else.
    """
    try:
        from hta.trace_analysis import TraceAnalysis  # pip install HolisticTraceAnalysis
    except ImportError:
        return {"method": "hta", "unavailable": "holistictraceanalysis is not installed"}
    try:
        analysis = TraceAnalysis(trace_dir=str(trace_dir))
        temporal = analysis.get_temporal_breakdown(visualize=False)
        overlap = analysis.get_comm_comp_overlap(visualize=False)
        # (kernel types over all ranks, kernels per rank): the second has a rank column.
        kernels = analysis.get_gpu_kernel_breakdown(visualize=False)[1]
    except Exception as exc:  # HTA raises bare Exceptions on traces it cannot parse
        return {"method": "hta", "unavailable": f"HTA failed: {type(exc).__name__}: {exc}"}
    ranks = {}
    for _, row in temporal.iterrows():
        rank = int(row["rank"])
        comm_us = float(
            kernels[(kernels["rank"] == rank) & (kernels["kernel_type"] == "COMMUNICATION")][
                "sum"
            ].sum()
        )
        overlap_pct = float(overlap[overlap["rank"] == rank]["comp_comm_overlap_pctg"].iloc[0])
        per_step = 1e6 * profiled_steps
        seconds = {
            "step_s": float(row["kernel_time(us)"]) / per_step,
            "compute_s": float(row["compute_time(us)"]) / per_step,
            "comm_s": comm_us / per_step,
            "overlapped_comm_s": comm_us * overlap_pct / 100 / per_step,
            "exposed_comm_s": comm_us * (1 - overlap_pct / 100) / per_step,
            "idle_s": float(row["idle_time(us)"]) / per_step,
        }
        ranks[str(rank)] = {**seconds, **shares(seconds)}
    if not ranks:
        return {"method": "hta", "unavailable": "HTA found no GPU kernels"}
    out = {
        "method": "hta",
        "how": "HTA temporal breakdown and comm/comp overlap over the whole profiled window",
        **median_breakdown(list(ranks.values())),
        "ranks": ranks,
    }
    return out


# -- achieved bandwidth ------------------------------------------------------------------------


def link_rate(
    *, cluster_name: str, applied_link: dict | None, nodes: int, gpu_profile: dict | None
) -> tuple[float | None, str]:
    """Per-direction GB/s of the link the collectives crossed, and where the figure is from."""
    if cluster_name == "emulated" and applied_link and applied_link.get("gbps"):
        return applied_link["gbps"] / 8, f"emulated link ({applied_link['gbps']:g} Gbit/s, tc)"
    profile = gpu_profile or {}
    if nodes > 1 and profile.get("nic_gbits_per_s_per_gpu"):
        return profile["nic_gbits_per_s_per_gpu"] / 8, "gpu profile NIC per GPU"
    if nodes == 1 and profile.get("nvlink_gbytes_per_s_bidir"):
        return profile["nvlink_gbytes_per_s_bidir"] / 2, "gpu profile NVLink, per direction"
    return None, "no link rate known (loopback or unlimited link)"


def achieved_bandwidth(
    comm_bytes: dict[str, int],
    seconds_by_kind: dict[int, dict[str, list[float]]],
    *,
    group_size: int,
    link_gbytes_per_s: float | None,
    link_source: str,
) -> dict:
    """summary.json's ``achieved_bandwidth``: per collective kind, bytes per step (from
    comm_volume) over its measured busy time per step (median over profiled steps and ranks).

    algbw = bytes / time; busbw = algbw x the ring's bus factor for ``group_size`` ranks, the
    figure comparable with the link rate. The measured time includes waiting for the slowest
    rank to arrive, so both are lower bounds on what the link carried while busy.
    """
    kinds = {}
    for kind in ("all_reduce", "all_gather", "reduce_scatter"):
        size = comm_bytes.get(kind, 0)
        times = [t for per_kind in seconds_by_kind.values() for t in per_kind.get(kind, [])]
        times = [t for t in times if t > 0]
        if not size or not times:
            continue
        seconds = sorted(times)[(len(times) - 1) // 2]
        algbw = size / seconds / 1e9
        busbw = algbw * bus_factor(kind, group_size) if group_size > 1 else None
        kinds[kind] = {
            "bytes_per_step": size,
            "seconds_per_step": seconds,
            "algbw_gbytes_per_s": algbw,
            "busbw_gbytes_per_s": busbw,
            "busbw_of_link": busbw / link_gbytes_per_s if busbw and link_gbytes_per_s else None,
        }
    return {
        "kinds": kinds,
        "group_size": group_size,
        "link_gbytes_per_s": link_gbytes_per_s,
        "link_source": link_source,
        "note": "time per step is the collective's busy time on the gloo threads / NCCL "
        "kernels, waiting for peers included: a lower bound on the link's achieved rate",
    }
