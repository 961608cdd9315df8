"""launcher=slurm through the CLI, and Hydra's submitit launcher (checked with submitit_local)."""

from __future__ import annotations

import fcntl
import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from launch import pipeline
from launch.cluster.setup import set_up_cluster
from launch.errors import ConfigError, RunFailed
from launch.launchers import slurm, slurm_jobs
from launch.plan import plan_runs
from launch.resolve import sweep_every_node
from launch.rundir import LOCK
from launch.terminal import plain_console
from launch.training import TRAINING
from tests.conftest import FAST, compose_run_config, run_launch
from tests.unit.test_failing_rank_lines import GLOO_TRACEBACK, KILLED_FOOTER
from tests.unit.test_report import summary


def test_without_sbatch_a_real_submit_is_refused_before_anything_starts(monkeypatch):
    monkeypatch.setattr(slurm.shutil, "which", lambda tool: None)
    cfg = compose_run_config([*FAST, "cluster=slurm", "launcher=slurm", "run_dir=/tmp/never"])
    with pytest.raises(ConfigError, match="launcher.name: launcher=slurm: sbatch is not on PATH"):
        set_up_cluster(cfg, plan_runs(cfg), plain_console())


def test_submitit_local_job_prints_its_sbatch_script(tmp_path):
    """`hydra/launcher=submitit_local`: each sweep point is a job that runs the driver."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    out = tmp_path / "multirun"
    result = run_launch(
        [
            "--multirun",
            "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={out}",
            "hydra.launcher.timeout_min=5",
            *FAST,
            "gpu=h100_sxm",
            "sweep=none",
            "cluster=slurm",
            "launcher=slurm",
            "dry_run=true",
            "train.global_batch=32",
            "cluster.nodes=2",  # one point keeps it quick; the path is the same for N
        ],
        tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = sorted(out.glob(".submitit/*/*_log.out"))
    assert len(outputs) == 1, outputs
    assert "#SBATCH --nodes=2" in outputs[0].read_text()
    assert (out / "0" / "job.sbatch").is_file()


def slurm_sweep(tmp_path, *extra):
    overrides = [
        *FAST,
        "gpu=cpu",
        "cluster=slurm",
        "launcher=slurm",
        "cluster.nodes=1",
        "cluster.nproc_per_node=2",
        "sweep.world_sizes=[1,2]",
        f"run_dir={tmp_path / 'sweep'}",
        *extra,
    ]
    return compose_run_config(overrides), overrides


@pytest.fixture
def fake_slurm(monkeypatch):
    """sbatch hands out ids 101, 102, ...; the jobs' states come from `states` (a list of
    {job id: state} per poll, the last one repeated)."""
    submitted: list[str] = []
    polls: list[dict[str, str]] = []
    on_poll: list = []

    def submit(script):
        submitted.append(str(script))
        return str(100 + len(submitted))

    def job_states(ids):
        for hook in on_poll:
            hook()
        states = polls.pop(0) if len(polls) > 1 else polls[0]
        return {i: slurm_jobs.JobState(states.get(i, "ENDED")) for i in ids}

    monkeypatch.setattr(slurm, "sbatch_available", lambda: True)
    monkeypatch.setattr(slurm, "submit", submit)
    monkeypatch.setattr(slurm_jobs, "job_states", job_states)
    monkeypatch.setattr(slurm_jobs, "POLL_FIRST_S", 0.0)
    monkeypatch.setattr(pipeline, "exit_code", lambda job_id: 3)
    return SimpleNamespace(submitted=submitted, polls=polls, on_poll=on_poll)


def lock_is_held(root: Path) -> bool:
    with (root / LOCK).open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_the_driver_follows_its_jobs_holding_the_run_dir_and_reports(tmp_path, fake_slurm):
    """launcher.wait (the default on a submit host): one progress line per change with the
    job ids and states, the run dir locked until the jobs end, then the report; a job that
    ended without a summary is a failed point named in the report, never a silent base."""
    cfg, overrides = slurm_sweep(tmp_path)
    root = Path(cfg.run_dir)
    held = []

    def jobs_end():
        held.append(lock_is_held(root))
        if len(held) == 2:  # ws2 finishes; ws1 (the base) dies with a traceback
            (root / "ws2" / "summary.json").write_text(json.dumps(summary("cpu", 2, 900.0, None)))
            (root / "ws1" / "slurm-101.out").write_text(
                "Traceback (most recent call last):\n  File x\nRuntimeError: rank 0 died\n"
            )

    fake_slurm.on_poll.append(jobs_end)
    fake_slurm.polls += [
        {"101": "PENDING", "102": "PENDING"},
        {"101": "RUNNING", "102": "RUNNING"},
        {"101": "FAILED", "102": "COMPLETED"},
    ]
    out = io.StringIO()
    console = plain_console(file=out, width=300)
    with pytest.raises(RunFailed, match="1 of 2 run"):
        pipeline.run_job(cfg, overrides, TRAINING, console)
    text = out.getvalue()
    assert "slurm: ws1 job 101 PENDING · ws2 job 102 PENDING" in text
    assert "slurm: ws1 job 101 FAILED · ws2 job 102 COMPLETED" in text
    assert held == [True, True, True]  # locked while following
    failed = json.loads((root / "ws1" / "failed.json").read_text())
    assert failed["exit_code"] == 3 and failed["last_lines"][-1] == "RuntimeError: rank 0 died"
    assert "Slurm job 101 ended FAILED" in failed["error"]
    report = (root / "report.md").read_text()
    assert "## Failed points" in report and "ws1" in report
    assert "the base is not the sweep's smallest point:** ws1 (world size 1)" in report
    assert slurm_jobs.recorded_jobs(root) == {"ws1": "101", "ws2": "102"}


def test_wait_false_submits_prints_the_ids_and_the_report_line(tmp_path, fake_slurm, capsys):
    cfg, overrides = slurm_sweep(tmp_path, "launcher.wait=false")
    out = io.StringIO()
    assert pipeline.run_job(cfg, overrides, TRAINING, plain_console(file=out, width=300)) == 0
    printed = capsys.readouterr().out + out.getvalue()
    assert "ws1: submitted Slurm job 101" in printed and "ws2: submitted Slurm job 102" in printed
    assert "submitted job(s) 101 102; when they have finished: python -m launch.report " in printed
    assert not fake_slurm.polls  # never followed


def test_a_second_driver_is_refused_while_the_first_ones_jobs_run(tmp_path, fake_slurm):
    """The lock ends with a wait=false driver, its jobs do not: the same command run again
    would submit jobs that overwrite theirs."""
    cfg, overrides = slurm_sweep(tmp_path, "launcher.wait=false")
    pipeline.run_job(cfg, overrides, TRAINING, plain_console(file=io.StringIO()))
    fake_slurm.polls.append({"101": "RUNNING", "102": "PENDING"})
    cfg, overrides = slurm_sweep(tmp_path, "launcher.wait=false")
    with pytest.raises(ConfigError, match=r"101 RUNNING, 102 PENDING.*scancel 101 102"):
        pipeline.run_job(cfg, overrides, TRAINING, plain_console(file=io.StringIO()))
    assert len(fake_slurm.submitted) == 2
    fake_slurm.polls[:] = [{"101": "COMPLETED", "102": "CANCELLED"}]
    cfg, overrides = slurm_sweep(tmp_path, "launcher.wait=false")
    pipeline.run_job(cfg, overrides, TRAINING, plain_console(file=io.StringIO()))
    assert len(fake_slurm.submitted) == 4


def test_wait_defaults_to_true_except_inside_a_slurm_job(monkeypatch):
    cfg, _ = slurm_sweep(Path("/tmp/never"))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert slurm.waits(cfg)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert not slurm.waits(cfg)
    cfg.launcher.wait = True
    assert slurm.waits(cfg)


def test_job_states_from_squeue_then_sacct(tmp_path, monkeypatch):
    """squeue knows recent jobs; sacct older ones (with the exit code); neither: ENDED."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {
        # Like Slurm's squeue: a list holding a forgotten id fails as a whole.
        "squeue": '#!/bin/bash\ncase "$5" in 101) echo "101|RUNNING";; '
        '*) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1;; esac\n',
        "sacct": '#!/bin/bash\necho "102|CANCELLED by 0|0:15"\n',
    }
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    states = slurm_jobs.job_states(["101", "102", "103"])
    assert states["101"] == slurm_jobs.JobState("RUNNING")
    assert states["102"] == slurm_jobs.JobState("CANCELLED", 0) and states["102"].ended
    assert states["103"].state == "ENDED" and not states["101"].ended


@pytest.mark.parametrize(
    ("cluster", "top"),
    [
        (["cluster=slurm", "launcher=slurm", "gpu=h100_sxm", "cluster.nodes=4"], 32),
        (["cluster=multinode", "cluster.hosts=[gpu-01,gpu-02]", "gpu=h100_sxm"], 16),
    ],
)
def test_the_default_sweep_reaches_every_node(cluster, top):
    """README's Slurm line with cluster.nodes=4 submitted two 1-node jobs (sweep/weak.yaml's
    [1, 2]), and a multinode sweep never left the head node: the default now reaches all."""
    cfg = compose_run_config([*FAST, *cluster])
    console = plain_console(record=True, width=200)
    sweep_every_node(cfg, [*cluster], console)
    assert cfg.sweep.world_sizes == [2**k for k in range(top.bit_length())]
    assert f"sweep.world_sizes={cfg.sweep.world_sizes}" in console.export_text()
    pinned = [*cluster, "sweep.world_sizes=[1,2]"]
    cfg = compose_run_config([*FAST, *pinned])
    sweep_every_node(cfg, pinned, plain_console(record=True))
    assert cfg.sweep.world_sizes == [1, 2]  # the command line's own sweep is kept


def test_a_slurm_jobs_killed_rank_is_named_as_a_local_runs_is(tmp_path, fake_slurm):
    """torchrun's Root Cause in the job's output decides which rank failed.json blames (a
    local run already read it). The Slurm path used to take the first traceback: rank 0's
    gloo error after rank 1 was SIGKILLed."""
    cfg, overrides = slurm_sweep(tmp_path)
    root = Path(cfg.run_dir)

    def jobs_end():
        (root / "ws2" / "summary.json").write_text(json.dumps(summary("cpu", 2, 900.0, None)))
        (root / "ws1" / "slurm-101.out").write_text("\n".join(GLOO_TRACEBACK + KILLED_FOOTER))

    fake_slurm.on_poll.append(jobs_end)
    fake_slurm.polls += [{"101": "FAILED", "102": "COMPLETED"}]
    with pytest.raises(RunFailed, match="1 of 2 run"):
        pipeline.run_job(cfg, overrides, TRAINING, plain_console(file=io.StringIO(), width=300))
    failed = json.loads((root / "ws1" / "failed.json").read_text())
    assert (failed["rank"], failed["signal"]) == (1, "SIGKILL")
    assert "rank 1 was killed by SIGKILL" in "\n".join(failed["last_lines"])
