"""Rank 0's outputs behind one call: metrics.jsonl, wandb and the console line per step, then
summary.json. The loop hands each step's record (train/metrics.py StepRecord) to
`MetricsSinks.log_step` once; adding an output means adding it here, not in the loop."""

from __future__ import annotations

import json
from pathlib import Path

from train.metrics import StepRecord, format_step_line
from train.summary import RunSummary
from train.tracking import WandbRun


class MetricsSinks:
    def __init__(self, *, run_dir: Path, total_steps: int, tracker: WandbRun):
        self.metrics_path = run_dir / "metrics.jsonl"
        self.metrics_path.write_text("")
        self.total_steps, self.tracker = total_steps, tracker
        self.records: list[StepRecord] = []

    def log_step(self, record: StepRecord) -> None:
        self.records.append(record)
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(record.__dict__) + "\n")
        self.tracker.log({k: v for k, v in record.__dict__.items() if k != "step"}, record.step)
        print(format_step_line(record, self.total_steps), flush=True)

    def timed_step_times(self) -> list[float]:
        return [r.step_time_s for r in self.records if r.timed]

    def log_summary(self, summary: RunSummary, path: Path) -> None:
        summary.write(path)
        flat = {k: v for k, v in summary.to_dict().items() if not isinstance(v, dict)}
        self.tracker.log_summary(flat)
        self.tracker.finish()
