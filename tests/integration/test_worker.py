"""The rank's loop through torchrun: DDP matches one rank loss for loss; metrics add up."""

from __future__ import annotations

import json
import sys

import pytest

from launch.pipeline import write_run_config
from launch.plan import plan_runs
from tests.conftest import (
    FAST,
    compose_run_config,
    rank_config,
    run_command,
    run_one_rank_here,
)
from train.runtime.worker import run


def losses(run_dir):
    return [
        json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_two_ranks_match_one_rank_with_twice_the_micro_batch(launch_cli, tmp_path):
    common = [
        *FAST,
        "sweep=none",
        "precision=fp32",
        "train.steps=5",
        "train.warmup_steps=1",
        "train.global_batch=8",
    ]
    # The one-rank reference in this process (the same worker, no process group); the two
    # ranks through the command line, torchrun and gloo.
    _, one = rank_config(tmp_path / "one", [*common, "cluster.nproc_per_node=1",
                                            "train.micro_batch=4"])  # fmt: skip
    run_one_rank_here(one)
    two = launch_cli(
        *common, "cluster.nproc_per_node=2", "train.micro_batch=2", f"run_dir={tmp_path / 'two'}"
    )
    assert two.returncode == 0, two.stderr
    one_rank, two_ranks = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one_rank) == len(two_ranks) == 5
    assert one_rank[-1] < one_rank[0]  # it trains
    # Same global batch, same rows per optimizer step: only fp32 summation order differs.
    assert two_ranks == pytest.approx(one_rank, abs=1e-5)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["grad_accum"] == 2 and summary["world_size"] == 2
    assert summary["backend"] == "gloo" and summary["precision"]["resolved"] == "fp32"


def test_same_seed_same_losses_other_seed_other_losses(tmp_path, monkeypatch):
    # In-process: with no RANK in the environment a rank runs alone, without torchrun.
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        cfg = compose_run_config(
            [
                *FAST,
                "sweep=none",
                "precision=fp32",
                "train.steps=3",
                "train.warmup_steps=1",
                f"seed={seed}",
                f"run_dir={tmp_path / name}",
            ]
        )
        plan = plan_runs(cfg)[0]
        summary = run(write_run_config(cfg, plan, "test"))
        assert summary["world_size"] == 1
        runs[name] = losses(tmp_path / name)
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_a_ranks_uncaught_error_reaches_torchruns_error_file(tmp_path):
    """`python -m train` is torchelastic's @record entry: an uncaught exception is written to
    TORCHELASTIC_ERROR_FILE (which torchrun points into the run's torchelastic folder), so
    torchrun's failure summary names it."""
    error_file = tmp_path / "error.json"
    missing = tmp_path / "no" / "config.yaml"
    result = run_command(
        [sys.executable, "-m", "train", "--config", str(missing)],
        env={"TORCHELASTIC_ERROR_FILE": str(error_file)},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    message = json.loads(error_file.read_text())["message"]["message"]
    assert message.startswith("FileNotFoundError") and str(missing) in message, message
