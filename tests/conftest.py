"""Shared helpers: compose configs like the driver does, and run the CLI as a user would."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from launch.app import compose
from launch.conf_tree import load_gpu_profile
from train.spec.config import RunConfig

REPO = Path(__file__).resolve().parent.parent
# Fast settings for the tiny model on CPU: enough steps to time, few enough to stay quick.
FAST = [
    "model=tiny",
    "wandb.mode=disabled",
    "train.steps=6",
    "train.warmup_steps=2",
    "train.seq_len=64",
    "train.micro_batch=2",
    "train.global_batch=4",
]


def compose_run_config(overrides: list[str]) -> RunConfig:
    """The typed config `python -m launch` would get for these overrides (gpu=auto -> cpu);
    a bad value raises the ConfigError the driver prints."""
    typed = compose(overrides)
    if typed.gpu.name == "auto":
        typed.gpu = load_gpu_profile("cpu")
    return typed


def cli_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}


def run_launch(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch", *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def launch_cli(tmp_path):
    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_launch(list(args), tmp_path, timeout)

    return run


def pytest_configure(config):
    """One temporary cache for the whole run (and every process it starts): the user's
    own scaleprobe cache in their home (a measured matmul ceiling, say) must not change what
    tests see."""
    config.scaleprobe_cache = tempfile.mkdtemp(prefix="scaleprobe-test-cache-")
    os.environ["SCALEPROBE_CACHE_DIR"] = config.scaleprobe_cache
    os.environ["WANDB_MODE"] = "disabled"


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "scaleprobe_cache", ""), ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """Markers from where a test lives and what it uses (tests/README.md)."""
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
        if "launch_cli" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cli)
