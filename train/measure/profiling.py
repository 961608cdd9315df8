"""Where the step went: a profiled window and a no-sync twin, run after the timed steps.

The timed steps are never profiled: ``profile_after_timed`` runs once the timed loop (and
final_loss) is done. It runs ``profile.steps`` more real steps under torch.profiler on the
ranks in ``profile.ranks`` (every rank runs them: they are collectives), writes
``trace_rank<k>.json.gz`` into the run dir (opens in Perfetto), and reads the breakdown back
from that file (train/measure/trace_breakdown.py). With ``profile.twin`` it then runs ``profile.twin_steps``
pairs of a synchronised step and a step with gradient synchronisation skipped: exposed
comm ≈ synchronised step − twin step. Twin
steps still update the model (with unsynchronised gradients) so that a twin step does the
same work as a real one less the sync; they come last, and train nothing anyone reads.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, record_function

from train.measure.trace_breakdown import (
    LOSS_MARK,
    TraceError,
    achieved_bandwidth,
    breakdown_steps,
    comm_seconds_by_kind,
    hta_breakdown,
    load_trace,
    trace_breakdown,
    twin_breakdown,
)
from train.spec.checks import profiled_ranks
from train.spec.config import ProfileConfig

_marks_on = False  # record_function marks only inside the profiled window: none while timed


def mark(name: str) -> contextlib.AbstractContextManager:
    """A named range in the trace (forward, backward, optimizer) while profiling; else nothing."""
    return record_function(name) if _marks_on else contextlib.nullcontext()


@dataclass
class StepFunctions:
    """What one step is, handed in by the training loop (train/runtime/worker.py)."""

    draw: Callable[[int], Any]  # step number -> this rank's micro-batches
    step: Callable[[Any, bool], torch.Tensor]  # (batches, sync) -> mean loss of the step
    reduce_loss: Callable[[torch.Tensor], float]  # the logged loss over ranks (a collective)


def profile_after_timed(
    profile_cfg: ProfileConfig,
    steps: StepFunctions,
    *,
    rank: int,
    world_size: int,
    first_step: int,
    run_dir: Path,
    device: torch.device,
    layout_name: str,
    timed_step_s: float | None,
    timed_loop_s: float | None,
    comm_bytes: dict[str, int],
    link: tuple[float | None, str],
) -> dict | None:
    """Run the profiled window and the twin on every rank; rank 0 gets summary.json's
    ``breakdown``, ``achieved_bandwidth`` and ``profile`` keys (other ranks: None)."""
    local: dict[str, Any] = {"rank": rank}
    step = first_step
    if profile_cfg.enabled:
        local.update(_profiled_window(profile_cfg, steps, rank, world_size, step, run_dir, device))
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
    return _summary_fields(
        profile_cfg,
        gathered,
        world_size=world_size,
        run_dir=run_dir,
        device=device,
        layout_name=layout_name,
        timed_step_s=timed_step_s,
        timed_loop_s=timed_loop_s,
        comm_bytes=comm_bytes,
        link=link,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _profiled_window(
    profile_cfg: ProfileConfig,
    steps: StepFunctions,
    rank: int,
    world_size: int,
    first_step: int,
    run_dir: Path,
    device: torch.device,
) -> dict:
    global _marks_on
    traced = rank in profiled_ranks(profile_cfg, world_size)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = profile(activities=activities) if traced else contextlib.nullcontext()
    step_times = []
    window_started = time.perf_counter()
    _marks_on = traced
    try:
        with profiler:
            for step in range(first_step, first_step + profile_cfg.steps):
                batches = steps.draw(step)
                started = time.perf_counter()
                with mark(f"step#{step}"):
                    loss = steps.step(batches, True)
                    with mark(LOSS_MARK):
                        steps.reduce_loss(loss)  # as the timed steps do; waits for the device
                step_times.append(time.perf_counter() - started)
    finally:
        _marks_on = False
    out: dict[str, Any] = {
        "profiled_step_s": step_times,
        "window_s": time.perf_counter() - window_started,
    }
    if not traced:
        return out
    path = run_dir / f"trace_rank{rank}.json.gz"
    started = time.perf_counter()
    profiler.export_chrome_trace(str(path))
    out["export_s"] = time.perf_counter() - started
    out["trace"] = path.name
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
    twin_steps: int, steps: StepFunctions, first_step: int, device: torch.device
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
        steps.reduce_loss(steps.step(batches, True))
        synced.append(time.perf_counter() - started)
        batches = steps.draw(step + 1)
        if dist.is_initialized():
            dist.barrier()  # start together, as a synchronised step would
        started = time.perf_counter()
        steps.step(batches, False)
        _sync(device)
        twin.append(time.perf_counter() - started)
        step += 2
    return {"synced": synced, "twin": twin}


def _summary_fields(
    profile_cfg: ProfileConfig,
    gathered: list[dict],
    *,
    world_size: int,
    run_dir: Path,
    device: torch.device,
    layout_name: str,
    timed_step_s: float | None,
    timed_loop_s: float | None,
    comm_bytes: dict[str, int],
    link: tuple[float | None, str],
) -> dict:
    breakdown: dict[str, Any] = {}
    record: dict[str, Any] = {
        "note": "profiled and twin steps run after the timed steps and are not in the timed "
        "figures; twin steps update the model with unsynchronised gradients",
    }
    achieved = None
    if profile_cfg.enabled:
        traced = [g for g in gathered if "trace" in g]
        per_rank = {g["rank"]: g["steps"] for g in traced if "steps" in g}
        errors = {g["rank"]: g["error"] for g in traced if "error" in g}
        breakdown["trace"] = trace_breakdown(per_rank, errors)
        if device.type == "cuda":
            breakdown["hta"] = _hta(run_dir, [g["trace"] for g in traced], profile_cfg.steps)
        seconds_by_kind = {g["rank"]: g["seconds_by_kind"] for g in traced if "steps" in g}
        if world_size > 1 and seconds_by_kind:
            achieved = achieved_bandwidth(
                comm_bytes,
                seconds_by_kind,
                group_size=world_size,
                link_gbytes_per_s=link[0],
                link_source=link[1],
            )
        rank0 = gathered[0]
        profiled = statistics.median(rank0["profiled_step_s"])
        cost_s = max(g["window_s"] + g.get("export_s", 0) + g.get("parse_s", 0) for g in gathered)
        record.update(
            ranks=sorted(per_rank) + sorted(errors),
            steps=profile_cfg.steps,
            traces=[g["trace"] for g in traced],
            # Rank 0's wall time of each profiled step, as the timed steps are clocked.
            profiled_step_s=rank0["profiled_step_s"],
            cost={
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
        )
    if profile_cfg.twin:
        if world_size == 1:
            breakdown["twin"] = {"method": "twin", "unavailable": "one rank: no sync to skip"}
        else:
            # Every twin step starts at a barrier; a synchronised step would have ended with
            # the slowest rank, so each pair's twin step is the slowest rank's.
            twin_times = [g["twin"]["twin"] for g in gathered]
            slowest = [max(times) for times in zip(*twin_times, strict=True)]
            breakdown["twin"] = twin_breakdown(
                layout_name,
                step_s=statistics.median(gathered[0]["twin"]["synced"]),
                twin_step_s=statistics.median(slowest),
                twin_step_s_per_rank={
                    g["rank"]: statistics.median(g["twin"]["twin"]) for g in gathered
                },
                timed_step_s=timed_step_s,
            )
    return {"breakdown": breakdown, "achieved_bandwidth": achieved, "profile": record}


def _hta(run_dir: Path, traces: list[str], steps: int) -> dict:
    """HTA reads every trace in a folder: give it one holding only this run's traces."""
    folder = run_dir / "hta_traces"
    folder.mkdir(exist_ok=True)
    for name in traces:
        link = folder / name
        if not link.exists():
            link.symlink_to(Path("..") / name)
    return hta_breakdown(folder, steps)
