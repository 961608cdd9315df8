"""The scaling report on fake sweeps: efficiency, node boundaries, files written, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch.report import ReportError, load_runs, main, scaling_rows, write_report
from launch.report.load import _workload_label
from train.measure.summary import SCHEMA_VERSION

SIZES = [1, 2, 4, 8, 16]
H100 = "h100_sxm · gpt_1_3b · ddp · bf16"
H800 = "h800 · gpt_1_3b · ddp · bf16"


def summary(gpu: str, world_size: int, per_device: float, mfu: float | None) -> dict:
    nproc = min(world_size, 8)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_name": f"ws{world_size}",
        "sweep": {"id": "20261127-181500-ab12", "name": "weak"},
        "world_size": world_size,
        "nodes": world_size // nproc,
        "nproc_per_node": nproc,
        "gpu": gpu,
        "gpu_display_name": gpu.upper(),
        "device_name": f"NVIDIA {gpu.upper()}",
        "backend": "nccl",
        "precision": {"requested": "auto", "resolved": "bf16", "reason": "supported"},
        "parallel": "ddp",
        "model": {"name": "gpt_1_3b", "params": 1_300_000_000, "flops_per_token": 7.8e9},
        "seq_len": 2048,
        "global_batch": 8 * world_size,
        "micro_batch": 8,
        "grad_accum": 1,
        "tokens_per_step": 16384 * world_size,
        "tokens_per_s": per_device * world_size,
        "tokens_per_s_per_device": per_device,
        "step_time_s": {
            "median": 16384 / per_device,
            "min": 0.9 * 16384 / per_device,
            "max": 1.1 * 16384 / per_device,
        },
        "model_tflops_per_device": per_device * 7.8e9 / 1e12,
        "peak_tflops": None,
        "mfu": mfu,
        "peak_memory_bytes": 40 * 2**30,
        "final_loss": 6.5,
        "torch_version": "2.13.0",
        "config_digest": "abc123",
    }


H100_EFF = [1.0, 0.97, 0.95, 0.92, 0.78]
H800_EFF = [1.0, 0.96, 0.93, 0.90, 0.70]


def write_sweep(
    root: Path, gpu: str, base: float, mfu: float | None, effs: list[float] = H100_EFF
) -> Path:
    # Efficiency dips a little inside a node and drops once the sweep leaves it at 16.
    for size, eff in zip(SIZES, effs, strict=True):
        run = root / f"ws{size}"
        run.mkdir(parents=True)
        value = None if mfu is None else mfu * eff
        (run / "summary.json").write_text(json.dumps(summary(gpu, size, base * eff, value)))
    (root / "command.sh").write_text("#!/bin/sh\n")  # not a run; must be ignored
    (root / "failed_run").mkdir()  # no summary.json; must be skipped
    return root


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    write_sweep(root / "h100", "h100_sxm", 3000.0, 0.45)
    write_sweep(root / "h800", "h800", 2500.0, None, H800_EFF)
    return root


def test_efficiency_is_per_device_throughput_relative_to_base(sweep: Path):
    dirs = [sweep / "h100", sweep / "h800"]
    rows = scaling_rows(load_runs(dirs))
    assert len(rows) == 10
    for label in (H100, H800):
        series = [r for r in rows if r["series"] == label]
        assert [r["world_size"] for r in series] == SIZES
        base = series[0]["tokens_per_s"]
        for row in series:
            expected = row["tokens_per_s"] / (row["world_size"] * base)
            assert row["scaling_efficiency"] == pytest.approx(expected)
        assert series[0]["scaling_efficiency"] == pytest.approx(1.0)
    last = {r["series"]: r["scaling_efficiency"] for r in rows if r["world_size"] == 16}
    assert last == {H100: pytest.approx(0.78), H800: pytest.approx(0.70)}


def tp_run(world_size: int, tp: int, per_device: float, **changes) -> dict:
    """A weak-sweep run under TP: the batch per data-parallel rank is fixed (README), so at
    world size 2 with TP 2 the one data-parallel rank keeps the base's 1024 tokens per step."""
    dp = world_size // tp
    run = {
        **summary("cpu", world_size, per_device, None),
        "parallel": "tp",
        "seq_len": 128,
        "global_batch": 8 * dp,
        "tokens_per_step": 1024 * dp,
        "data_parallel_size": dp,
        "layout": {"name": "tp", "pp": 1, "dp_replicate": 1, "dp_shard": dp, "tp": tp, "ep": 1},
    }
    return {**run, **changes}


def write_runs(root: Path, runs: list[dict]) -> Path:
    for run in runs:
        (root / run["run_name"]).mkdir(parents=True)
        (root / run["run_name"] / "summary.json").write_text(json.dumps(run))
    return root


def test_a_weak_sweep_under_tp_is_one_curve(tmp_path: Path):
    """Grouped by tokens per data-parallel rank, not per device: ws1 (TP 1) and ws2 (TP 2)
    hold the same 1024 tokens per data-parallel rank; they used to split into two one-point
    series of 1024 and 512 tokens per device, each at 100%."""
    runs = load_runs([write_runs(tmp_path, [tp_run(1, 1, 1000.0), tp_run(2, 2, 800.0)])])
    assert len({run["series"] for run in runs}) == 1, {run["series"] for run in runs}
    rows = scaling_rows(runs)
    # Efficiency is still per-device tokens/s against the base's (README).
    assert [round(row["scaling_efficiency"], 3) for row in rows] == [1.0, 0.8]


def test_a_weak_sweep_under_parallel_auto_is_one_curve_per_device(tmp_path: Path):
    """parallel=auto may pick another layout at each world size (ddp at 1, TP 2 at 2): its
    weak sweep keeps each device's sequences (sweep.batch_held), so ws2's one data-parallel
    rank holds twice ws1's tokens and the two are still one workload; read per data-parallel
    rank, as a sweep of one layout is, they would split into two one-point curves."""
    held = {"id": "20261127-181500-ab12", "name": "weak", "batch_held": "sequences_per_device"}
    auto = [
        tp_run(1, 1, 1000.0, sweep=held),
        tp_run(2, 2, 800.0, sweep=held, tokens_per_step=2048, global_batch=16),
    ]
    runs = load_runs([write_runs(tmp_path / "auto", auto)])
    assert len({run["series"] for run in runs}) == 1, {run["series"] for run in runs}
    assert "1024 tokens/step per device" in _workload_label(runs[0])
    assert [round(r["scaling_efficiency"], 3) for r in scaling_rows(runs)] == [1.0, 0.8]
    per_rank = {**held, "batch_held": "sequences_per_dp_rank"}
    one_layout = [
        tp_run(1, 1, 1000.0, sweep=per_rank),
        tp_run(2, 2, 800.0, sweep=per_rank, tokens_per_step=2048, global_batch=16),
    ]
    runs = load_runs([write_runs(tmp_path / "tp", one_layout)])
    assert len({run["series"] for run in runs}) == 2
    assert "2048 tokens/step per data-parallel rank" in runs[1]["series"]


def test_the_data_parallel_size_comes_from_the_layout_or_the_world_size(tmp_path: Path):
    """Without data_parallel_size: the layout's degrees; without a layout either (older
    summaries of data-parallel runs): the world size. Another batch is still another curve."""
    no_dp = tp_run(2, 2, 800.0, data_parallel_size=None)
    runs = load_runs([write_runs(tmp_path / "a", [tp_run(1, 1, 1000.0), no_dp])])
    assert len({run["series"] for run in runs}) == 1
    old = [
        {**summary("cpu", size, 1000.0, None), "layout": None, "tokens_per_step": tokens}
        for size, tokens in ((1, 1024), (2, 2048), (4, 2048))
    ]
    series = [run["series"] for run in load_runs([write_runs(tmp_path / "b", old)])]
    assert series[0] == series[1] != series[2]
    assert "512 tokens/step per data-parallel rank" in series[2]


def test_only_first_multi_node_size_is_flagged(sweep: Path):
    rows = scaling_rows(load_runs([sweep / "h100", sweep / "h800"]))
    flagged = [(r["series"], r["world_size"]) for r in rows if r["crosses_node_boundary"]]
    assert flagged == [(H100, 16), (H800, 16)]


def test_run_dir_and_same_label_from_two_dirs(tmp_path: Path):
    a = write_sweep(tmp_path / "a", "h800", 2500.0, None)
    b = write_sweep(tmp_path / "b", "h800", 2400.0, None)
    runs = load_runs([a, b])
    assert {r["series"] for r in runs} == {f"{H800} (a)", f"{H800} (b)"}
    assert len(load_runs([a, tmp_path / "a" / ".", b])) == 10  # a named twice counts once
    single = load_runs([a / "ws4"])
    assert len(single) == 1 and single[0]["series"] == H800
    assert scaling_rows(single)[0]["scaling_efficiency"] == pytest.approx(1.0)


def test_missing_or_empty_dir_raises(tmp_path: Path):
    with pytest.raises(ReportError, match="nope"):
        load_runs([tmp_path / "nope"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ReportError, match="empty"):
        load_runs([tmp_path / "empty"])


def test_write_report(sweep: Path, tmp_path: Path):
    dirs = [sweep / "h100", sweep / "h800"]
    paths = write_report(dirs, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert H100 in md and H800 in md
    assert "weak scaling" in md
    table = [
        line
        for line in md.splitlines()
        if line.startswith("| ") and not line.startswith("| world size")
    ]
    assert len(table) == 10
    h100_rows, h800_rows = table[:5], table[5:]
    assert all(line.split("|")[6].strip().endswith("%") for line in h100_rows)
    assert all(line.split("|")[6].strip() == "n/a" for line in h800_rows)
    assert h100_rows[-1].startswith("| 16 †") and h800_rows[-1].startswith("| 16 †")
    assert h100_rows[-1].split("|")[7].strip() == "78.0%"

    results = json.loads(paths["json"].read_text())
    expected = scaling_rows(load_runs(dirs))
    assert results == {
        "series": [H100, H800],
        "rows": json.loads(json.dumps(expected)),
        "failed": [],
        "stopped": [],
    }

    png = paths["plot"].read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_a_capped_part_says_its_power_limit(tmp_path: Path):
    """A run declared (or detected) below its part's TDP carries it into the report's header:
    its MFU is against the datasheet peak, which a 500 W H100 does not reach."""
    run = tmp_path / "capped" / "ws1"
    run.mkdir(parents=True)
    capped = {**summary("h100_hbm2e", 1, 5000.0, 0.3), "gpu_power_limit_w": 500.0}
    (run / "summary.json").write_text(json.dumps({**capped, "gpu_tdp_w": 700.0}))
    md = write_report([tmp_path / "capped"], tmp_path / "out")["markdown"].read_text()
    assert "H100_HBM2E at 500 of 700 W (device:" in md


def test_cli_writes_into_the_single_dir(sweep: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(sweep / "h100")]) == 0
    assert (sweep / "h100" / "report.md").exists()
    assert (sweep / "h100" / "scaling.png").exists()
    assert "report.md" in capsys.readouterr().out


def test_cli_missing_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and err.count("\n") == 1


def test_cli_several_dirs_need_out(sweep: Path, capsys: pytest.CaptureFixture[str]):
    assert main([str(sweep / "h100"), str(sweep / "h800")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--out" in err and err.count("\n") == 1
    assert not (sweep / "h100" / "report.md").exists()


def test_cli_out_under_a_file_is_one_line(sweep: Path, tmp_path: Path, capsys):
    """A file where --out's folder would go: it was a NotADirectoryError traceback."""
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    for out, where in ((taken, f"{taken}"), (taken / "report", f"{taken / 'report'}: {taken}")):
        assert main([str(sweep / "h100"), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: --out: {where} is not a directory; give a directory\n"
    assert taken.read_text() == "mine\n"


def test_cli_a_file_as_dir_or_an_empty_out_is_one_line(sweep: Path, tmp_path: Path, capsys):
    """A summary.json given as DIR was blamed on --out (which defaults to DIR); --out '' wrote
    the report into the working directory."""
    summary = next(sweep.rglob("summary.json"))
    assert main([str(summary)]) == 2
    assert capsys.readouterr().err == (
        f"error: DIR: {summary} is a file; give its run or sweep dir\n"
    )
    assert main([str(sweep / "h100"), "--out", ""]) == 2
    assert capsys.readouterr().err == "error: --out: is empty; give a directory\n"
    assert not (sweep / "h100" / "report.md").exists()


def test_python_m_launch_report(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "launch.report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_a_multirun_ends_with_one_report_over_its_jobs(tmp_path: Path):
    """Hydra calls MultirunReport at the end of a multirun (local or submitit): one report
    at hydra.sweep.dir over every job's runs; a job's own report is left as it was."""
    from omegaconf import OmegaConf

    from launch.training import MultirunReport

    write_sweep(tmp_path / "0", "h100_sxm", 3000.0, 0.45)
    (tmp_path / "0" / "report.md").write_text("job 0's own report\n")
    write_sweep(tmp_path / "1", "h800", 2500.0, None, H800_EFF)
    (tmp_path / ".submitit").mkdir()  # submitit's logs: not a job
    MultirunReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    report = (tmp_path / "report.md").read_text()
    assert f"## {H100}" in report and f"## {H800}" in report
    assert (tmp_path / "0" / "report.md").read_text() == "job 0's own report\n"
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted(results["series"]) == sorted([H100, H800])


def test_the_console_names_what_tells_two_workloads_of_a_series_apart(tmp_path: Path):
    """A multirun over seq_len gives one series per workload, told apart by "[seq 1024, ...]"
    (load.py). The console printed each table's title as rich markup, which read the bracket
    as a style and dropped it: two tables both titled "... · bf16 (0)" / "(1)"."""
    from launch.report.console import print_table
    from launch.terminal import plain_console

    for job, seq in (("0", 1024), ("1", 2048)):
        point = tmp_path / job / "ws1"
        point.mkdir(parents=True)
        run = {**summary("h100_sxm", 1, 3000.0, 0.45), "seq_len": seq}
        (point / "summary.json").write_text(json.dumps(run))
    console = plain_console(record=True, width=300)
    print_table(scaling_rows(load_runs([tmp_path / "0", tmp_path / "1"])), console)
    printed = console.export_text()
    assert "[seq 1024," in printed and "[seq 2048," in printed


def test_a_finished_runs_line_prints_its_run_dir_whole(tmp_path: Path):
    """The line a finished point prints ends with its run dir; one named like `[exp a]` (a
    bracket opening with a letter) was read as rich markup and cut from the line."""
    from types import SimpleNamespace

    from launch.terminal import plain_console
    from launch.training import print_run

    run = summary("h100_sxm", 1, 3000.0, 0.45)
    plan = SimpleNamespace(name="ws1", run_dir=tmp_path / "[exp a]" / "ws1")
    console = plain_console(record=True, width=300)
    print_run(None, plan, run, console)
    assert str(plan.run_dir) in console.export_text()
