"""What a hostile but realistic user hit (issue 12): each refused in one line, before anything
starts, or kept from corrupting results."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest

from launch.bench import matmul_ceiling as mamf
from launch.errors import ConfigError, RunFailed
from launch.plan import plan_runs
from launch.report import load_runs, write_report
from launch.rundir import record_failure, take_run_dir
from launch.validate import validate
from tests.conftest import FAST, compose_run_config, free_port
from tests.unit.test_report import summary


def validated(*overrides: str):
    cfg = compose_run_config([*FAST, "sweep=none", "run_dir=/tmp/never-written", *overrides])
    validate(cfg, plan_runs(cfg))
    return cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.global_batch=0"], "train.global_batch: 0: must be >= 1"),
        (["train.lr=nan"], "train.lr: nan: must be a finite number >= 0"),
        (["cluster.nproc_per_node=64"], "cluster.nproc_per_node: 64 rank thread(s) on"),
        (
            ["cluster.nproc_per_node=1", "cluster.cpu_threads_per_rank=64"],
            "cluster.cpu_threads_per_rank: 64 rank thread(s) on",
        ),
        (["precision=fp8", "gpu=h100_sxm"], "precision.fp8.min_dim: no Linear layer of model tiny"),
        (["resume=true", "overwrite=true"], "resume: resume=true keeps finished runs"),
        (
            [
                "gpu=h100_sxm",
                "model=llama_70b",
                "cluster.nproc_per_node=2",
                "precision=bf16",
                "parallel=ddp",
            ],
            "parallel: llama_70b under parallel=ddp holds 1104 GB per rank",
        ),
    ],
)
def test_bad_input_refused_before_anything_runs(overrides, message):
    with pytest.raises(ConfigError) as caught:
        validated(*overrides)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_oversubscription_is_allowed_only_when_asked():
    cfg = validated(
        "cluster.nproc_per_node=64", "train.global_batch=128", "cluster.allow_oversubscribe=true"
    )
    assert cfg.cluster.allow_oversubscribe


def token_config(path, dtype="uint16", vocab=2048):
    return [
        "data.source=file",
        f"data.path={path}",
        f"data.dtype={dtype}",
        f"model.vocab_size={vocab}",
        "train.seq_len=32",
    ]


def test_a_bad_token_id_after_the_first_million_is_found(tmp_path):
    tokens = np.arange(3_000_000, dtype=np.uint16) % 2048
    tokens[-5] = 4000  # past vocab_size, near the end of the file
    tokens.tofile(tmp_path / "t.bin")
    with pytest.raises(ConfigError, match="^data.dtype: .* token id 4000 >= vocab_size 2048"):
        validated(*token_config(tmp_path / "t.bin"))


def test_uint32_tokens_read_as_uint16_are_detected(tmp_path):
    (np.arange(100_000, dtype=np.uint32) % 2048).tofile(tmp_path / "t.bin")
    with pytest.raises(ConfigError, match="^data.dtype: .* looks like uint32"):
        validated(*token_config(tmp_path / "t.bin"))
    validated(*token_config(tmp_path / "t.bin", dtype="uint32"))


def test_a_run_dir_is_taken_by_one_driver_at_a_time(tmp_path):
    held = take_run_dir(tmp_path)
    with pytest.raises(ConfigError, match=rf"^run_dir: {tmp_path} is in use .*pid {os.getpid()}"):
        take_run_dir(tmp_path)
    held.close()  # the driver exits: the lock goes with it
    take_run_dir(tmp_path).close()


def test_resume_needs_a_sweep_to_resume(tmp_path):
    from launch.rundir import finished_points

    cfg = compose_run_config([*FAST, f"run_dir={tmp_path}", "resume=true"])
    with pytest.raises(ConfigError, match="^resume: .* holds no run or sweep"):
        finished_points(cfg, plan_runs(cfg))


def test_a_quick_measurement_never_replaces_a_full_one():
    full = {
        "best_tflops": {"bf16": 0.02, "fp32": 0.09},
        "best_size": {"bf16": 1024, "fp32": 1024},
        "quick": {"bf16": False, "fp32": False},
    }
    quick = {"best_tflops": {"bf16": 0.01}, "best_size": {"bf16": 256}, "quick": {"bf16": True}}
    merged = mamf.merge_measurements(full, quick)
    assert merged["best_tflops"] == {"bf16": 0.02, "fp32": 0.09}
    better = {"best_tflops": {"bf16": 0.03}, "best_size": {"bf16": 2048}, "quick": {"bf16": False}}
    assert mamf.merge_measurements(full, better)["best_tflops"]["bf16"] == 0.03


def test_a_truncated_cache_is_ignored(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path))
    path = mamf.cache_path("some cpu", 1)
    path.parent.mkdir(parents=True)
    path.write_text('{"best_tflops": {"fp3')
    assert mamf.load_measured("some cpu", 1) is None
    assert "ignoring unreadable matmul cache" in capsys.readouterr().err


def write_run(root, name, **changes):
    data = {**summary("h100_sxm", int(name[2:]), 3000.0, 0.4), **changes}
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps(data))


def test_runs_of_another_workload_never_share_a_curve(tmp_path):
    write_run(tmp_path, "ws1")
    write_run(tmp_path, "ws2")
    # Left over from an earlier sweep with another sequence length: its own curve.
    write_run(tmp_path, "ws4", seq_len=512, sweep={"id": "older", "name": "weak"})
    series = {run["series"] for run in load_runs([tmp_path])}
    assert len(series) == 2 and any("seq 512" in s and "sweep older" in s for s in series)


def test_failed_points_are_listed_in_the_report(tmp_path):
    write_run(tmp_path, "ws1")
    plan = plan_runs(compose_run_config([*FAST, f"run_dir={tmp_path}", "sweep.world_sizes=[1,2]"]))[
        1
    ]
    plan.run_dir.mkdir()
    exc = RunFailed("ws2: node 0 exited with 1", returncode=1, log_tail="ValueError: boom\n")
    record_failure(plan, exc)
    paths = write_report([tmp_path], tmp_path)
    report = paths["markdown"].read_text()
    assert "## Failed points" in report and "`ValueError: boom`" in report
    assert json.loads(paths["json"].read_text())["failed"][0]["exit_code"] == 1


def test_a_sweep_whose_base_failed_names_it_and_the_report_exits_1(tmp_path, capsys):
    """A Slurm job that failed while nobody followed it leaves a point with a config.yaml and
    no summary: the report names it, says the surviving point is not the sweep's base, and
    `python -m launch.report` exits 1 (it used to exit 0 with ws2 silently at 100%)."""
    from launch.report import main

    write_run(tmp_path, "ws2")
    (tmp_path / "ws1").mkdir()
    (tmp_path / "ws1" / "config.yaml").write_text("cluster:\n  nodes: 1\n  nproc_per_node: 1\n")
    (tmp_path / "ws1" / "slurm-41.out").write_text("RuntimeError: boom\n")
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "1 point(s) without a summary: ws1 (no summary.json" in err and "slurm-41.out" in err
    report = (tmp_path / "report.md").read_text()
    assert "## Failed points" in report
    assert "the base is not the sweep's smallest point:** ws1 (world size 1)" in report
    shutil.rmtree(tmp_path / "ws1")
    write_run(tmp_path, "ws1")  # the point finished after all: a clean report, exit 0
    assert main([str(tmp_path)]) == 0
    assert "not the sweep's smallest" not in (tmp_path / "report.md").read_text()


def test_sweeps_over_two_links_or_fabrics_are_two_curves(tmp_path):
    """Real clusters: the link cluster.link_gbps declares (kept in the run's config.yaml,
    read where the ranks did not record it) and the fabric profile label the series."""
    for name, gbps in (("fast", 0), ("slow", 0.1)):
        for size in (1, 2):
            run = tmp_path / name / f"ws{size}"
            write_run(tmp_path / name, f"ws{size}", cluster={"name": "slurm", "launcher": "slurm"})
            link = f"{{gbps: {gbps}, declared: true}}" if gbps else "null"
            (run / "config.yaml").write_text(f"resolved:\n  applied_link: {link}\n")
    write_run(tmp_path / "ib", "ws1", fabric={"name": "nvlink_ib", "nccl_env": {}})
    runs = load_runs([tmp_path / "fast", tmp_path / "slow", tmp_path / "ib"])
    series = sorted({run["series"] for run in runs})
    assert series == [
        "h100_sxm · gpt_1_3b · ddp · bf16",
        "h100_sxm · gpt_1_3b · ddp · bf16 · fabric nvlink_ib",
        "h100_sxm · gpt_1_3b · ddp · bf16 · link 100 Mbit/s",
    ]
    report = write_report([tmp_path / "slow"], tmp_path / "out")["markdown"].read_text()
    assert "cluster slurm (launcher slurm) · link 100 Mbit/s per node (declared)" in report


def multinode_sweep(tmp_path, node_rank):
    overrides = [
        *FAST,
        "gpu=cpu",
        "cluster=multinode",
        "cluster.hosts=[node1,node2]",
        "cluster.nproc_per_node=1",
        "sweep.world_sizes=[1,2]",
        f"cluster.node_rank={node_rank}",
        f"cluster.master_port={free_port()}",
        f"run_dir={tmp_path / 'shared'}",
    ]
    return compose_run_config(overrides), overrides


def test_node_drivers_share_a_run_dir_node_0_owning_it(tmp_path, monkeypatch):
    """One driver per node on a shared filesystem: node 1 is not refused by node 0's lock,
    writes only its own files, and, its part done, asks for no resume."""
    from launch import pipeline
    from launch.terminal import plain_console
    from launch.training import TRAINING

    started = []
    monkeypatch.setattr(
        pipeline,
        "run_nodes",
        lambda nodes, plan, *a, **k: started.append(
            (plan.name, [n.node_rank for n in nodes], k["keep_progress"], k["keep_result"])
        ),
    )
    cfg0, overrides0 = multinode_sweep(tmp_path, 0)
    node0 = pipeline.prepare(cfg0, overrides0, TRAINING, plain_console(file=io.StringIO()))
    cfg1, overrides1 = multinode_sweep(tmp_path, 1)
    out = io.StringIO()
    node1 = pipeline.prepare(cfg1, overrides1, TRAINING, plain_console(file=out, width=300))
    root = tmp_path / "shared"
    assert sorted(p.name for p in (root / "ws2").iterdir()) == ["config-node1.yaml", "config.yaml"]
    assert (root / ".scaleprobe-node1.lock").is_file() and (root / "command.sh").is_file()
    assert node1.config_paths["ws2"].name == "config-node1.yaml"
    assert pipeline.execute(node1, TRAINING, plain_console(file=out, width=300)) == 0
    # Node 1 has no part in ws1; in ws2 it starts its own node and clears none of rank 0's files.
    assert started == [("ws2", [1], True, True)]
    assert "remaining points" not in out.getvalue()
    with pytest.raises(ConfigError, match="in use as node 1"):
        pipeline.prepare(*multinode_sweep(tmp_path, 1), TRAINING, plain_console())
    assert node0.lock and not node0.lock.closed  # node 0 still owns the dir


def test_the_resume_hint_keeps_list_values(tmp_path):
    """rich reads `[node1,node2]` as a markup tag and used to print `cluster.hosts=`."""
    from launch.pipeline import Prepared, finish
    from launch.terminal import plain_console
    from launch.training import TRAINING

    cfg, overrides = multinode_sweep(tmp_path, 0)
    plans = plan_runs(cfg)
    prepared = Prepared(
        cfg, plans, None, "s", resume_command="python -m launch 'cluster.hosts=[node1,node2]'"
    )
    out = io.StringIO()
    finish(prepared, TRAINING, [], plain_console(file=out, width=300), {"ws1"})
    assert (
        "to run the remaining points: python -m launch 'cluster.hosts=[node1,node2]'"
        in out.getvalue()
    )


def test_a_failed_deepspeed_run_leaves_no_shared_memory_segment(tmp_path, monkeypatch):
    """A deepspeed-launcher rank that dies before unlinking its all-reduce segment
    (train/files/shm_segments.py) leaves it in RAM; the driver removes its run's, by the run's
    port, and no other run's."""
    from launch import pipeline
    from launch.terminal import plain_console
    from launch.training import TRAINING
    from train.files.shm_segments import allreduce_segment

    port = 47000 + os.getpid() % 1000
    ours = allreduce_segment("127.0.0.1", port, 1)
    other = allreduce_segment("127.0.0.1", port + 1, 0)  # another run's, on another port

    def dies_leaving_its_segment(nodes, plan, *args, **kwargs):
        ours.write_bytes(b"x")
        raise RunFailed(f"{plan.name}: node 0 exited with 1")

    monkeypatch.setattr(pipeline, "run_nodes", dies_leaving_its_segment)
    overrides = [*FAST, "sweep=none", "launcher=deepspeed", "parallel=zero1",
                 "cluster.nproc_per_node=2", f"cluster.master_port={port}",
                 f"run_dir={tmp_path / 'run'}"]  # fmt: skip
    prepared = pipeline.prepare(
        compose_run_config(overrides), overrides, TRAINING, plain_console(file=io.StringIO())
    )
    other.write_bytes(b"x")
    try:
        with pytest.raises(RunFailed):
            pipeline.execute(prepared, TRAINING, plain_console(file=io.StringIO()))
        assert not ours.exists()
        assert other.exists()
    finally:
        ours.unlink(missing_ok=True)
        other.unlink(missing_ok=True)
