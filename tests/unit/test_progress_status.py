"""The progress bar beside a run: each job's bar says what its progress records hold
(launch/pipeline.py Job.progress_status), through the same run_nodes."""

from __future__ import annotations

import json
import sys

from launch.bench.comm_job import COMM, point_status
from launch.launchers.command import NodeCommand
from launch.launchers.local import progress_bar, run_nodes, training_status
from launch.plan import RunPlan


def test_the_comm_benchmark_s_bar_names_the_point_timed_out_of_all(tmp_path):
    """It read `55/? loss - tok/s -`: a training run's columns beside an unknown total."""
    point = {"step": 1, "scope": "intra-node", "op": "all_reduce", "bytes": 1020}
    point["busbw_gbytes_per_s"] = 0.25
    rank0 = (  # what rank 0 of the benchmark writes: a progress line, then its result
        "import pathlib, sys; d = pathlib.Path(sys.argv[1]); "
        f"(d / 'comm.jsonl').write_text({json.dumps(point)!r} + '\\n'); "
        "(d / 'comm.json').write_text('{}')"
    )
    plan = RunPlan("ws2", 2, 1, 2, 2, tmp_path)
    progress = progress_bar()
    node = NodeCommand(0, [sys.executable, "-c", rank0, str(tmp_path)])
    run_nodes(
        [node], plan, 6, progress, progress_file=COMM.progress_file,
        result_file=COMM.result_file, status=COMM.progress_status,
    )  # fmt: skip
    (task,) = progress.tasks
    assert (task.completed, task.total) == (1, 6)
    assert task.fields["status"] == "intra-node all_reduce 1 KiB: busbw 0.2500 GB/s"
    assert point_status(None) == "starting the ranks"


def test_a_training_run_s_bar_reads_loss_and_tokens_per_s():
    assert training_status(None) == "loss - tok/s -"
    assert training_status({"loss": 2.5, "tokens_per_s": 12345.6}) == "loss 2.5000 tok/s 12,346"
