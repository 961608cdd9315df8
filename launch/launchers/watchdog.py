"""The driver's watchdog over a run's ranks (cluster.stall_timeout_s), and killing them by pid.

Each rank's heartbeat (train/files/heartbeat.py) keeps changing while its process runs, even
inside a collective. A rank whose heartbeat has not changed for the stall timeout, while no
rank has finished a step in that time, is stopped (SIGSTOP, a debugger), frozen (a hung
mount) or lost: its peers wait in their next collective until it times out, and nothing else
would say which rank it was. The watchdog names it with its last step; the driver then kills
every rank it can see and its launcher (launch/launchers/local.py), records failed.json, and
exits 1. Ranks that beat but finish no step (a long compile or checkpoint save) are not
stalled: the collective timeout ends a real hang among them. Changes are timed on the
driver's clock, never by file times, which other nodes' clocks and filesystems set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from train.files.heartbeat import DONE, Beat, beat_interval_s, read_heartbeats


class StallWatch:
    def __init__(
        self, run_dir: Path, timeout_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.run_dir, self.timeout_s, self.clock = run_dir, timeout_s, clock
        self.last_progress = clock()
        self.best_step = 0
        self.beats: dict[int, Beat] = {}
        self.changed_at: dict[int, tuple[tuple, float]] = {}  # rank -> (content, when)
        # Read the heartbeats as often as ranks write them, not at every poll of the
        # launcher: thousands of small files on a shared filesystem are not free.
        self.read_every_s, self.read_at = beat_interval_s(timeout_s), float("-inf")

    def saw_progress(self) -> None:
        """A step record arrived from rank 0 (its progress file)."""
        self.last_progress = self.clock()

    def stalled(self) -> str | None:
        """Why the run is stalled (the silent ranks, their last steps), or None."""
        if self.timeout_s <= 0 or self.clock() - self.read_at < self.read_every_s:
            return None
        now = self.read_at = self.clock()
        for rank, beat in read_heartbeats(self.run_dir).items():
            if beat.phase == DONE:  # ended: its process is gone, not silent
                self.changed_at.pop(rank, None)
                continue
            content = (beat.pid, beat.phase, beat.step, beat.beat)
            if rank not in self.changed_at or self.changed_at[rank][0] != content:
                self.changed_at[rank] = (content, now)
            if beat.step > self.best_step:
                self.best_step, self.last_progress = beat.step, now
            self.beats[rank] = beat
        silent = sorted(
            r for r, (_, when) in self.changed_at.items() if now - when >= self.timeout_s
        )
        if not silent or now - self.last_progress < self.timeout_s:
            return None
        return self.message(silent)

    def message(self, silent: list[int]) -> str:
        def said(rank: int) -> str:
            beat = self.beats[rank]
            return f"rank {rank} (pid {beat.pid} on {beat.host}) {beat.where}"

        others = [r for r in sorted(self.beats) if r not in silent]
        also = f"; still answering: {', '.join(said(r) for r in others)}" if others else ""
        return (
            f"stalled: {', '.join(said(r) for r in silent)} stopped answering (stopped, frozen "
            f"or lost) and no rank finished a step in {self.timeout_s:g} s "
            f"(cluster.stall_timeout_s){also}; every rank and the launcher were stopped"
        )


def kill_ranks(run_dir: Path) -> list[int]:
    """SIGKILL every rank of the run in ``run_dir`` running on this host (from their
    heartbeats; a pid counts only while its command line names the run dir). A rank stopped
    with SIGSTOP, or orphaned by a launcher killed before it could stop its ranks, is not
    reached through the launcher: ranks run in sessions of their own. The pids killed."""
    here, killed = socket.gethostname(), []
    for beat in read_heartbeats(run_dir).values():
        if beat.host != here or not _runs_in(beat.pid, run_dir):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(beat.pid, signal.SIGKILL)
            killed.append(beat.pid)
    return killed


def _runs_in(pid: int, run_dir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(run_dir).encode() in argv
