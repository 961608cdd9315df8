"""Writes that survive a full disk and a signal (train/files/safe_files.py), issue 21 item 2.

Two ways to fill a disk without filling the real one: a monkeypatched ``os.write`` that
raises ENOSPC (the helper writes through it on purpose), and, as root, a tmpfs of a few pages
mounted by the test under tmp_path and unmounted after it (marker `root`), for what writes
through libraries (matplotlib's savefig) and for the driver end to end.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from launch.report.load import load_runs
from launch.report.scaling import scaling_rows
from launch.report.write import write_files
from tests.unit.test_report import summary
from train.files.safe_files import STAGING_PREFIX, DiskFull, append_line, staged, write_atomic
from train.measure.metrics import StepRecord
from train.measure.sinks import MetricsSinks
from train.measure.tracking import WandbRun


@pytest.fixture
def disk_full_after(monkeypatch):
    """os.write fails with ENOSPC once ``n`` bytes have gone through it (0: at once)."""

    def arm(n: int = 0) -> None:
        written = [0]
        real = os.write

        def write(fd, data):
            if written[0] + len(data) > n:
                room = max(0, n - written[0])
                if room:
                    written[0] += real(fd, bytes(data[:room]))
                    return room
                raise OSError(errno.ENOSPC, "No space left on device")
            written[0] += len(data)
            return real(fd, data)

        monkeypatch.setattr(os, "write", write)

    return arm


def test_a_full_disk_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, disk_full_after):
    path = tmp_path / "summary.json"
    path.write_text('{"old": true}\n')
    disk_full_after(100)  # part of the new file fits, then the disk is full
    new = json.dumps({"new": "x" * 500})
    with pytest.raises(DiskFull) as raised:
        write_atomic(path, new)
    message = str(raised.value)
    assert message.startswith(f"no space left on device writing {path} (")
    assert f"({len(new)} bytes needed, " in message and "\n" not in message
    assert path.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp file


def test_a_new_file_on_a_full_disk_is_absent_not_empty(tmp_path, disk_full_after):
    disk_full_after(0)
    with pytest.raises(DiskFull):
        write_atomic(tmp_path / "config.yaml", "a: 1\n")
    assert list(tmp_path.iterdir()) == []  # not a 0-byte config.yaml


def test_an_append_on_a_full_disk_is_cut_back_to_the_last_whole_line(tmp_path, disk_full_after):
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"step": 1}')
    disk_full_after(5)  # a few bytes of the next line would land
    with pytest.raises(DiskFull):
        append_line(path, '{"step": 2, "loss": 6.5}')
    assert path.read_text() == '{"step": 1}\n'


def test_rank_zero_sinks_say_a_full_disk_as_disk_full(tmp_path, disk_full_after):
    """metrics.jsonl and summary.json go through the helper: DiskFull, which the rank prints
    as one line (train/runtime/rank_exit.py)."""
    sinks = MetricsSinks(
        run_dir=tmp_path, total_steps=3, tracker=WandbRun("disabled", "p", None, tmp_path, "r",
                                                          None, "cpu", {})
    )  # fmt: skip
    record = StepRecord.measured(
        step=1, loss=6.0, step_time_s=0.1, tokens_per_step=64, world_size=1,
        flops_per_token=1e6, peak_tflops=None, memory_bytes=0, timed=True,
    )  # fmt: skip
    sinks.log_step(record)
    disk_full_after(0)
    with pytest.raises(DiskFull, match="metrics.jsonl"):
        sinks.log_step(record)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (tmp_path / "wandb").exists()  # disabled: no wandb folder


def report_runs(tmp_path: Path, per_device: float) -> tuple[list, list]:
    sweep = tmp_path / f"sweep{per_device:g}"
    for size in (1, 2):
        (sweep / f"ws{size}").mkdir(parents=True)
        run = summary("h100_sxm", size, per_device, 0.4)
        (sweep / f"ws{size}" / "summary.json").write_text(json.dumps(run))
    runs = load_runs([sweep])
    return runs, scaling_rows(runs)


def report_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_a_stop_while_the_report_is_renamed_into_place_waits_for_the_last_rename(
    tmp_path, monkeypatch
):
    """SIGTERM arriving between two renames acts after the last: the new report.md,
    results.json and scaling.png together, never the new markdown beside the old plot."""
    out = tmp_path / "out"
    write_files(*report_runs(tmp_path, 1000.0), out)
    old = report_bytes(out)

    class Stop(BaseException):
        pass

    def stop(signum, frame):
        raise Stop

    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # in the middle of the set
        real_replace(src, dst)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(Stop):
            write_files(*report_runs(tmp_path, 2000.0), out)
    finally:
        signal.signal(signal.SIGTERM, previous)
    new = report_bytes(out)
    assert sorted(new) == ["report.md", "results.json", "scaling.png"]
    assert all(new[name] != old[name] for name in new), "every file of the set was replaced"
    assert "2,000" in new["report.md"].decode() or "2000" in new["results.json"].decode()
    assert not list(out.glob(f"{STAGING_PREFIX}*"))


def test_an_error_while_rendering_leaves_the_previous_report_whole(tmp_path):
    out = tmp_path / "out"
    write_files(*report_runs(tmp_path, 1000.0), out)
    (out / "breakdown.png").write_bytes(b"old breakdown")
    old = report_bytes(out)
    with pytest.raises(RuntimeError), staged(out, replaces=("breakdown.png",)) as stage:
        (stage / "report.md").write_text("half a report")
        raise RuntimeError("the plot failed")
    assert report_bytes(out) == old
    with staged(out, replaces=("breakdown.png",)) as stage:
        (stage / "report.md").write_text("a new report without a breakdown")
    assert not (out / "breakdown.png").exists()  # the new set has none: the old one goes
    assert not list(out.glob(f"{STAGING_PREFIX}*"))


# --- a real full disk: a tmpfs of a few pages (root) ------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs at tmp_path/disk, unmounted when the test ends; ``fill(free)`` leaves
    about ``free`` bytes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def fill(free: int) -> None:
        filler = disk / "filler"
        with filler.open("ab") as f:
            f.write(b"\0" * max(0, os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize - free))

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.root
def test_a_report_on_a_full_disk_is_one_line_and_the_old_report_stays(tmp_path, small_disk, capsys):
    from launch.report.cli import main

    disk, fill = small_disk
    sweep = disk / "sweep"
    for size in (1, 2):
        (sweep / f"ws{size}").mkdir(parents=True)
        run = summary("h100_sxm", size, 1000.0, 0.4)
        (sweep / f"ws{size}" / "summary.json").write_text(json.dumps(run))
    assert main([str(sweep)]) == 0
    old = report_bytes(sweep)
    fill(8192)  # room for report.md and results.json, not for scaling.png
    capsys.readouterr()
    assert main([str(sweep)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no space left on device writing {sweep}")
    assert report_bytes(sweep) == old  # nothing half-replaced: the old report, whole
    assert not list(sweep.glob(f"{STAGING_PREFIX}*"))


@pytest.mark.root
def test_the_driver_on_a_full_disk_is_one_line_exit_1_and_no_empty_config(
    small_disk, launch_in_process
):
    disk, fill = small_disk
    fill(0)
    run_dir = disk / "run"
    result = launch_in_process(f"run_dir={run_dir}", "dry_run=true", "sweep=none")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: no space left on device writing ")
    assert not [p for p in disk.rglob("*") if p.is_file() and p.name != "filler"
                and p.name != ".scaleprobe.lock" and p.stat().st_size == 0]  # fmt: skip
    assert not (run_dir / "config.yaml").exists()
