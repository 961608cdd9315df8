"""Experiment tracking on rank 0: wandb, offline unless asked otherwise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# wandb.init's arguments and the variables wandb reads for them (wandb/env.py).
ENV_NAMES = {"dir": "DIR", "name": "NAME", "group": "RUN_GROUP", "job_type": "JOB_TYPE"}


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

        # Where wandb users steer a run from the environment (WANDB_DIR, WANDB_NAME, ...), the
        # variable wins over scaleprobe's default, as it would for any wandb.init that does not
        # pass the argument. mode, project and entity come resolved in the config (the driver:
        # command line > WANDB_MODE/_PROJECT/_ENTITY > conf default, launch/wandb_env.py).
        ours = {"dir": str(run_dir), "name": name, "group": group, "job_type": job_type}
        self.run = wandb.init(
            project=project,
            entity=entity,
            mode=mode,
            config=config,
            reinit="finish_previous",
            # The step log and progress bar say enough, unless WANDB_SILENT says otherwise.
            settings=wandb.Settings(**({} if "WANDB_SILENT" in os.environ else {"silent": True})),
            **{k: v for k, v in ours.items() if f"WANDB_{ENV_NAMES[k]}" not in os.environ},
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
