"""Find a run's rank processes (from /proc), to kill one the way a crash would."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


def rank_pids(config_path: Path) -> dict[int, int]:
    """RANK -> pid of every live `python -m train... --config config_path` process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(config_path).encode() not in argv or b"-m" not in argv:
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if b"RANK" in env and b"TORCHELASTIC_RUN_ID" in env:  # a rank, not the agent
            found[int(env[b"RANK"])] = int(entry.name)
    return found


def wait_for_steps(metrics: Path, steps: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists():
            lines = [x for x in metrics.read_text().splitlines() if x.strip()]
            if len(lines) >= steps and json.loads(lines[-1])["step"] >= steps:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{metrics}: fewer than {steps} steps after {timeout} s")


def rank_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def kill_rank(config_path: Path, rank: int) -> int:
    pid = rank_pids(config_path)[rank]
    os.kill(pid, signal.SIGKILL)
    return pid
