"""launcher=slurm through the CLI, and Hydra's submitit launcher (checked with submitit_local)."""

from __future__ import annotations

import pytest
from rich.console import Console

from launch.cluster.setup import set_up_cluster
from launch.errors import ConfigError
from launch.launchers import slurm
from launch.plan import plan_runs
from tests.conftest import FAST, compose_run_config, run_launch


def test_without_sbatch_a_real_submit_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: None)
    cfg = compose_run_config([*FAST, "cluster=slurm", "launcher=slurm", "run_dir=/tmp/never"])
    with pytest.raises(ConfigError, match="launcher.name: launcher=slurm: sbatch is not on PATH"):
        set_up_cluster(cfg, plan_runs(cfg), Console())


def test_submitit_local_job_prints_its_sbatch_script(tmp_path):
    """`hydra/launcher=submitit_local`: each sweep point is a job that runs the driver."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "multirun"
    result = run_launch(
        [
            "--multirun",
            "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={out}",
            "hydra.launcher.timeout_min=5",
            *FAST,
            "gpu=h100_sxm",
            "sweep=none",
            "cluster=slurm",
            "launcher=slurm",
            "dry_run=true",
            "train.global_batch=32",
            "cluster.nodes=2",  # one point keeps it quick; the path is the same for N
        ],
        tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted(out.glob(".submitit/*/*_log.out"))
    assert len(outputs) == 1, outputs
    assert "#SBATCH --nodes=2" in outputs[0].read_text()
    assert (out / "0" / "job.sbatch").is_file()
