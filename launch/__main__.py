"""``python -m launch [overrides]``: a training run, or a scaling sweep and its report.

python -m launch                                  # weak sweep 1 -> 2 ranks, tiny model
python -m launch gpu=h100_sxm model=gpt_1_3b cluster=slurm launcher=slurm dry_run=true
"""

from __future__ import annotations

from launch.app import run_app
from launch.pipeline import check, run_job
from launch.training import TRAINING


def main() -> None:
    run_app(
        lambda cfg, overrides, console: run_job(cfg, overrides, TRAINING, console),
        check=lambda cfg, overrides, console: check(cfg, overrides, TRAINING, console),
    )


if __name__ == "__main__":
    main()
