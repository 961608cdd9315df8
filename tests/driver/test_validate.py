"""Bad input: one line naming the key and what is allowed, exit code 2, nothing started or lost."""

from __future__ import annotations

import json

import numpy as np
import pytest

from launch.errors import ConfigError
from launch.plan import plan_runs
from launch.validate import validate
from tests.conftest import compose_run_config

BAD_OVERRIDES = [
    (["gpu=h900"], "gpu: unknown gpu 'h900'; choose from: a100_40g"),
    (["model=gpt_9b"], "model: unknown model 'gpt_9b'; choose from:"),
    (["precision=fp4"], "precision: unknown precision 'fp4'; choose from:"),
    (["parallel=pipeline"], "parallel: unknown parallel 'pipeline'; choose from:"),
    (["train.stpes=3"], "train.stpes: Key 'stpes' not in 'TrainConfig'"),
    (["train.steps=many"], "train.steps: Value 'many' of type 'str' could not be converted"),
    (
        ["sweep=strong", "sweep.world_sizes=[1,3]", "cluster.nproc_per_node=2"],
        "sweep.world_sizes: world size 3 is not divisible by cluster.nproc_per_node=2",
    ),
    (
        ["sweep=none", "train.global_batch=6", "train.micro_batch=2"],
        "train.global_batch: 6 (at world size 2) is not divisible by micro_batch 2 x data-parallel",
    ),
    (["train.seq_len=257"], "train.seq_len: 257: must be between 1 and model tiny's max_seq_len"),
    (["model.n_kv_heads=3"], "model.n_kv_heads: n_heads 4 is not divisible by n_kv_heads 3"),
    (["train.steps=0"], "train.steps: 0: must be > 0"),
    (["gpu.power_limit_w=90"], "gpu.power_limit_w: 90.0: gpu=cpu has no gpu.tdp_w to limit it"),
    (["train.steps=5", "train.warmup_steps=5"], "train.warmup_steps: 5: must be >= 0 and <"),
    (
        ["data.source=file", "data.path=/nonexistent/tokens.bin"],
        "data.path: /nonexistent/tokens.bin: no such file",
    ),
    (["data.source=file", "data.path=/"], "data.path: /: a directory; expected the .bin token"),
    (["data.source=file", "data.path=/dev/null"], "data.path: /dev/null: not a regular file"),
    # It trained on synthetic tokens without a word.
    (["data.path=/x/tokens.bin"], "data.path: '/x/tokens.bin' is read only with data.source=file"),
    # Every rank failed at torch.manual_seed ("Overflow when unpacking long").
    (["seed=99999999999999999999"], "seed: 99999999999999999999: must be in [-2**63, 2**64)"),
]


@pytest.mark.parametrize(
    "overrides, message", BAD_OVERRIDES, ids=[" ".join(o) for o, _ in BAD_OVERRIDES]
)
def test_bad_input_is_one_line_and_exit_2(overrides, message, launch_in_process, tmp_path):
    result = launch_in_process(*overrides, f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert not (tmp_path / "run").exists()  # nothing written, nothing started


def test_a_finished_run_dir_is_kept_unless_overwrite(launch_in_process, tmp_path):
    run_dir = tmp_path / "done"
    (run_dir / "ws1").mkdir(parents=True)
    summary = run_dir / "ws1" / "summary.json"
    summary.write_text(json.dumps({"world_size": 1}))
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = launch_in_process(f"run_dir={run_dir}", "dry_run=true")
    assert result.returncode == 2
    assert "run_dir: " in result.stderr and "overwrite=true" in result.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def write_tokens(path, dtype, values):
    np.asarray(values, dtype=dtype).tofile(path)
    return path


@pytest.mark.parametrize(
    "dtype_on_disk, declared, vocab, message",
    [
        (np.uint16, "uint16", 70000, "data.dtype: uint16 holds ids up to 65535"),
        (np.uint32, "uint16", 2048, "data.dtype: "),  # read as uint16: ids too large or odd size
        (None, "uint16", 2048, "data.path: "),  # empty file
    ],
)
def test_token_file_checks(tmp_path, dtype_on_disk, declared, vocab, message):
    path = tmp_path / "tokens.bin"
    if dtype_on_disk is None:
        path.write_bytes(b"")
    else:
        write_tokens(
            path, dtype_on_disk, np.arange(1000) % 2000 + 70000 * (dtype_on_disk == np.uint32)
        )
    cfg = compose_run_config(
        [
            f"run_dir={tmp_path}/r",
            "data.source=file",
            f"data.path={path}",
            f"data.dtype={declared}",
            f"model.vocab_size={vocab}",
            "train.seq_len=32",
        ]
    )
    with pytest.raises(ConfigError, match=f"^{message}"):
        validate(cfg, plan_runs(cfg))


def test_a_good_token_file_passes(tmp_path):
    path = write_tokens(tmp_path / "tokens.bin", np.uint16, np.arange(5000) % 2048)
    cfg = compose_run_config(
        [f"run_dir={tmp_path}/r", "data.source=file", f"data.path={path}", "train.seq_len=32"]
    )
    validate(cfg, plan_runs(cfg))
