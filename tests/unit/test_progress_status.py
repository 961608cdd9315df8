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


def test_the_bar_names_a_run_as_its_dir_is_named():
    """A run without a sweep is named by its run dir; the bar read `[exp a]` as a rich tag and
    showed an empty name (and `run[red]x` as a red `runx`)."""
    from launch.terminal import plain_console

    progress = progress_bar()
    for name in ("[exp a]", "run[red]x"):
        progress.add_task(name, total=3, status="[rank0]: starting")
    console = plain_console(record=True, width=200)
    console.print(progress.make_tasks_table(progress.tasks))
    printed = console.export_text()
    assert "[exp a]" in printed and "run[red]x" in printed and "[rank0]: starting" in printed


def test_the_driver_s_consoles_print_strings_and_table_cells_as_they_are():
    """launch/terminal.py: markup off for what is printed and for the cells of a table (rich
    renders a str cell with its console's setting); the styled words keep their text."""
    from rich.table import Table

    from launch.terminal import heading, plain_console, warning

    console = plain_console(record=True, width=200)
    table = Table(title="[seq 32, mb 2]")
    table.add_column("[layout]")
    table.add_row("[dp 2] fsdp")
    console.print(table)
    console.print("run dir /tmp/[exp a]/ws1")
    console.print(warning("cluster.hosts=[n1,n2] [bold]"))
    console.print(heading("[intra-node]", ", 2 ranks"))
    printed = console.export_text()
    for text in ("[seq 32, mb 2]", "[layout]", "[dp 2] fsdp", "/tmp/[exp a]/ws1",
                 "warning: cluster.hosts=[n1,n2] [bold]", "[intra-node], 2 ranks"):  # fmt: skip
        assert text in printed, text
