"""The run dir of a run or sweep: taken exclusively, resumed point by point, failures kept.

- A lock (`.scaleprobe.lock`, flock) for the driver's lifetime: a second driver on the same
  dir is refused, instead of interleaving metrics.jsonl and losing a sweep. The kernel drops
  the lock however the driver ends, SIGKILL included.
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


def take_run_dir(root: Path):
    """Lock `root` for this process; the open file holds the lock until the process exits."""
    handle = (root / LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            "run_dir", f"{root} is in use by another scaleprobe driver ({holder})"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}\n")
    handle.flush()
    return handle


def finished_points(cfg: RunConfig, plans: list[RunPlan]) -> dict[str, dict]:
    """resume=true: the summaries of the points already run with this same workload."""
    root = Path(cfg.run_dir)
    if not any((plan.run_dir / "config.yaml").is_file() for plan in plans):
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
    """failed.json of every point under a sweep dir (for the report)."""
    if not directory.is_dir():
        return []
    paths = [directory / FAILED, *sorted(directory.glob(f"*/{FAILED}"))]
    out = []
    for path in paths:
        try:
            out.append({**json.loads(path.read_text()), "path": str(path)})
        except (OSError, ValueError):
            continue
    return out
