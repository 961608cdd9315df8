"""A point the driver was stopped in (Ctrl-C, SIGTERM, SIGHUP): `stopped.json` in its dir, so
the report lists it as stopped, not as a failure of the run, and says where it stopped.

The record is the driver's (launch/pipeline.py execute); a rerun of the point removes it.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from launch.plan import RunPlan
from launch.rundir import FAILED, STOPPED
from train.files.safe_files import write_atomic


def record_stops(
    plans: list[RunPlan],
    running: RunPlan | None,
    done: set[str],
    signal_name: str,
    files: tuple[str, str],
    steps: int | None,
) -> None:
    """stopped.json in the point running when ``signal_name`` stopped the driver, and in each
    point after it that never started: neither failed (no failed.json), nor finished. A point
    whose result is there (``files``: its progress and result file) finished: rank 0 wrote
    it before the stop reached the driver (run_nodes removes a stale one when a point starts)."""
    progress_file, result_file = files
    for plan in plans:
        if plan.name in done or (plan.run_dir / FAILED).exists():
            continue
        if (plan.run_dir / result_file).exists():
            continue
        record_stop(plan, signal_name, progress_file, steps, started=plan is running)


def record_stop(
    plan: RunPlan, signal_name: str, progress_file: str, steps: int | None, started: bool = True
) -> Path:
    """stopped.json: the signal, rank 0's last step (an earlier run's progress file does not
    count for a point that never started), the time, and that as one line (``error``)."""
    record = {
        "name": plan.name,
        "world_size": plan.world_size,
        "signal": signal_name,
        "started": started,
        "step": last_step(plan.run_dir / progress_file) if started else None,
        "steps": steps,
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    record["error"] = stop_line(record)
    return write_atomic(plan.run_dir / STOPPED, json.dumps(record, indent=2) + "\n")


def last_step(path: Path) -> int | None:
    """The step of the last whole record rank 0 appended to its progress file; None when it
    logged none (stopped while starting)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by the stop
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            return record["step"]
    return None


def stop_line(record: dict) -> str:
    step, steps = record.get("step"), record.get("steps")
    at = "before its first step" if step is None else f"at step {step}"
    if not record.get("started", True):
        at = "before it started"
    return f"stopped by {record.get('signal')} {at}" + (f" of {steps}" if steps and step else "")


def clear_stop(plan: RunPlan) -> None:
    """The point runs again: an earlier stop no longer describes it."""
    (plan.run_dir / STOPPED).unlink(missing_ok=True)
