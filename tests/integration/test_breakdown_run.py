"""A 2-rank DDP run (gloo, tiny) with the profiled window and the no-sync twin."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAST


def test_two_rank_ddp_trace_and_twin(launch_cli, tmp_path):
    run_dir = tmp_path / "run"
    result = launch_cli(
        *FAST,
        "sweep=none",
        "precision=fp32",
        "cluster.nproc_per_node=2",
        "profile.enabled=true",
        "profile.steps=2",
        "profile.twin=true",
        "profile.twin_steps=2",
        f"run_dir={run_dir}",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (run_dir / "trace_rank0.json.gz").is_file()
    assert (run_dir / "trace_rank1.json.gz").is_file()

    # Profiled and twin steps are extra: the timed figures and final_loss are the loop's.
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert summary["final_loss"] == metrics[-1]["loss"]

    trace = summary["breakdown"]["trace"]
    assert trace["errors"] == {} and set(trace["ranks"]) == {"0", "1"}
    rank0_steps = trace["ranks"]["0"]["steps"]
    assert [s["step"] for s in rank0_steps] == [7, 8]
    for rank_record in trace["ranks"].values():
        for step in rank_record["steps"]:
            assert step["comm_s"] > 0  # gloo's all-reduce work is seen
            parts = step["compute_s"] + step["exposed_comm_s"] + step["idle_s"]
            assert parts == pytest.approx(step["step_s"], rel=1e-6)
            assert step["overlapped_comm_s"] + step["exposed_comm_s"] == pytest.approx(
                step["comm_s"], rel=1e-6
            )
    # The trace's step window against the step's wall clock (perf_counter), within 5%.
    walls = summary["profile"]["profiled_step_s"]
    for step, wall in zip(rank0_steps, walls, strict=True):
        assert step["step_s"] == pytest.approx(wall, rel=0.05)

    twin = summary["breakdown"]["twin"]
    assert twin["timed_step_s"] == summary["step_time_s"]["median"]
    assert set(twin["twin_step_s_per_rank"]) == {"0", "1"}
    assert 0 < twin["twin_step_s"] and twin["exposed_comm_s"] >= 0
    assert twin["exposed_comm_s"] == pytest.approx(max(0, twin["step_s"] - twin["twin_step_s"]))

    bandwidth = summary["achieved_bandwidth"]["kinds"]["all_reduce"]
    assert bandwidth["bytes_per_step"] == summary["comm_bytes_per_step"]["all_reduce"]
    assert bandwidth["algbw_gbytes_per_s"] > 0
    assert bandwidth["group_size"] == 2 and bandwidth["link"]  # the DDP group, its link
