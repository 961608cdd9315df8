"""Submitted Slurm jobs: their record in the run dir, their states, following them to the end.

- `RUN_DIR/slurm_jobs.json` names the jobs a driver submitted there. A later driver on the
  same dir is refused while any of them is still pending or running (the run-dir lock ends
  with the driver that submitted; the jobs do not), so one command run twice cannot submit
  jobs that overwrite each other's files.
- A job's state comes from `squeue -t all` (slurmctld keeps a finished job for MinJobAge,
  300 s by default), then from `sacct` (accounting, where the cluster keeps it); a job
  neither knows has ended, its state unknown: the run's summary.json then decides.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from launch.errors import ConfigError
from train.files.safe_files import write_atomic

JOBS_FILE = "slurm_jobs.json"
# States after which a job runs nothing more (squeue/sacct spell them like this).
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "ENDED",  # ours: neither squeue nor sacct knows the job any more
}
# Poll gently: every second at first (short jobs end soon), every 10 s on long sweeps.
POLL_FIRST_S, POLL_MAX_S = 1.0, 10.0


@dataclass
class JobState:
    state: str
    exit_code: int | None = None

    @property
    def ended(self) -> bool:
        return self.state in ENDED


def record_jobs(root: Path, jobs: dict[str, str]) -> None:
    record = {"submitted": datetime.now().isoformat(timespec="seconds"), "jobs": jobs}
    write_atomic(root / JOBS_FILE, json.dumps(record, indent=2) + "\n")


def recorded_jobs(root: Path) -> dict[str, str]:
    try:
        jobs = json.loads((root / JOBS_FILE).read_text()).get("jobs") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(name): str(job_id) for name, job_id in jobs.items()}


def _squeue(ids: list[str]) -> dict[str, JobState]:
    argv = ["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    # An id slurmctld has forgotten makes squeue fail ("Invalid job id") for the whole list.
    return _parse(result.stdout, 2) if result.returncode == 0 else {}


def _sacct(ids: list[str]) -> dict[str, JobState]:
    if not shutil.which("sacct"):
        return {}
    argv = ["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID,State,ExitCode"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    return _parse(result.stdout, 3) if result.returncode == 0 else {}


def _parse(text: str, fields: int) -> dict[str, JobState]:
    states = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != fields:
            continue
        # sacct says "CANCELLED by 0"; ExitCode is "code:signal".
        state = parts[1].split()[0] if parts[1].split() else "UNKNOWN"
        code = int(parts[2].split(":")[0]) if fields == 3 and parts[2][:1].isdigit() else None
        states[parts[0]] = JobState(state, code)
    return states


def exit_code(job_id: str) -> int | None:
    """The batch script's exit code, from slurmctld's record of the job (None if gone)."""
    argv = ["scontrol", "-o", "show", "job", job_id]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    match = re.search(r"\bExitCode=(\d+):\d+", result.stdout)
    return int(match[1]) if match else None


def job_states(ids: list[str]) -> dict[str, JobState]:
    """Each job's state; ids squeue and sacct both no longer know are ENDED."""
    states = _squeue(ids)
    if not states and len(ids) > 1:
        for job_id in ids:  # one forgotten id may fail the whole list: ask for each
            states.update(_squeue([job_id]))
    missing = [i for i in ids if i not in states]
    if missing:
        states.update(_sacct(missing))
    return {i: states.get(i, JobState("ENDED")) for i in ids}


def refuse_active_jobs(root: Path) -> None:
    """A driver on a run dir whose recorded jobs still run would overwrite their files."""
    jobs = recorded_jobs(root)
    if not jobs or not shutil.which("squeue"):
        return
    states = job_states(list(jobs.values()))
    active = [job_id for job_id in jobs.values() if not states[job_id].ended]
    if active:
        listing = ", ".join(f"{job_id} {states[job_id].state}" for job_id in active)
        raise ConfigError(
            "run_dir",
            f"{root} has Slurm jobs still queued or running ({listing}): wait for them "
            f"(then python -m launch.report {root}), or stop them: scancel {' '.join(active)}",
        )


def follow(
    jobs: dict[str, str],
    show: Callable[[str], None],
    step_of: Callable[[str], str] = lambda name: "",
) -> dict[str, JobState]:
    """Poll until every job has ended; `show` gets a progress line whenever one changes."""
    started, last = time.monotonic(), ""
    while True:
        states = job_states(list(jobs.values()))
        parts = [
            f"{name} job {job_id} {states[job_id].state}{step_of(name)}"
            for name, job_id in jobs.items()
        ]
        line = "slurm: " + " · ".join(parts)
        if line != last:
            show(line)
            last = line
        if all(s.ended for s in states.values()):
            return {name: states[job_id] for name, job_id in jobs.items()}
        elapsed = time.monotonic() - started
        time.sleep(min(POLL_MAX_S, POLL_FIRST_S + elapsed / 30))
