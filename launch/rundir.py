"""The run dir of a run or sweep: taken exclusively, resumed point by point, failures kept.

- A lock (`.scaleprobe.lock`, flock) for the driver's lifetime: a second driver on the same
  dir is refused, instead of interleaving metrics.jsonl and losing a sweep. The kernel drops
  the lock however the driver ends, SIGKILL included.
- Node drivers of one multi-node run (cluster=multinode, torchrun: one driver per node) may
  share the dir on a shared filesystem: node 0 owns the lock and the run's files; node k
  takes its own lock (`.scaleprobe-nodeK.lock`) and writes only its own files
  (`config-nodeK.yaml`, `launch-nodeK.log`).
- `resume=true`: a point is finished when its summary.json holds the same workload (config
  digest); finished points keep their files untouched, and the sweep keeps its id.
- A failed point leaves `failed.json` (exit code, the failing rank's last lines) for the
  report; rerunning the point removes it.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from launch.errors import ConfigError, RunFailed
from launch.plan import RunPlan, config_for
from train.spec.config import RunConfig, config_digest

FAILED = "failed.json"
LOCK = ".scaleprobe.lock"


def lock_name(node_rank: int = 0) -> str:
    return LOCK if node_rank == 0 else f".scaleprobe-node{node_rank}.lock"


def config_name(node_rank: int = 0) -> str:
    """The config a node's ranks read: node 0's is the run's, node k writes its own copy."""
    return "config.yaml" if node_rank == 0 else f"config-node{node_rank}.yaml"


def take_run_dir(root: Path, node_rank: int = 0):
    """Lock `root` for this process; the open file holds the lock until the process exits."""
    handle = (root / lock_name(node_rank)).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        node = f" as node {node_rank}" if node_rank else ""
        raise ConfigError(
            "run_dir", f"{root} is in use{node} by another scaleprobe driver ({holder})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def finished_points(cfg: RunConfig, plans: list[RunPlan], node_rank: int = 0) -> dict[str, dict]:
    """resume=true: the summaries of the points already run with this same workload."""
    root = Path(cfg.run_dir)
    if not any((plan.run_dir / config_name(node_rank)).is_file() for plan in plans):
        raise ConfigError("resume", f"{root} holds no run or sweep of these world sizes")
    finished = {}
    for plan in plans:
        path = plan.run_dir / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # missing or unreadable: run the point again
        if isinstance(summary, dict) and summary.get("config_digest") == config_digest(
            config_for(cfg, plan, "")
        ):
            finished[plan.name] = summary
    return finished


def previous_sweep_id(plans: list[RunPlan]) -> str | None:
    """The sweep id of the runs being resumed, so old and new points stay one sweep."""
    for plan in plans:
        path = plan.run_dir / "config.yaml"
        if path.is_file():
            sweep_id = (OmegaConf.load(path).get("resolved") or {}).get("sweep_id")
            if sweep_id:
                return str(sweep_id)
    return None


def record_failure(plan: RunPlan, exc: RunFailed) -> Path:
    path = plan.run_dir / FAILED
    record = {
        "name": plan.name,
        "world_size": plan.world_size,
        "exit_code": exc.returncode,
        "error": str(exc).splitlines()[0],
        "last_lines": exc.log_tail.splitlines(),
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def failed_points(directory: Path) -> list[dict]:
    """Every point under a sweep dir that has no summary: failed.json where the driver
    recorded the failure, else a point written but never finished (a Slurm job that failed
    while nobody followed it, or one still running). For the report."""
    if not directory.is_dir():
        return []
    out = []
    for point in [directory, *sorted(p for p in directory.iterdir() if p.is_dir())]:
        if (point / "summary.json").is_file():
            continue
        try:
            out.append({**json.loads((point / FAILED).read_text()), "path": str(point / FAILED)})
        except (OSError, ValueError):
            unfinished = unfinished_point(point)
            if unfinished:
                out.append(unfinished)
    return out


def unfinished_point(point: Path) -> dict | None:
    """A point with a config.yaml but neither summary.json nor failed.json."""
    try:
        cfg = OmegaConf.load(point / "config.yaml")
        world_size = int(cfg.cluster.nodes) * int(cfg.cluster.nproc_per_node)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    jobs = sorted(point.glob("slurm-*.out"))
    hint = f"; its Slurm output: {jobs[-1]}" if jobs else ""
    return {
        "name": point.name,
        "world_size": world_size,
        "exit_code": None,
        "error": "no summary.json (the run failed, was stopped, or is still running)" + hint,
        "last_lines": [],
        "path": str(point / "config.yaml"),
    }
