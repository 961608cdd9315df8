"""A point the driver was stopped in (Ctrl-C, SIGTERM, SIGHUP) is recorded as stopped, not
failed (launch/stops.py): stopped.json with the signal and rank 0's last step, its own
section of the report, rerun by resume=true, removed when the point runs again, and moved
aside with a single run by overwrite=true. No rank is started: run_point is replaced."""

from __future__ import annotations

import json
import signal

import pytest

from launch import pipeline
from launch.errors import Stopped
from launch.plan import config_for, plan_runs
from launch.report import write_report
from launch.rundir import failed_points, set_aside_other_runs
from launch.stops import STOPPED, record_stop
from launch.terminal import plain_console
from launch.training import TRAINING
from tests.conftest import FAST, compose_run_config
from tests.unit.test_report import summary
from train.spec.config import config_digest


def prepared_sweep(tmp_path, *overrides):
    cfg = compose_run_config(
        [
            *FAST,
            "sweep.world_sizes=[1,2,3]",
            "cluster.nproc_per_node=3",
            "cluster.allow_oversubscribe=true",  # checked, never started: 3 ranks, 2 cores
            f"run_dir={tmp_path / 'sweep'}",
            *overrides,
        ]
    )
    return pipeline.prepare(cfg, [], TRAINING, plain_console(quiet=True))


def stop_in_ws2(monkeypatch, signum=signal.SIGTERM):
    """ws1 finishes (its summary is on disk), ws2 logs 3 steps and a half and is stopped;
    ws3 never starts."""

    def run_point(prepared, job, plan, progress):
        if plan.name == "ws1":
            digest = config_digest(config_for(prepared.cfg, plan, ""))  # resume keeps it
            result = {**summary("cpu", 1, 1000.0, 0.1), "config_digest": digest}
            (plan.run_dir / "summary.json").write_text(json.dumps(result))
            return None  # as on a node without rank 0: no report from a fake summary
        lines = [json.dumps({"step": step, "loss": 7.0}) for step in (1, 2, 3)]
        (plan.run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    monkeypatch.setattr(pipeline, "run_point", run_point)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_stop_writes_stopped_json_in_the_running_point(tmp_path, monkeypatch, signum):
    stop_in_ws2(monkeypatch, signum)
    prepared = prepared_sweep(tmp_path)
    with pytest.raises((Stopped, KeyboardInterrupt)):
        pipeline.execute(prepared, TRAINING, plain_console(quiet=True))
    ws2 = tmp_path / "sweep" / "ws2"
    record = json.loads((ws2 / STOPPED).read_text())
    expected = (signal.Signals(signum).name, 3, 6)
    assert (record["signal"], record["step"], record["steps"]) == expected
    assert record["time"]
    assert not (ws2 / "failed.json").exists()
    assert not (tmp_path / "sweep" / "ws1" / STOPPED).exists()  # it finished before the stop
    never = json.loads((tmp_path / "sweep" / "ws3" / STOPPED).read_text())
    assert (never["started"], never["step"]) == (False, None)
    assert never["error"] == f"stopped by {expected[0]} before it started"


def test_a_stopped_point_is_reported_as_stopped_not_failed(tmp_path, monkeypatch):
    stop_in_ws2(monkeypatch)
    with pytest.raises(Stopped):
        pipeline.execute(prepared_sweep(tmp_path), TRAINING, plain_console(quiet=True))
    root = tmp_path / "sweep"
    points = failed_points(root)
    assert [(p["name"], p["status"]) for p in points] == [("ws2", "stopped"), ("ws3", "stopped")]
    assert points[0]["error"] == "stopped by SIGTERM at step 3 of 6"
    paths = write_report([root], root)
    report = paths["markdown"].read_text()
    assert "## Stopped points" in report and "## Failed points" not in report
    assert "| ws2 | 2 | SIGTERM | 3 |" in report
    results = json.loads(paths["json"].read_text())
    assert results["failed"] == [] and [p["name"] for p in results["stopped"]] == ["ws2", "ws3"]


def test_resume_reruns_a_stopped_point_and_the_rerun_removes_its_record(tmp_path, monkeypatch):
    stop_in_ws2(monkeypatch)
    with pytest.raises(Stopped):
        pipeline.execute(prepared_sweep(tmp_path), TRAINING, plain_console(quiet=True))
    resumed = prepared_sweep(tmp_path, "resume=true")
    assert list(resumed.finished) == ["ws1"]  # ws2 and ws3 have no summary: they run again
    ran = []

    def run_point(prepared, job, plan, progress):
        ran.append(plan.name)
        assert not (plan.run_dir / STOPPED).exists()  # gone before the rerun starts
        (plan.run_dir / "summary.json").write_text(json.dumps(summary("cpu", 2, 2000.0, 0.1)))
        return None

    monkeypatch.setattr(pipeline, "run_point", run_point)
    assert pipeline.execute(resumed, TRAINING, plain_console(quiet=True)) == 0
    assert ran == ["ws2", "ws3"] and not list((tmp_path / "sweep").glob(f"*/{STOPPED}"))
    assert failed_points(tmp_path / "sweep") == []


def test_a_stopped_single_run_is_moved_aside_whole_by_overwrite(tmp_path):
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.yaml").write_text("name: scaleprobe\n")
    (root / STOPPED).write_text(json.dumps({"name": "run", "signal": "SIGTERM", "step": 2}))
    cfg = compose_run_config([*FAST, "sweep.world_sizes=[1]", f"run_dir={root}"])
    aside = set_aside_other_runs(root, plan_runs(cfg), plain_console(quiet=True))
    assert (aside / "run" / STOPPED).is_file() and not (root / STOPPED).exists()


def test_a_point_stopped_before_its_first_step_says_so(tmp_path):
    cfg = compose_run_config([*FAST, "sweep.world_sizes=[2]", f"run_dir={tmp_path}"])
    (plan,) = plan_runs(cfg)
    plan.run_dir.mkdir()
    record_stop(plan, "SIGINT", "metrics.jsonl", 6)
    (point,) = failed_points(tmp_path)
    assert point["error"] == "stopped by SIGINT before its first step" and point["step"] is None


def test_a_point_whose_summary_was_written_before_the_stop_is_not_stopped(tmp_path, monkeypatch):
    """Rank 0 wrote summary.json, then the stop reached the driver before it saw the ranks
    exit: the point finished (its summary counts for the report and for resume=true)."""

    def run_point(prepared, job, plan, progress):
        (plan.run_dir / "summary.json").write_text(json.dumps(summary("cpu", 1, 1000.0, 0.1)))
        raise Stopped(signal.SIGTERM)

    monkeypatch.setattr(pipeline, "run_point", run_point)
    with pytest.raises(Stopped):
        pipeline.execute(prepared_sweep(tmp_path), TRAINING, plain_console(quiet=True))
    root = tmp_path / "sweep"
    assert not (root / "ws1" / STOPPED).exists()
    assert json.loads((root / "ws2" / STOPPED).read_text())["started"] is False


def test_the_lines_above_the_bar_are_printed_as_they_are(tmp_path, monkeypatch):
    """The progress bar had a console of its own, with rich markup on: a failed point's
    `[rank0]:` lines and a finished point's run dir named like `[exp a]` lost their brackets.
    It prints on the driver's console (launch/terminal.py) now."""
    import io

    from launch.errors import RunFailed

    def run_point(prepared, job, plan, progress):
        if plan.name == "ws1":
            raise RunFailed("ws1 failed: [rank0]: RuntimeError: [exp a] went wrong")
        result = summary("cpu", 2, 1000.0, 0.1)
        (plan.run_dir / "summary.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(pipeline, "run_point", run_point)
    out = io.StringIO()
    run_dir = tmp_path / "[exp a]"
    prepared = prepared_sweep(tmp_path, "sweep.world_sizes=[1,2]", f"run_dir='{run_dir}'")
    with pytest.raises(RunFailed, match="1 of 2 run"):
        pipeline.execute(prepared, TRAINING, plain_console(file=out, width=300))
    printed = out.getvalue()
    assert "ws1 failed: [rank0]: RuntimeError: [exp a] went wrong" in printed
    assert str(run_dir / "ws2") in printed
