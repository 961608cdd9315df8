"""Run one planned run on this machine and show rank 0's progress while it trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from launch.commands import NodeCommand
from launch.plan import RunPlan


class RunFailed(Exception):
    pass


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("tok/s {task.fields[tokens_per_s]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )


class MetricsTail:
    """Reads the step records rank 0 appends to metrics.jsonl, as they arrive."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_records(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]  # a line still being written waits
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def log_tail(path: Path, lines: int = 25) -> str:
    with path.open(errors="replace") as f:
        return "".join(deque(f, maxlen=lines))


def run_node_locally(
    node: NodeCommand, plan: RunPlan, total_steps: int, progress: Progress
) -> dict:
    """Start the node's command, follow its metrics, return rank 0's summary."""
    for stale in ("metrics.jsonl", "summary.json"):
        (plan.run_dir / stale).unlink(missing_ok=True)
    log_path = plan.run_dir / "launch.log"
    task = progress.add_task(plan.name, total=total_steps, loss="-", tokens_per_s="-")
    tail = MetricsTail(plan.run_dir / "metrics.jsonl")
    with log_path.open("w") as log:
        # Its own session, so Ctrl-C here can stop torchrun and every rank together.
        proc = subprocess.Popen(
            node.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **node.env},
            start_new_session=True,
        )
        try:
            while True:
                finished = proc.poll() is not None
                for record in tail.new_records():
                    progress.update(
                        task,
                        completed=record["step"],
                        loss=f"{record['loss']:.4f}",
                        tokens_per_s=f"{record['tokens_per_s']:,.0f}",
                    )
                if finished:
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            raise
    if proc.returncode != 0:
        raise RunFailed(
            f"{plan.name}: torchrun exited with {proc.returncode}; the end of {log_path}:\n"
            + log_tail(log_path)
        )
    summary_path = plan.run_dir / "summary.json"
    if not summary_path.exists():
        raise RunFailed(f"{plan.name}: finished without {summary_path}; see {log_path}")
    return json.loads(summary_path.read_text())
