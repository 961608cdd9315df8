"""The timed steps of a rank: draw outside the clock, step, reduce the loss, record, checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from train.measure.held_memory import memory_summary
from train.measure.metrics import StepRecord, peak_memory_bytes, peak_memory_reserved_bytes
from train.runtime.rank_setup import RankRun


@dataclass(frozen=True)
class Trained:
    """What the timed loop leaves for the profiler and the summary."""

    final_loss: float  # the last step's, over ranks (NaN when this attempt ran no step)
    timed_loop_s: float  # the loop's wall time less the time it waited on checkpoint saves
    checkpoint: dict[str, Any] | None  # saves and the step resumed from; None: off
    # Allocated (live tensors; RSS on CPU), then reserved by the caching allocator (adds its
    # cache and fragmentation; None on CPU). Taken before any profiler adds its own.
    peak_memory_bytes: int
    peak_memory_reserved_bytes: int | None
    memory: dict[str, int | None]  # the busiest rank's: params, grads, optimizer, peaks


def train(run: RankRun, on_step: Callable[[int], None] | None = None) -> Trained:
    """Steps start_step + 1 .. train.steps; those after train.warmup_steps count as timed.
    ``on_step(step)`` after each (the rank's heartbeat, train/files/heartbeat.py)."""
    steps, sinks, checkpoints = run.steps, run.sinks, run.checkpoints
    loss = float("nan")
    loop_started = time.perf_counter()
    for step in range(run.start_step + 1, run.cfg.train.steps + 1):
        # This rank's rows only, drawn before the clock starts: the step times training, not
        # data generation. Drawn here rather than by a background thread, which would compete
        # with the step for the same CPU cores; one step's rows are held at a time.
        batches = steps.draw(step)
        started = time.perf_counter()
        loss = steps.reduce_loss(steps.step(batches))  # also waits for the device: step done
        step_time = time.perf_counter() - started
        routing = steps.routing()  # MoE: the step's expert loads over ranks (not timed)
        if sinks is not None:
            sinks.log_step(step_record(run, step, loss, step_time, routing))
        checkpoints.after_step(step)  # every rank: saves are collective; outside the step time
        if on_step is not None:
            on_step(step)
    timed_loop_s = time.perf_counter() - loop_started - checkpoints.waited_s
    checkpoint = checkpoints.finish()  # an async save in flight completes here
    device = run.rank.device
    peak, reserved = peak_memory_bytes(device), peak_memory_reserved_bytes(device)
    return Trained(
        final_loss=loss,
        timed_loop_s=timed_loop_s,
        checkpoint=checkpoint,
        peak_memory_bytes=peak,
        peak_memory_reserved_bytes=reserved,
        # Every rank takes part: the summary shows the busiest rank's bytes.
        memory=memory_summary(run.layout.held_memory(), peak, reserved),
    )


def step_record(
    run: RankRun, step: int, loss: float, step_time_s: float, moe: dict | None = None
) -> StepRecord:
    """Rank 0's record of one step (train/measure/sinks.py writes it everywhere)."""
    scaler, work = run.steps.scaler, run.workload
    return StepRecord.measured(
        step=step,
        loss=loss,
        step_time_s=step_time_s,
        tokens_per_step=work.tokens_per_step,
        world_size=run.rank.world_size,
        flops_per_token=work.flops_per_token,
        peak_tflops=work.peak_tflops,
        memory_bytes=peak_memory_bytes(run.rank.device),
        timed=step > run.cfg.train.warmup_steps,
        loss_scale=scaler.get_scale() if scaler else None,
        after_restart=run.after_restart,
        repeated=step in run.sinks.earlier_steps,
        moe=moe,
    )
