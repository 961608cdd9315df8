"""Run one planned run's node commands on this machine and show rank 0's progress; a run
whose ranks stall (launch/launchers/watchdog.py) is stopped and recorded as failed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from launch.errors import RunFailed
from launch.launchers.command import NodeCommand
from launch.launchers.root_cause import error_file_traceback, root_cause
from launch.launchers.watchdog import StallWatch, kill_ranks
from launch.plan import RunPlan
from train.files.heartbeat import HEARTBEAT_DIR


def progress_bar(console: Console | None = None) -> Progress:
    """The bar a run's progress shows in, on ``console`` (the driver's, launch/terminal.py:
    the lines printed above the bar are plain text too)."""
    return Progress(
        # markup=False: the description is the run's name, a run dir's own ("[exp a]" would
        # be read as a rich tag and dropped; launch/terminal.py), the status its own text.
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def training_status(record: dict | None) -> str:
    """The bar's text beside a training run's steps: rank 0's last loss and tokens/s. A job's
    own (launch/pipeline.py Job.progress_status) says what its progress records hold."""
    loss, rate = (record or {}).get("loss"), (record or {}).get("tokens_per_s")
    loss_text = "-" if loss is None else f"{loss:.4f}"
    return f"loss {loss_text} tok/s {'-' if rate is None else f'{rate:,.0f}'}"


class MetricsTail:
    """Reads the step records rank 0 appends to metrics.jsonl, as they arrive."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_records(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            if self.path.stat().st_size < self.offset:
                self.offset = 0  # restarted ranks (cluster.max_restarts) begin a new file
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]  # a line still being written waits
        self.offset += len(complete)
        records = []
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            # A restart that truncated and refilled the file between two reads leaves the
            # offset mid-line: skip the fragment (even one that parses), whole lines follow.
            if isinstance(record, dict) and "step" in record:
                records.append(record)
        return records


def log_tail(path: Path, lines: int = 25) -> str:
    with path.open(errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


# The launcher's own traceback and footer after a rank failed: frames of these files. Not all
# of torch/distributed/elastic: a rank's own traceback passes through its @record wrapper
# (elastic/multiprocessing/errors), which python -m train runs under.
LAUNCHER_FRAMES = (
    "torch/distributed/run.py",
    "torch/distributed/launcher/",
    "torch/distributed/elastic/agent/",
    "deepspeed/launcher",
)


@dataclass(frozen=True)
class RankFailure:
    """What the driver shows of a failed run, and which rank failed how where the launcher
    said so (launch/launchers/root_cause.py): for failed.json, the console and the report."""

    lines: str
    rank: int | None = None
    rank_exit_code: int | None = None
    signal: str | None = None


def rank_failure(path: Path, lines: int = 20) -> RankFailure:
    """The rank the launcher saw fail first and why: killed by a signal, said plainly (it
    left no traceback; the survivors' tracebacks are the consequence, not the cause), or its
    own traceback (from the log, else its error.json). Without the launcher's verdict, the
    first rank traceback in the log, else the log's last lines."""
    text = path.read_text(errors="replace").splitlines()
    cause = root_cause(text)
    if cause is None or (cause.rank is None and cause.signal_name is None):
        return RankFailure(_first_traceback(text, lines) or log_tail(path, lines))
    if cause.signal_name:
        shown = cause.killed_line() + "\n"
    else:
        own = (
            _last_traceback(_lines_of_rank(text, cause.rank), lines)
            or "\n".join(error_file_traceback(cause, path.parent)[-lines:])
            or "\n".join(cause.traceback[-lines:])
        )
        fallback = _first_traceback(text, lines) or log_tail(path, lines)
        shown = own.rstrip("\n") + "\n" if own.strip() else fallback
    return RankFailure(shown, cause.rank, cause.exitcode, cause.signal_name)


def _lines_of_rank(text: list[str], rank: int | None) -> list[str]:
    """The lines torchrun's ranks prefix with ``[rankN]:``, of rank ``rank`` only."""
    prefix = f"[rank{rank}]:"
    return [line for line in text if line.startswith(prefix)]


def _first_traceback(text: list[str], lines: int) -> str:
    """The end of the first traceback a rank printed, rather than torchrun's generic footer
    ("ChildFailedError ... To enable traceback see ..."), which says nothing about why; ""
    when there is none."""
    return next(_rank_tracebacks(text, lines), "")


def _last_traceback(text: list[str], lines: int) -> str:
    """The last one: of one rank, the attempt that failed for good (cluster.max_restarts
    keeps the earlier attempts' tracebacks in the same log)."""
    return ([""] + list(_rank_tracebacks(text, lines)))[-1]


def _rank_tracebacks(text: list[str], lines: int):
    """The end of each traceback in ``text`` that is not the launcher's own."""
    # torchrun prefixes each line a rank prints with "[rankN]:".
    bodies = [re.sub(r"^\[rank\d+\]: ?", "", line) for line in text]
    for start, body in enumerate(bodies):
        if not body.startswith("Traceback (most recent call last)"):
            continue
        end = start + 1
        while end < len(bodies) and bodies[end].startswith((" ", "\t")):
            end += 1
        block = text[start : end + 1]  # the frames and the exception line after them
        if not any(frame in line for line in block for frame in LAUNCHER_FRAMES):
            yield "\n".join(block[-lines:]) + "\n"


def node_log_path(run_dir: Path, node_rank: int) -> Path:
    return run_dir / ("launch.log" if node_rank == 0 else f"launch-node{node_rank}.log")


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every node's process group (launcher and ranks), SIGKILL what outlives 30 s."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Outcome:
    """How a run's processes ended: a node that failed, a stall, or (neither) all exited 0."""

    failed: tuple[NodeCommand, int] | None = None
    stalled: str | None = None


def run_nodes(
    nodes: list[NodeCommand],
    plan: RunPlan,
    total_steps: int | None,
    progress: Progress,
    progress_file: str = "metrics.jsonl",
    result_file: str = "summary.json",
    require_result: bool = True,
    keep_progress: bool = False,
    keep_result: bool = False,
    stall_timeout_s: float = 0.0,
    status: Callable[[dict | None], str] = training_status,
) -> dict | None:
    """Start every node's command together, follow rank 0's metrics, return its summary.

    One node on this machine (local), or all of them (the emulated cluster, each command
    already wrapped in its namespace). When one node fails the others are stopped: their
    torchrun would otherwise wait out the rendezvous timeout for a peer that never comes.
    A stall (``stall_timeout_s``, launch/launchers/watchdog.py) stops them all too.
    """
    # A stale result never passes for this run's; progress is kept when the run resumes;
    # keep_result: another node's driver owns them (a run dir on a shared filesystem).
    stale = [] if keep_result else [result_file]
    for name in stale if keep_progress else [progress_file, *stale]:
        (plan.run_dir / name).unlink(missing_ok=True)
    if not keep_result:  # the last run's heartbeats would read as silent ranks
        shutil.rmtree(plan.run_dir / HEARTBEAT_DIR, ignore_errors=True)
    task = progress.add_task(plan.name, total=total_steps, status=status(None))
    watch = StallWatch(plan.run_dir, stall_timeout_s)
    procs: list[subprocess.Popen] = []
    with contextlib.ExitStack() as logs:
        try:
            for node in nodes:
                log = logs.enter_context(node_log_path(plan.run_dir, node.node_rank).open("w"))
                # Its own session, so Ctrl-C here can stop the launcher and every rank together.
                procs.append(
                    subprocess.Popen(
                        node.argv,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=node.popen_env(),
                        start_new_session=True,
                    )
                )
            outcome = follow(
                nodes,
                procs,
                MetricsTail(plan.run_dir / progress_file),
                watch,
                lambda record: progress.update(
                    task, completed=record["step"], status=status(record)
                ),
            )
            if outcome.stalled:
                kill_ranks(plan.run_dir)  # a stopped rank ignores the launcher's SIGTERM
        finally:
            stop(procs)  # Ctrl-C, a failed node, a stall, or nothing left to stop
            kill_ranks(plan.run_dir)  # any rank the launchers left behind
            if not keep_result:
                shutil.rmtree(plan.run_dir / HEARTBEAT_DIR, ignore_errors=True)
    return result_of(plan, outcome, result_file, require_result)


def follow(
    nodes: list[NodeCommand],
    procs: list[subprocess.Popen],
    tail: MetricsTail,
    watch: StallWatch,
    show,
) -> Outcome:
    """Poll until every node has exited, one has failed, or the ranks stalled."""
    while True:
        codes = [proc.poll() for proc in procs]
        for record in tail.new_records():
            show(record)
            watch.saw_progress()
        exits = zip(nodes, codes, strict=True)
        failed = next(((n, code) for n, code in exits if code not in (None, 0)), None)
        if failed or all(code is not None for code in codes):
            return Outcome(failed=failed)
        stalled = watch.stalled()
        if stalled:
            return Outcome(stalled=stalled)
        time.sleep(0.2)


def result_of(
    plan: RunPlan, outcome: Outcome, result_file: str, require_result: bool
) -> dict | None:
    """The run's result, or RunFailed saying why there is none."""
    if outcome.stalled:
        raise RunFailed(f"{plan.name}: {outcome.stalled}", log_tail=outcome.stalled)
    if outcome.failed:
        node, code = outcome.failed
        log_path = node_log_path(plan.run_dir, node.node_rank)
        failure = rank_failure(log_path)
        raise RunFailed(
            f"{plan.name}: node {node.node_rank} ({node.argv[0]}) exited with {code}; "
            f"from {log_path}:\n" + failure.lines,
            returncode=code,
            log_tail=failure.lines,
            rank=failure.rank,
            rank_exit_code=failure.rank_exit_code,
            signal=failure.signal,
        )
    summary_path = plan.run_dir / result_file
    if not summary_path.exists():
        if not require_result:
            return None
        log_path = node_log_path(plan.run_dir, 0)
        raise RunFailed(f"{plan.name}: finished without {summary_path}; see {log_path}")
    return json.loads(summary_path.read_text())
