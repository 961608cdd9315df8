"""The main job as a user runs it: a sweep at 1 and 2 ranks, its files and its arithmetic."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import FAST, cli_env, run_launch, run_module

PEAK_TFLOPS = 0.5  # a stated CPU peak, so MFU has something to be measured against


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = run_launch(
        [
            *FAST,
            "wandb.mode=offline",
            "gpu=cpu",
            "precision=fp32",
            f"gpu.peak_tflops.fp32={PEAK_TFLOPS}",
            f"run_dir={out}",
        ],
        out,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return out


def summaries(sweep_dir):
    return {ws: json.loads((sweep_dir / f"ws{ws}" / "summary.json").read_text()) for ws in (1, 2)}


def test_the_sweep_writes_every_file(sweep_dir):
    for ws in (1, 2):
        for name in ("config.yaml", "summary.json", "metrics.jsonl"):
            assert (sweep_dir / f"ws{ws}" / name).is_file(), name
    for name in ("report.md", "results.json", "scaling.png", "command.sh"):
        assert (sweep_dir / name).is_file(), name
    assert (sweep_dir / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    # torchrun's per-attempt, per-rank folders stay with the point (--log-dir), not in /tmp.
    for ws in (1, 2):
        ranks = sorted((sweep_dir / f"ws{ws}" / "torchelastic").glob("*/attempt_0/*"))
        assert [r.name for r in ranks] == [str(r) for r in range(ws)], ranks


def test_report_efficiency_is_recomputable_from_the_summaries(sweep_dir):
    s = summaries(sweep_dir)
    assert (s[1]["world_size"], s[2]["world_size"]) == (1, 2)
    # Weak scaling: the per-device batch stays, the global batch doubles.
    assert s[2]["global_batch"] == 2 * s[1]["global_batch"]
    expected = s[2]["tokens_per_s"] / (2 * s[1]["tokens_per_s"])
    rows = json.loads((sweep_dir / "results.json").read_text())["rows"]
    by_ws = {row["world_size"]: row for row in rows}
    assert by_ws[1]["scaling_efficiency"] == pytest.approx(1.0)
    assert by_ws[2]["scaling_efficiency"] == pytest.approx(expected, rel=1e-9)
    assert f"{100 * expected:.1f}%" in (sweep_dir / "report.md").read_text()


def test_mfu_is_model_flops_over_the_stated_peak(sweep_dir):
    for summary in summaries(sweep_dir).values():
        flops = summary["model"]["flops_per_token"]
        per_device = summary["tokens_per_s_per_device"]
        assert per_device == pytest.approx(summary["tokens_per_s"] / summary["world_size"])
        assert summary["tokens_per_s"] == pytest.approx(
            summary["tokens_per_step"] / summary["step_time_s"]["median"]
        )
        assert summary["mfu"] == pytest.approx(flops * per_device / (PEAK_TFLOPS * 1e12))
        assert summary["peak_memory_bytes"] > 0


def test_warmup_steps_are_not_timed(sweep_dir):
    records = [
        json.loads(x) for x in (sweep_dir / "ws1" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["timed"] for r in records] == [False, False, True, True, True, True]
    assert summaries(sweep_dir)[1]["timed_steps"] == 4


def test_wandb_offline_runs_are_written_into_the_run_dirs(sweep_dir):
    for ws in (1, 2):
        assert list((sweep_dir / f"ws{ws}" / "wandb").glob("offline-run-*")), ws
    assert list((sweep_dir / "wandb").glob("offline-run-*"))  # the scaling table


def test_report_cli_rebuilds_the_report(sweep_dir, tmp_path):
    out = tmp_path / "rebuilt"
    result = run_module("launch.report", [str(sweep_dir), str(sweep_dir), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").is_file() and (out / "scaling.png").is_file()


def test_dry_run_prints_a_command_that_runs_when_pasted(launch_cli, tmp_path):
    run_dir = tmp_path / "dry"
    result = launch_cli(*FAST, "sweep=none", "dry_run=true", f"run_dir={run_dir}")
    assert result.returncode == 0, result.stderr
    command = [line for line in result.stdout.splitlines() if "torchrun" in line]
    assert len(command) == 1 and "--nproc-per-node 2" in command[0]
    assert not (run_dir / "summary.json").exists()  # nothing ran
    pasted = subprocess.run(
        ["bash", "-c", command[0]], env=cli_env(), capture_output=True, text=True, timeout=300
    )
    assert pasted.returncode == 0, pasted.stderr[-2000:]
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2


def test_hydra_multirun_gives_one_run_per_value(launch_cli, tmp_path):
    result = launch_cli(
        "--multirun",
        *FAST,
        "sweep=none",
        "cluster.nproc_per_node=1",
        "train.steps=2",
        "train.warmup_steps=0",
        "seed=1,2",
        f"hydra.sweep.dir={tmp_path / 'multi'}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    seeds = sorted(
        json.loads((tmp_path / "multi" / job / "summary.json").read_text())["config_digest"]
        for job in ("0", "1")
    )
    assert len(set(seeds)) == 2  # two different runs, each in its own job dir
