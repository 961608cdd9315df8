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

LAUNCH_TIMEOUT_S = 300


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


class EarlyStart:
    """The cluster brought up, and every check started, in a thread as soon as the session
    knows it will run them: their waits (Slurm's scheduling, ssh, rendezvous, a throttled
    link) then overlap the rest of the suite, which leaves a core idle about a third of the
    time. The tests, run last, collect what the checks wrote."""

    def __init__(self, config, start_all):
        self.root = config._tmp_path_factory.mktemp("realcluster")
        self.runs_root = config._tmp_path_factory.mktemp("runs")
        self.cluster: RealCluster | None = None
        self.launches: Launches | None = None
        self.error: BaseException | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._run, args=(start_all,), daemon=True)
        self.thread.start()

    def _run(self, start_all) -> None:
        try:
            started = time.monotonic()
            self.cluster = RealCluster(self.root)
            self.cluster.up()
            self.cluster.timings = {"bring-up": f"{time.monotonic() - started:.1f}"}
            self.launches = Launches(self.cluster, self.runs_root)
            start_all(self.launches, self.runs_root)
        except BaseException as exc:  # raised again in the test that asks for the cluster
            self.error = exc

    def result(self) -> tuple[RealCluster, Launches]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.cluster, self.launches

    def close(self) -> list[str]:
        """Stop every driver and take the cluster down; what was left behind."""
        if self.closed:
            return []
        self.closed = True
        self.thread.join()
        if self.launches is not None:
            self.launches.stop_all()
        return self.cluster.down() if self.cluster is not None else []


def pytest_collection_modifyitems(config, items):
    """The cluster's tests after the others (they collect what the early start ran)."""
    cluster = [item for item in items if item.get_closest_marker("cluster")]
    if cluster and len(cluster) < len(items):
        items[:] = [item for item in items if item not in cluster] + cluster


def pytest_collection_finish(session):
    """Start the cluster now if any of its tests will run (after -k/-m deselection)."""
    if session.config.option.collectonly or missing_requirements():
        return
    if any(item.get_closest_marker("cluster") for item in session.items):
        from tests.cluster.test_real_cluster import start_all

        session.config.cluster_early = EarlyStart(session.config, start_all)


def pytest_sessionfinish(session, exitstatus):
    """Down whatever happened, also when no cluster test got to run (-x, Ctrl-C)."""
    early = getattr(session.config, "cluster_early", None)
    if early is not None:
        early.close()


@pytest.fixture(scope="session")
def cluster(request):
    """The cluster, up for the session; down at its end, whatever happened (and a test error
    if anything is left behind)."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    early = request.config.cluster_early
    real, _ = early.result()
    yield real
    # When each job waited and ran (shown with -s, or with a failure): where the time went.
    jobs = ["squeue", "-t", "all", "-o", "%.4i %.16j %.10T %.9P %V %S %e"]
    print("\n" + real.run("ctl", jobs, timeout=30).stdout)
    started = time.monotonic()
    left = early.close()
    real.timings["teardown"] = f"{time.monotonic() - started:.1f}"
    print("\nreal cluster timings (s): " + ", ".join(f"{k} {v}" for k, v in real.timings.items()))
    assert not left, f"left behind after teardown: {left}"
