"""Where a step's time went, from a profiler trace: compute, communication, the part of the
communication hidden behind compute, the exposed part, and idle.

Interval arithmetic (train/measure/intervals.py) over the trace's events, as pure functions
on event lists (testable on hand-made traces). What counts as what:

- CPU trace (gloo): communication is the ``gloo:<collective>`` work on gloo's own threads
  (``pt_gloo_runloop``; torch 2.13 records each collective there, from enqueue to completion,
  waiting for the peers included). Compute is the time the step's own thread spends inside
  profiler ops (``cpu_op``), minus the ops that only hand a collective to gloo (``c10d::*``).
  Time the step's thread spends in no op (DDP waiting for its last bucket, Python between
  ops) is neither: it is exposed comm where gloo is busy, idle where it is not. Functional
  collectives (DTensor's, EP's all-to-all) and their waits are not compute either.
- GPU trace (NCCL): communication is the NCCL kernels, compute every other kernel; the step
  window is the step's mark on the GPU timeline where the profiler recorded one. NCCL runs an
  all-to-all (EP's token dispatch) as grouped sends and receives: its kernels count as comm
  (exposed like any other) under the kind "other", not "all_to_all". On GPU the
  Holistic Trace Analysis method (train/measure/hta.py) runs as well when installed.

Per step: overlapped = comm ∩ compute, exposed = comm − compute, idle = step − (compute ∪
comm), so compute + exposed + idle is the step window exactly.

The other measurements: the no-sync twin (train/measure/twin.py), HTA, and the achieved
bandwidth of each collective kind (train/measure/bandwidth.py, from ``comm_seconds_by_kind``).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from train.measure.intervals import Interval, clip, intersect, length, subtract, union
from train.measure.step_parts import median_breakdown, shares

STEP_MARK = re.compile(r"^step#(\d+)$")  # record_function name of each profiled step
LOSS_MARK = "loss_all_reduce"  # the logged-loss all-reduce, not part of comm_volume's bytes
# Ops on the step's thread that only enqueue a collective (or wait for one): not compute.
COMM_LAUNCH_PREFIXES = ("c10d::", "record_param_comms", "nccl:", "gloo:")
# ... and functional collectives (DTensor's, EP's all-to-all), their waits and their autograd
# nodes (``GeneratedBackwardFor__c10d_functional_all_to_all_single...``), wherever the name
# puts it: a wait inside one of them is the link's time, not compute.
FUNCTIONAL_COMM = "c10d_functional"
# (what an NCCL kernel's name holds, lowercased without "_"; the collective it runs)
NCCL_KINDS = (
    ("allreduce", "all_reduce"),
    ("allgather", "all_gather"),
    ("reducescatter", "reduce_scatter"),
)


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


# -- classification ----------------------------------------------------------------------------


def comm_kind(event: TraceEvent) -> str | None:
    """The collective an event is the work of (``all_reduce``...), or None if not comm."""
    if event.name.startswith("gloo:"):
        return event.name.removeprefix("gloo:")
    if event.category == "kernel" and "nccl" in event.name.lower():
        squashed = event.name.lower().replace("_", "")
        for key, kind in NCCL_KINDS:
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
    """Compute: on a GPU trace every non-NCCL kernel; on CPU the step thread's ops, less the
    time inside functional collectives and their waits even where another op holds them (a
    functional collective's wait runs inside the first op that reads its result)."""
    if is_device_trace(events):
        return [e.interval for e in events if e.category == "kernel" and comm_kind(e) is None]
    ops = [e for e in events if e.category == "cpu_op" and e.thread == thread]
    functional = [e.interval for e in ops if FUNCTIONAL_COMM in e.name]
    compute = [
        e.interval
        for e in ops
        if not e.name.startswith(COMM_LAUNCH_PREFIXES) and FUNCTIONAL_COMM not in e.name
    ]
    return subtract(compute, functional)


def comm_intervals(events: Sequence[TraceEvent], kind: str | None = None) -> list[Interval]:
    return [
        e.interval
        for e in events
        if (k := comm_kind(e)) is not None and (kind is None or k == kind)
    ]


# -- per step ----------------------------------------------------------------------------------


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
        ("alltoall", "all_to_all"),
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


# -- over ranks --------------------------------------------------------------------------------


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
        "how": "interval arithmetic over torch.profiler events (train/measure/trace_events.py); "
        "per step the profiled rank with the least exposed comm, then the step with the median "
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
