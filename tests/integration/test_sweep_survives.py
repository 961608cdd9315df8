"""A sweep stopped by SIGTERM keeps its finished points, stops every rank, writes a partial
report and says how to resume; `resume=true` runs only what is missing (issue 12). The point
it stopped in is recorded as stopped (stopped.json), not failed, until its rerun finishes."""

from __future__ import annotations

import json
import signal
import time

from tests.conftest import FAST, run_launch, running_driver
from tests.ranks.processes import rank_pids

SWEEP = [
    *FAST,
    "precision=fp32",
    "sweep=weak",
    "sweep.world_sizes=[1,2,3]",
    "cluster.nproc_per_node=3",
    "cluster.allow_oversubscribe=true",  # 3 ranks on this 2-core machine
    "train.steps=4",
    "train.warmup_steps=1",
    "train.seq_len=32",
    "train.global_batch=2",
    "train.micro_batch=2",
]


def test_sigterm_keeps_finished_points_and_resume_runs_the_rest(tmp_path):
    root = tmp_path / "sweep"
    args = [*SWEEP, f"run_dir={root}"]
    with running_driver(args, tmp_path, merge_stderr=False) as driver:
        deadline = time.monotonic() + 180
        while not (root / "ws2" / "metrics.jsonl").exists():  # ws1 finished, ws2 running
            assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
            time.sleep(0.1)
        driver.send_signal(signal.SIGTERM)  # what a scheduler's time limit sends
        out, err = driver.communicate(timeout=120)
    assert driver.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert rank_pids(root / "ws2" / "config.yaml") == {}  # no rank outlives the driver
    assert "resume=true" in " ".join(out.split())
    partial = json.loads((root / "results.json").read_text())
    assert [row["world_size"] for row in partial["rows"]] == [1]
    # ws2 was stopped, not failed: recorded so (launch/stops.py) and reported so.
    stopped = json.loads((root / "ws2" / "stopped.json").read_text())
    assert stopped["signal"] == "SIGTERM" and stopped["steps"] == 4
    assert partial["failed"] == []  # ws3 never started: stopped before it, not failed
    assert [p["name"] for p in partial["stopped"]] == ["ws2", "ws3"]
    assert "## Stopped points" in (root / "report.md").read_text()

    first = root / "ws1" / "summary.json"
    kept_mtime = first.stat().st_mtime_ns
    resumed = run_launch([*args, "resume=true"], tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "ws1: finished earlier with this same workload; kept" in " ".join(resumed.stdout.split())
    assert first.stat().st_mtime_ns == kept_mtime
    rows = json.loads((root / "results.json").read_text())["rows"]
    assert [row["world_size"] for row in rows] == [1, 2, 3]
    sweep_ids = {
        json.loads((root / f"ws{n}" / "summary.json").read_text())["sweep"]["id"] for n in (1, 2, 3)
    }
    assert len(sweep_ids) == 1  # one sweep, resumed
    assert not list(root.glob("*/stopped.json"))  # the reruns finished them
