"""``python -m launch [overrides]``: a training run, or a scaling sweep and its report.

python -m launch                                  # weak sweep 1 -> 2 ranks, tiny model
python -m launch gpu=h100_sxm model=gpt_1_3b cluster=slurm launcher=slurm dry_run=true
"""

from __future__ import annotations

from launch.pipeline import job_app
from launch.training import TRAINING


def main() -> None:
    job_app(TRAINING)


if __name__ == "__main__":
    main()
