"""Each rank's sign of life, for the driver's watchdog (launch/launchers/watchdog.py).

A rank runs a daemon thread that rewrites RUN_DIR/.heartbeat/rank<N>.json every few tenths of
a second to two seconds: its pid, host, phase and last finished step, and a beat counter. The
thread keeps beating while the rank's main thread computes or waits inside a collective (those
release the GIL); it stops when the whole process does (SIGSTOP, a freeze, a hung mount). So a
heartbeat that no longer changes names a stopped rank, and its last step says where it was.
The driver compares contents, never timestamps: node clocks and filesystem times may differ.

Also the timeouts' stated defaults, read by the ranks (the process groups) and the driver
(the watchdog), torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from train.files.safe_files import write_atomic
from train.spec.config import ClusterConfig

HEARTBEAT_DIR = ".heartbeat"
DONE = "done"
# Collective timeouts per backend when cluster.collective_timeout_s is null: NCCL's own
# default (nothing changes on GPUs); gloo's is 30 min, far too long for CPU ranks to wait.
COLLECTIVE_TIMEOUT_S = {"nccl": 600.0, "gloo": 300.0}
# cluster.stall_timeout_s when null: below both collective timeouts, so a stopped rank is
# named by the watchdog before its peers' collectives time out with a less specific error.
STALL_TIMEOUT_S = 180.0


def collective_timeout_s(configured: float | None, backend: str) -> float:
    """cluster.collective_timeout_s, or the backend's stated default."""
    if configured is not None:
        return float(configured)
    return COLLECTIVE_TIMEOUT_S.get(backend, COLLECTIVE_TIMEOUT_S["gloo"])


def stall_timeout_s(cluster: ClusterConfig) -> float:
    """0: the watchdog is off."""
    if cluster.stall_timeout_s is None:
        return STALL_TIMEOUT_S
    return float(cluster.stall_timeout_s)


def beat_interval_s(stall_s: float) -> float:
    """Often enough that a live rank changes its file many times within the stall timeout."""
    return min(2.0, max(0.1, stall_s / 10)) if stall_s > 0 else 2.0


def heartbeat_path(run_dir: Path, rank: int) -> Path:
    return Path(run_dir) / HEARTBEAT_DIR / f"rank{rank}.json"


@dataclass
class Beat:
    rank: int
    pid: int
    host: str
    phase: str  # setup | steps | after steps | done
    step: int  # the last finished step (0: none yet)
    beat: int = 0  # counts up on every write: a live rank's file keeps changing

    @property
    def where(self) -> str:
        return f"after step {self.step}" if self.step else f"in {self.phase}, before step 1"


class Heartbeat:
    """The writing side, one per rank: ``with Heartbeat(run_dir, rank, interval) as hb:`` and
    ``hb.at(step)`` after each step. Writes failing (a full disk) are skipped: the beat is a
    hint for the driver, never a reason for the rank to stop."""

    def __init__(self, run_dir: Path, rank: int, interval_s: float = 2.0):
        self.path = heartbeat_path(run_dir, rank)
        self.interval_s = interval_s
        self.state = Beat(rank, os.getpid(), socket.gethostname(), "setup", 0)
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stopped.set()
        self._changed.set()
        self._thread.join(timeout=5)
        self.state.phase = DONE  # an ended rank is not a silent one
        self._write()

    def at(self, step: int | None = None, phase: str | None = None) -> None:
        """This rank finished ``step`` (or entered ``phase``): written at once."""
        if step is not None:
            self.state.step, self.state.phase = step, "steps"
        if phase is not None:
            self.state.phase = phase
        self._changed.set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._changed.wait(self.interval_s)
            self._changed.clear()
            self._write()

    def _write(self) -> None:
        self.state.beat += 1
        with contextlib.suppress(OSError):
            write_atomic(self.path, json.dumps(asdict(self.state)), durable=False)


def read_heartbeats(run_dir: Path) -> dict[int, Beat]:
    """Every rank's last written heartbeat under ``run_dir`` (unreadable files are skipped)."""
    beats = {}
    folder = Path(run_dir) / HEARTBEAT_DIR
    if not folder.is_dir():
        return beats
    for path in folder.glob("rank*.json"):
        try:
            beat = Beat(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue
        beats[beat.rank] = beat
    return beats
