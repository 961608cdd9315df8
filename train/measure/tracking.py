"""Experiment tracking on rank 0: wandb, offline unless asked otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class WandbRun:
    """A thin handle over wandb.init; a no-op when wandb.mode=disabled."""

    def __init__(
        self,
        mode: str,
        project: str,
        entity: str | None,
        run_dir: Path,
        name: str,
        group: str | None,
        job_type: str,
        config: dict[str, Any],
    ):
        self.run = None
        if mode == "disabled":
            return
        import wandb  # lazy: costs a second or two and is not needed when disabled

        self.run = wandb.init(
            project=project,
            entity=entity,
            mode=mode,
            dir=str(run_dir),
            name=name,
            group=group,
            job_type=job_type,
            config=config,
            reinit="finish_previous",
            settings=wandb.Settings(silent=True),  # the step log and progress bar say enough
        )

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in summary.items():
                if isinstance(value, (int, float, str)) or value is None:
                    self.run.summary[key] = value

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
