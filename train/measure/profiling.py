"""Where the step went: a profiled window and a no-sync twin, run after the timed steps.

The timed steps are never profiled: ``profile_after_timed`` runs once the timed loop (and
final_loss) is done, with the loop's own step (train/runtime/rank_step.py). It runs
``profile.steps`` more real steps under torch.profiler on the ranks in ``profile.ranks``
(every rank runs them: they are collectives), the step's phases marked (train/measure/marks.py),
writes ``trace_rank<k>.json.gz`` into the run dir (opens in Perfetto), and reads the breakdown
back from that file (train/measure/trace_events.py). With ``profile.twin`` it then runs
``profile.twin_steps`` pairs of a synchronised step and a step with gradient synchronisation
skipped: exposed comm ≈ synchronised step − twin step. Twin steps still update the model (with
unsynchronised gradients) so that a twin step does the same work as a real one less the sync;
they come last, and train nothing anyone reads.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile

from train.measure.bandwidth import LinkRates, achieved_bandwidth
from train.measure.hta import hta_breakdown
from train.measure.marks import Marks, no_marks, trace_marks
from train.measure.trace_events import (
    LOSS_MARK,
    TraceError,
    breakdown_steps,
    comm_seconds_by_kind,
    load_trace,
    trace_breakdown,
)
from train.measure.twin import twin_breakdown
from train.spec.config import ProfileConfig
from train.spec.degrees import Degrees
from train.spec.rules import profiled_ranks
from train.spec.traffic import Collective

NOTE = (
    "profiled and twin steps run after the timed steps and are not in the timed figures; "
    "twin steps update the model with unsynchronised gradients"
)


class Steps(Protocol):
    """The training loop's own step (train/runtime/rank_step.py RankSteps): what is profiled
    is what was timed."""

    def draw(self, step: int) -> Any: ...  # step number -> this rank's micro-batches

    def step(self, batches: Any, *, sync: bool = True, marks: Marks = no_marks) -> torch.Tensor:
        """The mean loss of the step; ``sync=False``: no gradient synchronisation."""
        ...

    def reduce_loss(self, loss: torch.Tensor) -> float: ...  # over ranks (a collective)


@dataclass(frozen=True)
class TimedBaseline:
    """What rank 0 compares the profiled steps with: the timed steps, their bytes, the link."""

    layout_name: str
    timed_step_s: float | None  # median of the timed steps (rank 0's; None elsewhere)
    timed_loop_s: float | None
    # The step's collectives (train/spec/traffic.py), where their groups sit, and the links
    # inside and across nodes: what achieved bandwidth is measured against, group by group.
    collectives: list[Collective]
    degrees: Degrees
    nproc_per_node: int
    links: LinkRates


@dataclass(frozen=True)
class ProfileResult:
    """summary.json's ``breakdown`` (per method), ``achieved_bandwidth`` and ``profile``."""

    breakdown: dict[str, Any]
    achieved_bandwidth: dict[str, Any] | None
    profile: dict[str, Any]


def profile_after_timed(
    profile_cfg: ProfileConfig,
    steps: Steps,
    baseline: TimedBaseline,
    *,
    rank: int,
    world_size: int,
    first_step: int,
    run_dir: Path,
    device: torch.device,
) -> ProfileResult | None:
    """Run the profiled window and the twin on every rank; rank 0 gets the result (other
    ranks: None)."""
    local: dict[str, Any] = {"rank": rank}
    step = first_step
    if profile_cfg.enabled:
        traced_here = rank in profiled_ranks(profile_cfg, world_size)
        window, profiler = _profiled_window(profile_cfg.steps, steps, traced_here, step, device)
        local.update(window)
        if profiler is not None:
            local.update(_export(profiler, run_dir / f"trace_rank{rank}.json.gz"))
        step += profile_cfg.steps
    if profile_cfg.twin and world_size > 1:
        local["twin"] = _twin_window(profile_cfg.twin_steps, steps, step, device)
    gathered = [None] * world_size
    if dist.is_initialized():
        dist.all_gather_object(gathered, local)
    else:
        gathered = [local]
    if rank != 0:
        return None
    return _result(profile_cfg, gathered, baseline, run_dir=run_dir, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profiled_window(
    n_steps: int, steps: Steps, traced: bool, first_step: int, device: torch.device
) -> tuple[dict[str, Any], profile | None]:
    """``n_steps`` steps, under the profiler and marked on a traced rank (the others run them
    too: they are collectives): their seconds and the window's, and the profiler (traced)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = profile(activities=activities) if traced else contextlib.nullcontext()
    marks = trace_marks if traced else no_marks
    step_times = []
    window_started = time.perf_counter()
    with profiler:
        for step in range(first_step, first_step + n_steps):
            batches = steps.draw(step)
            started = time.perf_counter()
            with marks(f"step#{step}"):
                loss = steps.step(batches, sync=True, marks=marks)
                with marks(LOSS_MARK):
                    steps.reduce_loss(loss)  # as the timed steps do; waits for the device
            step_times.append(time.perf_counter() - started)
    window = {"profiled_step_s": step_times, "window_s": time.perf_counter() - window_started}
    return window, profiler if traced else None


def _export(profiler: profile, path: Path) -> dict[str, Any]:
    """Write the trace (opens in Perfetto) and read this rank's breakdown back from it."""
    started = time.perf_counter()
    profiler.export_chrome_trace(str(path))
    out: dict[str, Any] = {"export_s": time.perf_counter() - started, "trace": path.name}
    started = time.perf_counter()
    try:
        events = load_trace(path)
        out["steps"] = [s.as_dict() for s in breakdown_steps(events)]
        out["seconds_by_kind"] = comm_seconds_by_kind(events)
    except TraceError as exc:
        out["error"] = str(exc)
    out["parse_s"] = time.perf_counter() - started
    return out


def _twin_window(
    twin_steps: int, steps: Steps, first_step: int, device: torch.device
) -> dict[str, list[float]]:
    """This rank's seconds of ``twin_steps`` pairs: a synchronised step as timed (loss
    all-reduce included), then a no-sync step (no gradient sync, no loss all-reduce).

    Pairs, not the timed median against a later twin: on a shared machine the load drifts
    between the timed window and the twin, and the difference would measure the drift.
    """
    synced, twin = [], []
    step = first_step
    for _ in range(twin_steps):
        batches = steps.draw(step)
        started = time.perf_counter()
        steps.reduce_loss(steps.step(batches))
        synced.append(time.perf_counter() - started)
        batches = steps.draw(step + 1)
        if dist.is_initialized():
            dist.barrier()  # start together, as a synchronised step would
        started = time.perf_counter()
        steps.step(batches, sync=False)
        _sync(device)
        twin.append(time.perf_counter() - started)
        step += 2
    return {"synced": synced, "twin": twin}


def _result(
    profile_cfg: ProfileConfig,
    gathered: list[dict],
    baseline: TimedBaseline,
    *,
    run_dir: Path,
    device: torch.device,
) -> ProfileResult:
    """Rank 0: every rank's windows, read into summary.json's three keys."""
    breakdown: dict[str, Any] = {}
    record: dict[str, Any] = {"note": NOTE}
    achieved = None
    world_size = len(gathered)
    if profile_cfg.enabled:
        traced = [g for g in gathered if "trace" in g]
        breakdown["trace"] = _by_rank_breakdown(traced)
        if device.type == "cuda":
            breakdown["hta"] = _hta(run_dir, [g["trace"] for g in traced], profile_cfg.steps)
        achieved = _achieved_bandwidth(traced, baseline, world_size)
        record.update(_window_record(profile_cfg.steps, gathered, traced, baseline))
    if profile_cfg.twin:
        breakdown["twin"] = _twin_result(gathered, baseline, world_size)
    return ProfileResult(breakdown=breakdown, achieved_bandwidth=achieved, profile=record)


def _by_rank_breakdown(traced: list[dict]) -> dict:
    per_rank = {g["rank"]: g["steps"] for g in traced if "steps" in g}
    errors = {g["rank"]: g["error"] for g in traced if "error" in g}
    return trace_breakdown(per_rank, errors)


def _achieved_bandwidth(
    traced: list[dict], baseline: TimedBaseline, world_size: int
) -> dict[str, Any] | None:
    """Bytes per step over the profiled collectives' busy time (None on one rank)."""
    seconds_by_kind = {g["rank"]: g["seconds_by_kind"] for g in traced if "steps" in g}
    if world_size == 1 or not seconds_by_kind:
        return None
    return achieved_bandwidth(
        seconds_by_kind,
        collectives=baseline.collectives,
        degrees=baseline.degrees,
        nproc_per_node=baseline.nproc_per_node,
        links=baseline.links,
    )


def _window_record(
    n_steps: int, gathered: list[dict], traced: list[dict], baseline: TimedBaseline
) -> dict[str, Any]:
    """summary.json's ``profile``: which ranks were traced, and what profiling cost."""
    parsed = sorted(g["rank"] for g in traced if "steps" in g)
    ranks = parsed + sorted(g["rank"] for g in traced if "error" in g)
    rank0 = gathered[0]
    profiled = statistics.median(rank0["profiled_step_s"])
    cost_s = max(g["window_s"] + g.get("export_s", 0) + g.get("parse_s", 0) for g in gathered)
    timed_step_s, timed_loop_s = baseline.timed_step_s, baseline.timed_loop_s
    return {
        "ranks": ranks,
        "steps": n_steps,
        "traces": [g["trace"] for g in traced],
        # Rank 0's wall time of each profiled step, as the timed steps are clocked.
        "profiled_step_s": rank0["profiled_step_s"],
        "cost": {
            "profiled_step_median_s": profiled,
            # How much slower a step runs under the profiler (the timed steps are not).
            "profiled_step_slowdown": profiled / timed_step_s - 1 if timed_step_s else None,
            "window_export_parse_s": cost_s,
            "window_s": max(g["window_s"] for g in gathered),
            "export_s": max(g.get("export_s", 0) for g in gathered),
            "parse_s": max(g.get("parse_s", 0) for g in gathered),
            # The extra wall time profiling adds, relative to the timed loop's.
            "of_timed_loop": cost_s / timed_loop_s if timed_loop_s else None,
        },
    }


def _twin_result(gathered: list[dict], baseline: TimedBaseline, world_size: int) -> dict:
    if world_size == 1:
        return {"method": "twin", "unavailable": "one rank: no sync to skip"}
    # Every twin step starts at a barrier; a synchronised step would have ended with the
    # slowest rank, so each pair's twin step is the slowest rank's.
    twin_times = [g["twin"]["twin"] for g in gathered]
    slowest = [max(times) for times in zip(*twin_times, strict=True)]
    return twin_breakdown(
        baseline.layout_name,
        step_s=statistics.median(gathered[0]["twin"]["synced"]),
        twin_step_s=statistics.median(slowest),
        twin_step_s_per_rank={g["rank"]: statistics.median(g["twin"]["twin"]) for g in gathered},
        timed_step_s=baseline.timed_step_s,
    )


def _hta(run_dir: Path, traces: list[str], steps: int) -> dict:
    """HTA reads every trace in a folder: give it one holding only this run's traces."""
    folder = run_dir / "hta_traces"
    folder.mkdir(exist_ok=True)
    for name in traces:
        link = folder / name
        if not link.exists():
            link.symlink_to(Path("..") / name)
    return hta_breakdown(folder, steps)
