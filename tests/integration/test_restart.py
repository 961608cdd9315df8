"""--max-restarts works: a rank killed mid-run is restarted with its peers and the run ends.

On torch 2.13 with gloo a restart used to hang or fail on the failed attempt's keys in the
rendezvous store shared with the workers (pytorch#135712); launch/commands.py gives the
workers a store of their own (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1) whenever
cluster.max_restarts > 0. The hang is a race (a restarted rank reads its peer's address from
the failed attempt before the peer rewrites it): without the fix a bare torchrun repro hung
in 3 of 4 and 1 of 2 tries here, and this training run happened to pass 3 of 3, so the test
also checks that the fix is in effect (the workers' TORCHELASTIC_USE_AGENT_STORE is False).
"""

from __future__ import annotations

import json

from tests.conftest import FAST, finish, running_driver
from tests.ranks.processes import kill_rank, rank_environ, rank_pids, wait_for_steps


def test_a_killed_rank_restarts_and_the_run_finishes(tmp_path):
    run_dir = tmp_path / "restart"
    args = [*FAST, "train.steps=24", "gpu=cpu", "sweep=none", "cluster.nproc_per_node=2"]
    with running_driver(
        [*args, "cluster.max_restarts=1", f"run_dir={run_dir}"], tmp_path
    ) as driver:
        wait_for_steps(run_dir / "metrics.jsonl", 1)
        # The fix in effect: the workers' store is their own, not the agent's rendezvous store.
        env = rank_environ(rank_pids(run_dir / "config.yaml")[1])
        assert env["TORCHELASTIC_USE_AGENT_STORE"] == "False", env
        kill_rank(run_dir / "config.yaml", 1)  # SIGKILL: like an OOM kill or a crash
        finish(driver)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cluster"]["restart_count"] == 1  # the second attempt wrote it
    assert summary["timed_steps"] == 24 - 2
    log = (run_dir / "launch.log").read_text()
    assert log.count("step    1/24") == 2, log[-3000:]  # rank 0 started twice
    attempts = sorted(p.name for p in (run_dir / "torchelastic").glob("*/attempt_*"))
    assert attempts == ["attempt_0", "attempt_1"], attempts  # both kept with the run


def test_progress_follows_a_restarted_metrics_file(tmp_path):
    """A restart truncates metrics.jsonl: the tail starts over instead of reading mid-line."""
    from launch.launchers.local import MetricsTail

    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    path.write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')
    assert [r["step"] for r in tail.new_records()] == [1, 2]
    path.write_text('{"step": 1, "loss": 9.5}\n')  # the new attempt's first step: shorter
    assert [r["step"] for r in tail.new_records()] == [1]
    path.write_text('{"step": 1, "loss": 9.5}\n{"step": 2, "loss": 8.25}\n{"step": 3, "x": 1}\n')
    assert [r["step"] for r in tail.new_records()] == [2, 3]
    # Truncated and refilled past the old offset between two reads: a fragment, then whole lines.
    path.write_text('{"step": 1, "loss": 7.0000001}\n' * 5)
    assert all(r["step"] == 1 for r in tail.new_records())
