"""The worker's timed region holds the training step only: data is drawn before the clock."""

from __future__ import annotations

import time
import types

from omegaconf import OmegaConf

from tests.conftest import FAST, compose_run_config
from train.runtime import data as data_module
from train.runtime import loop, rank_step, worker


def one_rank_config(tmp_path, monkeypatch, *overrides: str):
    """The config file the driver writes, written here for one rank started without torchrun."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    run_dir = tmp_path / "run"
    cfg = compose_run_config(
        [*FAST, "sweep=none", "precision=fp32", "parallel=ddp", "train.warmup_steps=1", *overrides]
        + [f"run_dir={run_dir}"]
    )
    run_dir.mkdir()
    config_path = run_dir / "config.yaml"
    config_path.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return config_path


def test_batches_are_drawn_before_the_step_clock_starts(tmp_path, monkeypatch):
    events: list[tuple] = []

    # The loop's clock, its data source and its step, each leaving a mark in order.
    def perf_counter():
        events.append(("clock",))
        return time.perf_counter()

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=perf_counter))
    real_rows, real_step = data_module.SyntheticTokens.rows, rank_step.train_step

    def rows(self, step, row_indices):
        events.append(("draw", step, tuple(row_indices)))
        return real_rows(self, step, row_indices)

    def train_step(*args, **kwargs):
        events.append(("step",))
        return real_step(*args, **kwargs)

    monkeypatch.setattr(data_module.SyntheticTokens, "rows", rows)
    monkeypatch.setattr(rank_step, "train_step", train_step)

    steps = 3
    worker.run(
        one_rank_config(
            tmp_path,
            monkeypatch,
            f"train.steps={steps}",
            "train.micro_batch=1",
            "train.global_batch=4",
        )
    )

    kinds = [e[0] for e in events]
    step_at = [i for i, k in enumerate(kinds) if k == "step"]
    assert len(step_at) >= steps
    for n, at in enumerate(step_at[:steps], start=1):
        clock_start = max(i for i in range(at) if kinds[i] == "clock")
        clock_stop = min(i for i in range(at, len(kinds)) if kinds[i] == "clock")
        # Nothing is drawn between the clock's start and stop around this step...
        assert "draw" not in kinds[clock_start:clock_stop], events[clock_start:clock_stop]
        # ...and this step's rows (all 4, one rank, 4 micro-steps) were drawn before it.
        draws = [e for e in events[:clock_start] if e[0] == "draw" and e[1] == n]
        assert [row for e in draws for row in e[2]] == [0, 1, 2, 3]


def test_summary_records_reserved_memory_as_null_on_cpu_and_fabric_warnings(tmp_path, monkeypatch):
    summary = worker.run(one_rank_config(tmp_path, monkeypatch, "train.steps=2"))
    assert summary["peak_memory_bytes"] > 0  # RSS on CPU
    assert summary["peak_memory_reserved_bytes"] is None  # no caching allocator on CPU
    assert summary["memory"]["peak_reserved_bytes"] is None
    assert summary["fabric"]["warnings"] == []  # gloo: NCCL_IB_HCA is not checked
