"""Precision through whole runs: torchao's emulated fp8 trains like bf16 on CPU."""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.conftest import FAST, finish, losses, running_driver

# One rank each, 20 steps: the two runs go at once, one core each.
RUN = [
    *FAST,
    "sweep=none",
    "cluster.nproc_per_node=1",
    "gpu=h100_sxm",
    "train.steps=20",
    "train.seq_len=32",
    "train.global_batch=2",
    "seed=3",
    "train.lr=3e-3",
]
FP8 = ["precision=fp8", "precision.fp8.backend=torchao", "precision.fp8.min_dim=128"]


def test_torchao_fp8_emulated_on_cpu_trains_like_bf16(tmp_path):
    pytest.importorskip("torchao.float8")
    runs = {"bf16": ["precision=bf16"], "fp8": FP8}
    with contextlib.ExitStack() as stack:
        drivers = [
            stack.enter_context(running_driver([*RUN, *o, f"run_dir={tmp_path / n}"], tmp_path))
            for n, o in runs.items()
        ]
        for driver in drivers:
            finish(driver, timeout=300)
    bf16, fp8 = losses(tmp_path / "bf16"), losses(tmp_path / "fp8")
    summary = json.loads((tmp_path / "fp8" / "summary.json").read_text())
    assert summary["precision"]["fp8_backend"] == "torchao"
    assert "emulated on CPU" in summary["precision"]["reason"]
    assert summary["gpu_warning"]  # an h100 profile on a CPU is flagged
    assert summary["mfu"] is None  # and its peak is not this CPU's
    assert fp8[-1] < fp8[0] - 0.1  # it learns
    # Tolerance: fp8 (e4m3 forward, tensorwise scales) perturbs each matmul by about 2^-4
    # relative; over 20 steps of the tiny model the per-step losses stay within 2% of bf16's.
    worst = max(abs(a - b) / b for a, b in zip(fp8, bf16, strict=True))
    assert worst <= 0.02, (worst, fp8, bf16)
