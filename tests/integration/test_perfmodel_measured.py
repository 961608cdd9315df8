"""Predicted beside measured on 2 local CPU ranks, within a loose bound (the cores are shared,
so the bound is wide: this checks the model is in the right range, not the benchmark's 20%)."""

import json

import pytest

from launch.bench import matmul_ceiling as mamf
from launch.bench.host_kernels import cache_run_kernels
from launch.report.predicted import predicted_for


@pytest.mark.exclusive  # the ceiling, the kernels and the run are timed on the same idle cores
def test_ddp_step_on_two_local_ranks_is_predicted_within_a_loose_bound(
    tmp_path, monkeypatch, launch_cli
):
    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path / "cache"))
    assert mamf.main(["--quick", "--precisions", "fp32", "--seconds", "3"]) == 0
    run_dir = tmp_path / "run"
    result = launch_cli(
        "parallel=ddp",
        "cluster.nproc_per_node=2",
        "model=tiny",
        "gpu=cpu",
        "precision=fp32",
        "sweep=none",
        "wandb.mode=disabled",
        "train.steps=8",
        "train.warmup_steps=2",
        "train.seq_len=64",
        "train.micro_batch=2",
        "train.global_batch=4",
        f"run_dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["run_dir"] = str(run_dir)
    # The report never measures: without the run's kernel times it says why.
    assert "--host-shapes" in predicted_for(summary)["unavailable"]
    assert not list((tmp_path / "cache" / "mamf").glob("*_host.json"))
    # What the training job does before a sweep's report: measure this run's GEMM /
    # attention shapes (the same host), then the report predicts from the cache.
    assert cache_run_kernels([summary]) == 1
    assert list((tmp_path / "cache" / "mamf").glob("*_host.json"))
    assert cache_run_kernels([summary]) == 0  # cached: nothing left to measure
    predicted = predicted_for(summary)
    assert predicted and "unavailable" not in predicted, predicted
    # Observed 0.8-2.9 on this 2-core machine shared with other work (docs/performance-model.md):
    # the bound catches a model off by an order of magnitude, not the benchmark's 20%.
    assert 0.33 < predicted["measured_over_predicted"] < 4.0, predicted
