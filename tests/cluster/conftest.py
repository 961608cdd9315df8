"""One real cluster for the whole session (tests/cluster/realcluster.py), and the drivers the
tests check, all started together so that both cores stay busy while jobs wait on Slurm,
ssh or a rendezvous.

Every check is a `Launch`: one or more driver processes on hosts of the cluster, each with a
log. A test waits for its launch and asserts on what it wrote.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.cluster.realcluster import RealCluster, missing_requirements

# The fixture starts every launch at once on 2 cores; on a slow host with the other test
# worker busy, the deepspeed-over-pdsh run took 4 min 43 s to write its summary (2026-12-01:
# 42 s for pdsh to start the nodes' launchers, 60 s for the ranks to meet): this bounds a
# hang, not a speed.
LAUNCH_TIMEOUT_S = 600


class Node(NamedTuple):
    """A driver on a host of the cluster: its argv, working dir (default: the runs' root) and
    bind mounts (`{src: dst}`, a node-local disk)."""

    host: str
    argv: list[str]
    cwd: Path | None = None
    binds: dict[Path, Path] | None = None


@dataclass
class Launch:
    """Driver processes of one check: `(host, argv, cwd, binds)` each, logs under `root`."""

    name: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    codes: list[int] = field(default_factory=list)

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> list[int]:
        if self.codes:
            return self.codes
        deadline = self.started + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stop(self.procs)
                pytest.fail(f"{self.name}: no end after {timeout}s; logs: {self.logs}")
        self.ended = self.ended or time.monotonic()
        self.codes = [proc.returncode for proc in self.procs]
        return self.codes

    def log(self, index: int = 0) -> str:
        return self.logs[index].read_text(errors="replace")

    def seconds(self, since: float = 0.0) -> str:
        """`start-end` in seconds since `since` (the session's first launch)."""
        return f"{self.started - since:.0f}-{self.ended - since:.0f}"


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Launches:
    """Start drivers; `get(name)` waits for one and returns it."""

    def __init__(self, cluster: RealCluster, root: Path):
        self.cluster, self.root = cluster, root
        self.launches: dict[str, Launch] = {}

    def start(self, name: str, *nodes: Node) -> None:
        """Start one driver per node given (several: one driver per node of one run)."""
        launch = Launch(name, started=time.monotonic())
        for k, node in enumerate(nodes):
            log = self.root / f"{name}-{k}.log"
            launch.logs.append(log)
            cwd = node.cwd or self.root
            launch.procs.append(
                self.cluster.popen(node.host, node.argv, log=log, cwd=cwd, binds=node.binds)
            )
        self.launches[name] = launch
        # When each ended, for the timings (a test may ask for it much later).
        threading.Thread(target=self._note_end, args=(launch,), daemon=True).start()

    @staticmethod
    def _note_end(launch: Launch) -> None:
        for proc in launch.procs:
            proc.wait()
        launch.ended = time.monotonic()

    def get(self, name: str) -> Launch:
        launch = self.launches[name]
        launch.wait()
        return launch

    def stop_all(self) -> None:
        for launch in self.launches.values():
            stop(launch.procs)


def pytest_collection_modifyitems(config, items):
    """In one process, the cluster's tests after the others: they then find DeepSpeed's op
    compiled by the integration tests (the nodes share that build cache) instead of compiling
    it themselves. Under xdist (`-n 2`, tests of a file on one worker), first: the longest file
    then runs beside everything else instead of alone at the end."""
    cluster = [item for item in items if item.get_closest_marker("cluster")]
    if cluster and len(cluster) < len(items):
        rest = [item for item in items if item not in cluster]
        items[:] = cluster + rest if os.environ.get("PYTEST_XDIST_WORKER") else rest + cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The cluster, up for the session; down at its end, whatever happened (and a test error
    if anything is left behind)."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("realcluster")
    real = RealCluster(root)
    started = time.monotonic()
    try:
        real.up()
    except BaseException:
        real.down()
        raise
    real.timings = {"bring-up": f"{time.monotonic() - started:.1f}"}
    yield real
    # When each job waited and ran (shown with -s, or with a failure): where the time went.
    jobs = ["squeue", "-t", "all", "-o", "%.4i %.16j %.10T %.9P %V %S %e"]
    print("\n" + real.run("ctl", jobs, timeout=30).stdout)
    started = time.monotonic()
    left = real.down()
    real.timings["teardown"] = f"{time.monotonic() - started:.1f}"
    print("\nreal cluster timings (s): " + ", ".join(f"{k} {v}" for k, v in real.timings.items()))
    assert not left, f"left behind after teardown: {left}"
