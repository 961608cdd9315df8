"""One rank's run, in the order it happens: set up (train/runtime/rank_setup.py), the timed
steps (train/runtime/loop.py), where the step went (train/measure/profiling.py), and rank 0's
summary.json (train/runtime/summarize.py)."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch.distributed as dist

from train.files.heartbeat import Heartbeat, beat_interval_s, stall_timeout_s
from train.measure.bandwidth import link_rates
from train.measure.profiling import ProfileResult, TimedBaseline, profile_after_timed
from train.runtime import distributed
from train.runtime.loop import Trained, train
from train.runtime.rank_setup import RankRun, set_up
from train.runtime.summarize import run_summary
from train.spec.config import RunConfig, load_run_config


def run(config_path: str | Path) -> dict | None:
    """``python -m train --config RUN_DIR/config.yaml``: rank 0 returns summary.json's dict."""
    config_path = Path(config_path)
    cfg = load_run_config(config_path)
    rank = distributed.init_distributed(
        cfg.fabric.nccl_env, timeout_s=cfg.cluster.collective_timeout_s
    )
    # The driver's watchdog reads it (launch/launchers/watchdog.py).
    interval = beat_interval_s(stall_timeout_s(cfg.cluster))
    try:
        with Heartbeat(config_path.parent, rank.rank, interval) as heartbeat:
            summary = run_rank(cfg, config_path.parent, rank, heartbeat)
            # Leave together: a gloo rank that tears down while rank 0 still writes the
            # summary can abort ("terminate called without an active exception").
            if dist.is_initialized():
                dist.barrier()
        return summary
    finally:
        distributed.shutdown()


def run_rank(
    cfg: RunConfig, run_dir: Path, rank: distributed.RankInfo, heartbeat: Heartbeat | None = None
) -> dict | None:
    """One run on a process group that is already up (several runs can share one)."""
    run = set_up(cfg, run_dir, rank)
    trained = train(run, on_step=heartbeat.at if heartbeat else None)
    if heartbeat:
        heartbeat.at(phase="after steps")
    profiled = profile(run, trained)  # every rank: its steps are collectives
    if run.sinks is None:  # rank 0 alone writes the summary
        return None
    summary = run_summary(run, trained, profiled)
    run.sinks.log_summary(summary, run_dir / "summary.json")
    return summary.to_dict()


def profile(run: RankRun, trained: Trained) -> ProfileResult | None:
    """Where the step went: extra steps after the timed ones and after final_loss was taken,
    so neither changes; the loop's own step and rows (run.steps)."""
    cfg, rank = run.cfg, run.rank
    if not (cfg.profile.enabled or cfg.profile.twin):
        return None
    timed = run.sinks.timed_step_times() if run.sinks else None
    baseline = TimedBaseline(
        layout_name=run.layout_plan.name,
        timed_step_s=statistics.median(timed) if timed else None,
        timed_loop_s=trained.timed_loop_s,
        collectives=run.collectives,
        degrees=run.layout_plan.degrees,
        nproc_per_node=cfg.cluster.nproc_per_node,
        links=link_rates(
            cluster_name=cfg.cluster.name,
            applied_link=cfg.resolved.applied_link,
            # The profile's NIC and NVLink rates describe a GPU: none for CPU ranks.
            gpu=cfg.gpu if rank.device.type == "cuda" else None,
        ),
    )
    return profile_after_timed(
        cfg.profile,
        run.steps,
        baseline,
        rank=rank.rank,
        world_size=rank.world_size,
        first_step=cfg.train.steps + 1,
        run_dir=run.run_dir,
        device=rank.device,
    )
