"""Rank 0's outputs behind one call: metrics.jsonl, wandb and the console line per step, then
summary.json. The loop hands each step's record (train/measure/metrics.py StepRecord) to
`MetricsSinks.log_step` once; adding an output means adding it here, not in the loop."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from train.files.safe_files import append_line, write_atomic
from train.measure.metrics import StepRecord, format_step_line
from train.measure.summary import RunSummary
from train.measure.tracking import WandbRun


class MetricsSinks:
    def __init__(self, *, run_dir: Path, total_steps: int, tracker: WandbRun, resume: bool = False):
        """``resume``: a restarted or resumed attempt keeps the earlier attempts' lines and
        appends its own; a step run again then appears twice, and counts once (its latest)."""
        self.metrics_path = run_dir / "metrics.jsonl"
        self.total_steps, self.tracker = total_steps, tracker
        self.records: list[StepRecord] = read_step_records(self.metrics_path) if resume else []
        if not resume:  # absent until the first step, never an empty file passed for one
            self.metrics_path.unlink(missing_ok=True)
        # Steps the earlier attempts ran: run again now, they are marked `repeated`.
        self.earlier_steps = {r.step for r in self.records}

    def log_step(self, record: StepRecord) -> None:
        self.records.append(record)
        append_line(self.metrics_path, json.dumps(record.__dict__))
        self.tracker.log({k: v for k, v in record.__dict__.items() if k != "step"}, record.step)
        print(format_step_line(record, self.total_steps), flush=True)

    def timed_step_times(self) -> list[float]:
        # A step run again after a restart counts once: its latest run.
        latest = {r.step: r for r in self.records}
        return [r.step_time_s for _, r in sorted(latest.items()) if r.timed]

    def repeated_steps(self) -> list[int]:
        """Steps run more than once (by attempts before and after a restart)."""
        seen: dict[int, int] = {}
        for r in self.records:
            seen[r.step] = seen.get(r.step, 0) + 1
        return sorted(step for step, count in seen.items() if count > 1)

    def log_summary(self, summary: RunSummary, path: Path) -> None:
        summary.write(path)
        flat = {k: v for k, v in summary.to_dict().items() if not isinstance(v, dict)}
        self.tracker.log_summary(flat)
        self.tracker.finish()


def read_step_records(path: Path) -> list[StepRecord]:
    """The step records already in metrics.jsonl. A line cut short when a rank was killed
    mid-write is dropped, and the file rewritten without it, so appending stays valid JSONL."""
    try:
        text = path.read_text()
    except OSError:
        return []
    names = {f.name for f in dataclasses.fields(StepRecord)}
    records, kept = [], []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            records.append(StepRecord(**{k: v for k, v in data.items() if k in names}))
        except (ValueError, TypeError):
            continue
        kept.append(line)
    if len(kept) != len(text.splitlines()) or (text and not text.endswith("\n")):
        write_atomic(path, "".join(line + "\n" for line in kept))
    return records
