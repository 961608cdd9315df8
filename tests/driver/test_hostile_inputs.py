"""Issue 21's hostile cases that are cheap, through the driver's own entry in this process
(exit code, stdout, stderr; nothing started), and README's commands as written.

The defects the issue found, and where each is checked now ("here": this module):

- `kill -STOP` on a rank hangs the run: tests/integration/test_hang.py (~10 s); the rule,
  the heartbeat and the collective timeouts: tests/unit/test_watchdog.py (in-process) and
  tests/integration/test_hang.py (every process group's timeout, in a child Python).
- a full disk (a traceback, 0-byte files) and SIGTERM during a report (old and new files
  mixed): tests/unit/test_safe_files.py (os.write made to fail; a tmpfs, as root).
- resume=true over another workload; overwrite=true leaving a stale ws2 in the report; a
  checkpoint of another precision than precision=auto resolves to: here.
- the measured ceiling (no measured_at, fp32=-1, bf16="abc", a lower full measurement
  replacing a higher one): tests/unit/test_measured_ceiling.py; MFU above 100% flagged in
  summary.json there, in the report and on the console here.
- parallel.bucket_mb=-1 or 0; gpu=cpu model=llama_7b (host memory); a multirun checked only
  job by job; cluster.nproc_per_node=0 (weak sweep, and launch.comm blaming the batch); an
  unquoted `$(` (a Hydra traceback, exit 1): here.
- WANDB_MODE=disabled ignored and a wandb/ folder anyway; README's
  `fabric.nccl_env.NCCL_DEBUG=INFO` needing `+`; README's other commands: here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from launch.launchers.local import MetricsTail
from launch.plan import config_for, plan_runs
from launch.report import load_runs, print_table, scaling_rows
from launch.report.markdown import markdown_report
from launch.rundir import set_aside_other_runs
from launch.terminal import plain_console
from launch.wandb_env import apply_wandb_env
from tests.conftest import (
    FAST,
    REPO,
    compose_run_config,
)
from tests.unit.test_report import summary
from train.checkpoint.markers import MARKER, run_shape, step_dir_name
from train.spec.config import RunConfig
from train.spec.config_error import ConfigError
from train.spec.degrees import plan_layout


def test_a_run_dir_the_kernel_will_not_make_is_one_line(launch_in_process):
    # /proc is a folder root may write by access()'s account; mkdir said ENOENT, a traceback.
    result = launch_in_process(*FAST, "run_dir=/proc/scaleprobe-test-run", "dry_run=true")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: run_dir: /proc/scaleprobe-test-run: cannot be made there (")
    assert line.endswith("); choose a folder on a disk"), line


# --- refused before anything starts: one line naming the key, exit 2 ------------------------

REFUSED = [
    (["parallel.bucket_mb=-1"], "parallel.bucket_mb: -1.0: must be a number of MB > 0", ""),
    (["parallel.bucket_mb=0"], "parallel.bucket_mb: 0.0: must be a number of MB > 0", ""),
    (
        ["gpu=cpu", "model=llama_7b", "sweep=none"],  # the CPU fit check, against host memory
        "parallel: llama_7b under parallel=",
        "x 2 rank(s) on this host = ",
    ),
    (["cluster.nproc_per_node=0"], "cluster.nproc_per_node: 0: must be >= 1", ""),  # weak sweep
    (["run_dir=$(date)"], "run_dir: Hydra cannot parse the override 'run_dir=$(date)'", ""),
    (["cluster.collective_timeout_s=0"], "cluster.collective_timeout_s: 0.0: must be > 0 s", ""),
    (["cluster.stall_timeout_s=-1"], "cluster.stall_timeout_s: -1.0: must be >= 0 s", ""),
    # NaN losses from the first step, or a scaler that never grows, rather than an error.
    (["model.rope_theta=0"], "model.rope_theta: 0.0: must be a finite number > 0", ""),
    (["model.norm_eps=nan"], "model.norm_eps: nan: must be a finite number > 0", ""),
    (["precision.loss_scale_init=-1"], "precision.loss_scale_init: -1.0: must be a finite", ""),
    (["precision.loss_scale_growth_interval=0"], "precision.loss_scale_growth_interval: 0:", ""),
]


@pytest.mark.parametrize(
    "overrides, message, also", REFUSED, ids=[" ".join(o) for o, _, _ in REFUSED]
)
def test_refused_up_front(overrides, message, also, launch_in_process, tmp_path):
    result = launch_in_process(*overrides, f"run_dir={tmp_path / 'run'}", "dry_run=true")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.stderr
    assert also in lines[0]
    assert not (tmp_path / "run").exists()
    # Nor does it describe the run it refused (layout and precision lines came first).
    assert "layout:" not in result.stdout and "precision:" not in result.stdout


def test_a_multirun_checks_every_job_before_the_first_starts(launch_in_process, tmp_path):
    result = launch_in_process("--multirun", *FAST, "sweep=none", "train.steps=8,0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines == ["error: train.steps: 0: must be > 0 (multirun job 1: train.steps=0)"]
    assert not (tmp_path / "runs").exists()  # job 0 never ran


def test_a_multirun_on_other_nodes_is_left_to_check_itself_there():
    """submitit_slurm runs each job on a node: this (login) node's gpu=auto would see a CPU."""
    from launch.app import precheck

    def refuse(cfg, overrides, console):
        raise ConfigError("gpu", "checked on the wrong machine")

    args = ["--multirun", "hydra/launcher=submitit_slurm", "sweep=none", "train.steps=8,9"]
    precheck(args, refuse)  # not called
    with pytest.raises(ConfigError, match="wrong machine"):
        precheck(["--multirun", "sweep=none", "train.steps=8,9"], refuse)


def test_the_comm_benchmark_blames_nproc_per_node_not_the_batch(module_in_process):
    result = module_in_process("launch.comm", "cluster.nproc_per_node=0", "dry_run=true")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: cluster.nproc_per_node: 0: must be >= 1"


def test_an_open_map_key_needs_no_plus_on_any_fabric(launch_in_process, tmp_path):
    """README: `fabric.nccl_env.NCCL_DEBUG=INFO`, on fabric=none (no such key yet: Hydra
    would want `+`) and on a fabric that sets it (Hydra would refuse `+`)."""
    for fabric in ("none", "nvlink_ib"):
        run_dir = tmp_path / fabric
        result = launch_in_process(
            f"fabric={fabric}", "fabric.nccl_env.NCCL_DEBUG=INFO", "sweep=none", "dry_run=true",
            f"run_dir={run_dir}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "NCCL_DEBUG=INFO" in result.stdout
        written = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert written["fabric"]["nccl_env"]["NCCL_DEBUG"] == "INFO"


# --- resume and overwrite never mix workloads ----------------------------------------------


def test_resume_refuses_a_dir_of_another_workload_naming_what_differs(launch_in_process, tmp_path):
    run_dir = tmp_path / "sweep"
    first = launch_in_process(*FAST, f"run_dir={run_dir}", "dry_run=true")
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = launch_in_process(
        *FAST, "model=gpt_125m", f"run_dir={run_dir}", "resume=true", "dry_run=true"
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith(
        f"error: resume: {run_dir / 'ws1'} holds a run of another workload "
        "(model.name: 'tiny' there, 'gpt_125m' here; model.d_model: 128 there, 768 here;"
    ), line
    assert "\n" not in line
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    same = launch_in_process(*FAST, f"run_dir={run_dir}", "resume=true", "dry_run=true")
    assert same.returncode == 0, same.stderr  # the same workload resumes


@pytest.mark.parametrize(
    "text", [b"a: [cut short\n", b"- a list\n", b"\xff\xfe"], ids=["yaml", "list", "binary"]
)
def test_resume_reruns_a_point_whose_config_cannot_be_read(text, launch_in_process, tmp_path):
    # A config.yaml cut short or edited by hand says no workload: resume=true reruns that
    # point as it does one without a config (it was a YAML or OmegaConf traceback).
    run_dir = tmp_path / "sweep"
    assert launch_in_process(*FAST, f"run_dir={run_dir}", "dry_run=true").returncode == 0
    (run_dir / "ws1" / "config.yaml").write_bytes(text)
    result = launch_in_process(*FAST, f"run_dir={run_dir}", "resume=true", "dry_run=true")
    assert result.returncode == 0, result.stderr
    assert f"--config {run_dir / 'ws1' / 'config.dry-run.yaml'}" in result.stdout
    assert (run_dir / "ws1" / "config.yaml").read_bytes() == text  # a dry run changes nothing


def write_point(root: Path, world_size: int) -> None:
    point = root / f"ws{world_size}"
    point.mkdir(parents=True)
    (point / "config.yaml").write_text("name: scaleprobe\n")
    (point / "summary.json").write_text(json.dumps(summary("h100_sxm", world_size, 1e3, 0.4)))


def test_overwrite_moves_aside_the_runs_the_new_sweep_lacks_and_the_old_report(tmp_path):
    root = tmp_path / "sweep"
    for size in (1, 2):
        write_point(root, size)
    (root / "report.md").write_text("the [1,2] sweep")
    cfg = compose_run_config([*FAST, "sweep.world_sizes=[1]", f"run_dir={root}"])
    console = plain_console(record=True, width=200)
    aside = set_aside_other_runs(root, plan_runs(cfg), console)
    assert aside is not None and aside.parent == root
    assert (aside / "ws2" / "summary.json").is_file() and (aside / "report.md").is_file()
    assert f"overwrite: moved ws2, the previous report (not in this sweep) to {aside}" in (
        console.export_text()
    )
    assert [run["world_size"] for run in load_runs([root])] == [1]  # the new report's view


def test_overwrite_moves_a_single_runs_torchrun_folders_with_it(tmp_path):
    """A single run replaced by a sweep: its files go aside, its torchelastic/ (torchrun's
    per-attempt folders, a failed rank's error.json) with them, not left beside the sweep."""
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.yaml").write_text("name: scaleprobe\n")
    (root / "summary.json").write_text(json.dumps(summary("h100_sxm", 2, 1e3, 0.4)))
    (root / "torchelastic" / "id_x" / "attempt_0" / "1").mkdir(parents=True)
    cfg = compose_run_config([*FAST, "sweep.world_sizes=[1]", f"run_dir={root}"])
    aside = set_aside_other_runs(root, plan_runs(cfg), plain_console(record=True, width=200))
    assert (aside / "run" / "torchelastic" / "id_x" / "attempt_0" / "1").is_dir()
    assert not (root / "torchelastic").exists() and not (root / "summary.json").exists()


def test_overwrite_says_what_it_would_move_and_a_dry_run_moves_nothing(launch_in_process, tmp_path):
    root = tmp_path / "sweep"
    for size in (1, 2):
        write_point(root, size)
    result = launch_in_process(
        *FAST, "sweep.world_sizes=[1]", f"run_dir={root}", "overwrite=true", "dry_run=true"
    )
    assert result.returncode == 0, result.stderr
    assert "overwrite: would move ws2 (not in this sweep)" in " ".join(result.stdout.split())
    assert (root / "ws2" / "summary.json").is_file()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("flags", [[], ["overwrite=true"]])
def test_a_dry_run_changes_nothing_an_earlier_run_left(launch_in_process, tmp_path, flags):
    """A dry run over a sweep with a failed point, checkpoints and torchrun's folders deleted
    failed.json (the failure's record), the checkpoints and torchelastic/ (overwrite=true),
    and rewrote config.yaml and command.sh to describe a run that never happened."""
    root = tmp_path / "sweep"
    if flags:  # a finished point, which a plain run refuses to replace
        write_point(root, 1)
    failed = root / "ws2"
    failed.mkdir(parents=True)
    (failed / "config.yaml").write_text("name: scaleprobe\n")
    (failed / "failed.json").write_text('{"exit_code": 1}\n')
    (failed / "checkpoints" / "step_000003").mkdir(parents=True)
    (failed / "checkpoints" / "step_000003" / "__0_0.distcp").write_bytes(b"shard")
    (failed / "torchelastic" / "id_x" / "attempt_0" / "0").mkdir(parents=True)
    (failed / "torchelastic" / "id_x" / "attempt_0" / "0" / "error.json").write_text("{}")
    (root / "command.sh").write_text("#!/bin/sh\npython -m launch\n")
    before = _tree(root)
    result = launch_in_process(*FAST, f"run_dir={root}", *flags, "dry_run=true")
    assert result.returncode == 0, result.stderr
    after = _tree(root)
    assert {k: after.get(k) for k in before} == before  # every file there, unchanged
    # The printed commands name the dry run's own configs, written beside the runs' ones.
    assert str(failed / "config.dry-run.yaml") in result.stdout
    assert yaml.safe_load((failed / "config.dry-run.yaml").read_text())["train"]


def test_a_dir_with_finished_runs_of_other_world_sizes_is_refused_without_overwrite(
    launch_in_process, tmp_path
):
    root = tmp_path / "sweep"
    write_point(root, 2)
    result = launch_in_process(*FAST, "sweep.world_sizes=[1]", f"run_dir={root}", "dry_run=true")
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: run_dir: {root / 'ws2'} already holds a finished")


def test_a_checkpoint_of_another_precision_than_auto_resolves_to_is_refused(
    launch_in_process, tmp_path
):
    """precision=auto never resolves to fp16: a checkpoint saved in fp16 cannot be resumed,
    and the driver says so before any rank starts (it compared only explicit precisions)."""
    run_dir = tmp_path / "ckpt"
    overrides = [*FAST, "sweep=none", "checkpoint.every=2", f"run_dir={run_dir}"]
    cfg = compose_run_config(overrides)
    plan = plan_runs(cfg)[0]
    run_cfg: RunConfig = config_for(cfg, plan, "")
    layout = plan_layout(run_cfg, plan.world_size, plan.nproc_per_node)
    saved = run_dir / "checkpoints" / step_dir_name(2)
    saved.mkdir(parents=True)
    (saved / "__0_0.distcp").write_bytes(b"shard")
    shape = run_shape(run_cfg, layout=layout, world_size=plan.world_size, precision="fp16")
    marker = {"step": 2, "files": {"__0_0.distcp": 5}, "shape": shape}
    (saved / MARKER).write_text(json.dumps(marker))
    result = launch_in_process(*overrides, "dry_run=true")
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"error: checkpoint.dir: {saved} was saved by a run of another shape")
    assert re.search(r"precision 'fp16' there, '(fp32|bf16)' here \(precision=auto resolves", line)


# --- wandb's environment ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "environ, overrides, mode",
    [
        ({"WANDB_MODE": "disabled"}, [], "disabled"),  # the environment beats the default
        ({"WANDB_MODE": "disabled"}, ["wandb.mode=offline"], "offline"),  # the command line wins
        ({"WANDB_MODE": "dryrun"}, [], "offline"),  # wandb's older spelling
        ({"WANDB_MODE": "run"}, [], "online"),
        ({"WANDB_DISABLED": "true"}, [], "disabled"),  # the legacy switch
        ({}, [], "offline"),  # scaleprobe's default
    ],
)
def test_wandb_mode_from_the_environment(environ, overrides, mode):
    cfg = compose_run_config(overrides)
    apply_wandb_env(cfg, overrides, environ)
    assert cfg.wandb.mode == mode


def test_wandb_project_entity_and_a_bad_mode():
    cfg = compose_run_config(["wandb.project=mine"])
    apply_wandb_env(cfg, ["wandb.project=mine"], {"WANDB_PROJECT": "env", "WANDB_ENTITY": "team"})
    assert (cfg.wandb.project, cfg.wandb.entity) == ("mine", "team")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE: 'shared' \(from the environment\)"):
        apply_wandb_env(compose_run_config([]), [], {"WANDB_MODE": "shared"})


def test_an_exported_wandb_mode_reaches_every_rank_config(launch_in_process, tmp_path):
    run_dir = tmp_path / "w"
    os.environ["WANDB_MODE"] = "disabled"  # launch_in_process sets it (cli_env) and puts it back
    result = launch_in_process(*FAST, f"run_dir={run_dir}", "dry_run=true")
    assert result.returncode == 0, result.stderr
    for point in ("ws1", "ws2"):
        written = yaml.safe_load((run_dir / point / "config.yaml").read_text())
        assert written["wandb"]["mode"] == "disabled"
    assert not list(run_dir.rglob("wandb"))


def test_wandb_variables_for_init_arguments_win_on_the_rank(tmp_path, monkeypatch):
    from train.measure.tracking import WandbRun

    calls = []
    fake = type(sys)("wandb")
    fake.init = lambda **kwargs: calls.append(kwargs)
    fake.Settings = lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("WANDB_RUN_GROUP", "mine")
    WandbRun("offline", "p", None, tmp_path, "ws1", "sweep-1", "cpu", {})
    assert "dir" not in calls[0] and "group" not in calls[0]  # wandb reads the variables
    assert calls[0]["name"] == "ws1" and calls[0]["settings"] == {"silent": True}
    calls.clear()
    WandbRun("disabled", "p", None, tmp_path, "ws1", "sweep-1", "cpu", {})
    assert calls == [] and not (tmp_path / "wandb").exists()


# --- MFU above 100% is flagged in the report and on the console -------------------------------


def test_mfu_above_100_percent_is_flagged_in_the_report_and_on_the_console(tmp_path):
    root = tmp_path / "sweep"
    warning = "MFU against the measured ceiling is 127%: the ceiling was likely measured on a "
    for size in (1, 2):
        point = root / f"ws{size}"
        point.mkdir(parents=True)
        run = {**summary("h100_sxm", size, 1e3, 1.27), "mfu_warning": warning + "loaded machine"}
        (point / "summary.json").write_text(json.dumps(run))
    runs = load_runs([root])
    rows = scaling_rows(runs)
    assert rows[0]["mfu_warning"].startswith(warning)
    assert f"> **warning:** world size 1 (ws1): {warning}" in markdown_report(runs, rows)
    console = plain_console(record=True, width=300)
    print_table(rows, console)
    assert f"warning: world size 2: {warning}" in console.export_text()


# --- README's commands, as written ----------------------------------------------------------

# Lines the test cannot run here, and why.
NOT_HERE = {
    "...": "an elided command (hostfile and runner examples)",
    "$": "a shell variable of a loop around it",
    "DATE/TIME": "a placeholder for a measured run dir",
    "launch.report": "reads sweeps that exist (tests/unit/test_report.py runs it)",
    "hydra/launcher=submitit_slurm": "submits to a Slurm cluster (tests/cluster)",
}


def readme_commands() -> list[list[str]]:
    """Each `python -m ...` line of README.md's bash blocks (continuations joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("python -m "):
                commands.append(shlex.split(line, comments=True)[2:])
    return commands


@pytest.mark.parametrize("command", readme_commands(), ids=" ".join)
def test_readme_commands_run_as_written(command, module_in_process, tmp_path):
    skip = next((why for mark, why in NOT_HERE.items() if mark in " ".join(command)), None)
    if skip:
        pytest.skip(skip)
    module, args = command[0], command[1:]
    if "data.path=tokens.bin" in args:  # README's token file: one made here
        ids = np.random.default_rng(0).integers(0, 2048, 200_000, dtype=np.uint16)
        ids.tofile(tmp_path / "tokens.bin")
    if module == "launch":
        module, args = "launch.__main__", [*args, "dry_run=true"]
    elif module == "launch.comm":
        args = [*args, "dry_run=true"]
    result = module_in_process(module, *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_metrics_tail_is_unchanged_by_atomic_appends(tmp_path):
    """Rank 0 appends whole lines (train/files/safe_files.py append_line): the progress bar's
    reader sees each once."""
    from train.files.safe_files import append_line

    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    for step in (1, 2):
        append_line(path, json.dumps({"step": step}))
    assert [r["step"] for r in tail.new_records()] == [1, 2]
