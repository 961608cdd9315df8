"""One launch pipeline for every job the driver starts (training runs, the comm benchmark).

    prepare:  gpu=auto -> node defaults -> plan -> validate -> cluster set-up -> precision
              outlook -> write config.yaml per run -> render every node's command
    execute:  dry run (print) | submit (Slurm) and follow the jobs | run here with progress
              -> the job's results

Nothing is written before validation has passed, and a fix to any stage lands in both jobs.
A failed run is recorded (launch/rundir.py) and the sweep goes on unless
sweep.stop_on_failure; `resume=true` runs only the points not finished with this workload;
Ctrl-C, SIGTERM or SIGHUP stop every rank and the job still writes what it has (submitted
Slurm jobs go on). With one driver per node (cluster=multinode, torchrun) node k > 0 writes
only its own files, so all nodes may share one run dir.
A `Job` says what differs: which module the ranks run, which files they write, and what
the driver does with each result and with all of them.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from launch.app import run_app
from launch.cluster.setup import ClusterSetup, set_up_cluster
from launch.errors import RunFailed, Stopped
from launch.launchers import slurm
from launch.launchers.command import NodeCommand
from launch.launchers.local import (
    MetricsTail,
    RankFailure,
    progress_bar,
    rank_failure,
    run_nodes,
    training_status,
)
from launch.launchers.select import commands_run_here, driver_node_rank, launch_commands
from launch.launchers.slurm_jobs import exit_code, follow, record_jobs, refuse_active_jobs
from launch.plan import RunPlan, config_for, plan_runs
from launch.resolve import (
    resolve_gpu,
    resolve_layouts,
    resolve_node_defaults,
    state_precision,
    sweep_every_node,
)
from launch.rundir import (
    FAILED,
    config_name,
    dry_run_path,
    finished_points,
    make_run_dir,
    previous_sweep_id,
    record_failure,
    refuse_other_workloads,
    set_aside_other_runs,
    take_run_dir,
)
from launch.stops import clear_stop, record_stops
from launch.terminal import plain_console
from launch.validate import validate, validate_checkpoint_precision
from launch.wandb_env import apply_wandb_env
from train.checkpoint.markers import checkpoint_root, latest_complete
from train.files.heartbeat import stall_timeout_s
from train.files.safe_files import make_dirs, write_atomic
from train.files.shm_segments import allreduce_segments
from train.spec.config import RunConfig


@dataclass(frozen=True)
class Job:
    """What the ranks of a job run and what the driver does with what they write."""

    driver_module: str  # `python -m <driver_module> [overrides]` starts it (command.sh)
    rank_module: str  # `python -m <rank_module> --config RUN_DIR/config.yaml`
    progress_file: str  # rank 0 appends a JSON line per step (or point) here
    result_file: str  # rank 0 writes its result here when it is done
    # Fix the config for this job before planning (the comm benchmark: one run, one batch).
    adjust: Callable[[RunConfig], None] = lambda cfg: None
    # Checks beyond the training ones; raise ConfigError.
    validate: Callable[[RunConfig], None] = lambda cfg: None
    # Steps a run takes (the progress bar's total), None when unknown.
    total_steps: Callable[[RunConfig], int | None] = lambda cfg: None
    # After each run here: (cfg, plan, result, console).
    on_result: Callable[[RunConfig, RunPlan, dict, Console], None] = lambda *a: None
    # After the runs (all, or those finished before a failure or a stop): (cfg, sweep_id,
    # results, console).
    on_all: Callable[[RunConfig, str, list[dict], Console], None] = lambda *a: None
    # --help's page (launch/app.py help_page); None: Hydra's own, with the whole config.
    help_text: Callable[[], str] | None = None
    # Whether the ranks train the model: only then does the console say the layout and
    # precision resolved for them, the measured peak, and a dry run's global batch.
    trains: bool = True
    # What the job is about to do, said once its config has passed every check.
    announce: Callable[[RunConfig, Console], None] = lambda *a: None
    # The progress bar's text for rank 0's last progress record (None before the first).
    progress_status: Callable[[dict | None], str] = training_status


@dataclass
class Prepared:
    """A validated job, written to disk, with every node's command rendered."""

    cfg: RunConfig
    plans: list[RunPlan]
    setup: ClusterSetup
    sweep_id: str
    resume_command: str = ""
    config_paths: dict[str, Path] = field(default_factory=dict)
    commands: dict[str, list[NodeCommand]] = field(default_factory=dict)
    # resume=true: points whose summary.json already holds this workload (kept untouched).
    finished: dict[str, dict] = field(default_factory=dict)
    lock: object = None  # the open lock file (launch/rundir.py), held until the job ends


def new_sweep_id(cfg: RunConfig) -> str:
    # A random tail: two drivers started in the same second must not share an id.
    return f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def write_run_config(cfg: RunConfig, plan: RunPlan, sweep_id: str, name="config.yaml") -> Path:
    make_dirs(plan.run_dir)
    text = OmegaConf.to_yaml(OmegaConf.structured(config_for(cfg, plan, sweep_id)))
    return write_atomic(plan.run_dir / name, text)


def check(cfg: RunConfig, overrides: list[str], job: Job, console: Console) -> list[RunPlan]:
    """The planned runs of a config that passed every check that writes nothing: ConfigError
    otherwise. prepare's first half, and how a Hydra multirun checks every job before its
    first starts (launch/app.py)."""
    slurm.refuse_gpu_auto(cfg)  # before detection: on a login node it would find the CPU
    resolve_gpu(cfg, overrides, console)
    resolve_node_defaults(cfg, overrides, console)
    sweep_every_node(cfg, overrides, training_lines(job, console))  # the comm job sweeps none
    apply_wandb_env(cfg, overrides)
    job.adjust(cfg)
    plans = resolve_layouts(cfg, plan_runs(cfg), training_lines(job, console))
    validate(cfg, plans, trains=job.trains)
    job.validate(cfg)
    job.announce(cfg, console)
    if cfg.resume:
        refuse_other_workloads(cfg, plans)  # resuming must not mix two workloads
    return plans


def training_lines(job: Job, console: Console) -> Console:
    """Where the lines only a training run needs go: ``console``, or nowhere."""
    return console if job.trains else plain_console(quiet=True)


def prepare(cfg: RunConfig, overrides: list[str], job: Job, console: Console) -> Prepared:
    """Everything up to the start of the ranks; ConfigError before anything is written."""
    # What the checks resolve (gpu=auto, layouts) is said once they have all passed: a
    # refused call prints its one error line, not the layouts of a run that never starts.
    with console.capture() as resolved:
        plans = check(cfg, overrides, job, console)
    console.file.write(resolved.get())
    setup = set_up_cluster(cfg, plans, console)  # nodes, emulated links; ConfigError too
    # What precision=auto resolves to on this machine (None: decided on other nodes), which
    # a checkpoint to resume from must have been saved in.
    precision = state_precision(cfg, setup, training_lines(job, console))
    validate_checkpoint_precision(cfg, plans, precision)

    root, node = Path(cfg.run_dir), driver_node_rank(cfg)
    finished = finished_points(cfg, plans, node) if cfg.resume else {}
    make_run_dir(root)
    prepared = Prepared(cfg, plans, setup, "", lock=take_run_dir(root, node), finished=finished)
    if node == 0:
        refuse_active_jobs(root)  # Slurm jobs an earlier driver left running there
        if cfg.overwrite:  # runs of world sizes this sweep lacks must not join its report
            set_aside_other_runs(root, plans, console, dry_run=cfg.dry_run)
    prepared.sweep_id = (cfg.resume and previous_sweep_id(plans)) or new_sweep_id(cfg)
    kept = [o for o in overrides if o.split("=", 1)[0] not in ("run_dir", "resume")]
    again = ["python", "-m", job.driver_module, *kept, f"run_dir={root}", "resume=true"]
    prepared.resume_command = shlex.join(again)
    if node == 0 and not ((cfg.resume or cfg.dry_run) and (root / "command.sh").exists()):
        reproduce = shlex.join([sys.executable, "-m", job.driver_module, *overrides])
        write_atomic(
            root / "command.sh", f"#!/bin/sh\n# reproduces this run or sweep\n{reproduce}\n"
        )
    write_run_files(prepared, job, node)
    return prepared


def write_run_files(prepared: Prepared, job: Job, node: int) -> None:
    """Each point's config (and launch files); node k > 0 writes only its own files."""
    cfg, setup = prepared.cfg, prepared.setup
    for plan in prepared.plans:
        if plan.name in prepared.finished:
            continue  # its files stay as they are
        if node == 0 and not cfg.dry_run:  # a dry run deletes nothing (launch/rundir.py)
            (plan.run_dir / FAILED).unlink(missing_ok=True)
            clear_stop(plan)  # here, not as it starts: a Slurm job's point runs again too
            if cfg.overwrite and not cfg.checkpoint.dir:
                # The run is replaced: its own checkpoints must not resume it.
                shutil.rmtree(plan.run_dir / "checkpoints", ignore_errors=True)
            if cfg.overwrite:
                # Nor may the old run's torchrun folders (a rank's error.json) describe it.
                shutil.rmtree(plan.run_dir / "torchelastic", ignore_errors=True)
        name = dry_run_path(plan.run_dir / config_name(node), cfg.dry_run).name
        path = write_run_config(cfg, plan, prepared.sweep_id, name)
        prepared.config_paths[plan.name] = path
        if cfg.launcher.name != "slurm":
            prepared.commands[plan.name] = launch_commands(cfg, plan, path, setup, job.rank_module)


def execute(prepared: Prepared, job: Job, console: Console) -> int:
    """Print (dry run), submit (Slurm) or run every planned run here, with progress."""
    cfg, plans = prepared.cfg, prepared.plans
    if cfg.launcher.name == "slurm":
        return run_on_slurm(prepared, job, console)
    if cfg.dry_run:
        print_commands(prepared, job)
        return 0

    results = list(prepared.finished.values())
    done = set(prepared.finished)
    for name in prepared.finished:
        console.print(f"{name}: finished earlier with this same workload; kept")
    failures: list[str] = []
    running: RunPlan | None = None  # the point a stop interrupts (launch/stops.py)
    try:
        # The emulated cluster's namespaces exist only inside this block, stopped or not.
        with prepared.setup.running(), progress_bar(console) as progress:
            for plan in plans:
                if plan.name in prepared.finished:
                    continue
                running = plan
                try:
                    result = run_point(prepared, job, plan, progress)
                except RunFailed as exc:
                    running = None
                    progress.console.print(str(exc), highlight=False)
                    if driver_node_rank(cfg) == 0:  # node k > 0 writes only its own files
                        failures.append(str(record_failure(plan, exc)))
                    else:
                        failures.append(f"{plan.name} (node {driver_node_rank(cfg)})")
                    if cfg.sweep.stop_on_failure:
                        break
                    continue
                running = None
                done.add(plan.name)  # here, or its result is on the node of rank 0
                if result is not None:
                    results.append(result)
                    job.on_result(cfg, plan, result, progress.console)
    except (KeyboardInterrupt, Stopped) as exc:
        # Every rank is stopped by now (run_nodes). Keep what finished, say where the stop
        # came (a stop, not a failure: the report lists it so), say how to go on.
        if driver_node_rank(cfg) == 0:  # node k > 0 writes only its own files
            name = exc.args[0] if isinstance(exc, Stopped) else "SIGINT"
            files = (job.progress_file, job.result_file)
            record_stops(plans, running, done, name, files, job.total_steps(cfg))
        finish(prepared, job, results, console, done)
        raise
    finish(prepared, job, results, console, done)
    if failures:
        raise RunFailed(f"{len(failures)} of {len(plans)} run(s) failed: " + ", ".join(failures))
    return 0


def run_point(prepared: Prepared, job: Job, plan: RunPlan, progress) -> dict | None:
    """One planned run on this machine: its result, or None where rank 0 is on another node."""
    cfg = prepared.cfg
    here = commands_run_here(cfg, prepared.commands[plan.name])
    if not here:
        return None  # cluster=multinode: this node has no part in a smaller run
    # On a real multi-node cluster rank 0 may write its result on another node.
    # A point that resumes from its checkpoint appends to the steps it already logged.
    root = checkpoint_root(config_for(cfg, plan, ""), plan.run_dir)
    resumes = cfg.checkpoint.every > 0 and latest_complete(root) is not None
    try:
        result = run_nodes(
            here,
            plan,
            job.total_steps(cfg),
            progress,
            progress_file=job.progress_file,
            result_file=job.result_file,
            require_result=len(here) == plan.nodes,
            # node k > 0 on a shared run dir: rank 0's files are not its to clear.
            keep_progress=resumes or driver_node_rank(cfg) > 0,
            keep_result=driver_node_rank(cfg) > 0,
            stall_timeout_s=stall_timeout_s(cfg.cluster),
            status=job.progress_status,
        )
    finally:
        if cfg.launcher.name == "deepspeed":
            # What a rank that died before unlinking its segment left (every rank has stopped
            # by now): its port is this run's, so no other run's segments are touched.
            for segment in allreduce_segments(cfg.cluster.master_port):
                segment.unlink(missing_ok=True)
    if result is None:
        progress.console.print(
            f"{plan.name}: this node's ranks finished; {job.result_file} is on the node of rank 0",
        )
    return result


def run_on_slurm(prepared: Prepared, job: Job, console: Console) -> int:
    """launcher=slurm: print the scripts (dry run), or submit them and, with launcher.wait,
    follow the jobs to their end (holding the run dir) and write the job's report."""
    cfg, root = prepared.cfg, Path(prepared.cfg.run_dir)
    todo = [plan for plan in prepared.plans if plan.name not in prepared.finished]
    if cfg.dry_run:
        slurm.print_scripts(cfg, todo, prepared.config_paths, job.rank_module)
        return 0
    jobs = slurm.submit_all(cfg, todo, prepared.config_paths, job.rank_module)
    record_jobs(root, jobs)
    if not slurm.waits(cfg):
        report = f"python -m launch.report {root}" if cfg.sweep.name != "none" else ""
        console.print(
            f"submitted job(s) {' '.join(jobs.values())}; "
            + (f"when they have finished: {report}" if report else "follow with squeue"),
            highlight=False,
            soft_wrap=True,
        )
        return 0
    try:
        states = follow_jobs(prepared, job, jobs, console)
    except (KeyboardInterrupt, Stopped):
        console.print(
            f"the Slurm jobs go on ({' '.join(jobs.values())}): scancel stops them; "
            f"python -m launch.report {root} when they have ended",
            highlight=False,
            soft_wrap=True,
        )
        raise
    return collect_slurm_results(prepared, job, jobs, states, console)


def follow_jobs(prepared: Prepared, job: Job, jobs: dict[str, str], console: Console) -> dict:
    """The jobs' progress line (state, and rank 0's last step) until all have ended."""
    total = job.total_steps(prepared.cfg)
    tails = {p.name: MetricsTail(p.run_dir / job.progress_file) for p in prepared.plans}
    steps: dict[str, int] = {}

    def step_of(name: str) -> str:
        for record in tails[name].new_records():
            steps[name] = record["step"]
        return f" step {steps[name]}/{total or '?'}" if name in steps else ""

    def show(line: str) -> None:
        console.print(line, highlight=False, soft_wrap=True)

    return follow(jobs, show, step_of)


def collect_slurm_results(
    prepared: Prepared, job: Job, jobs: dict[str, str], states: dict, console: Console
) -> int:
    """After the jobs: each run's result, or its failure recorded; then the report."""
    cfg = prepared.cfg
    results, failures = list(prepared.finished.values()), []
    done = set(prepared.finished)
    for plan in prepared.plans:
        if plan.name not in jobs:
            continue
        path = plan.run_dir / job.result_file
        if path.is_file():
            result = json.loads(path.read_text())
            results.append(result)
            done.add(plan.name)
            job.on_result(cfg, plan, result, console)
            continue
        job_id, state = jobs[plan.name], states[plan.name]
        output = slurm.output_path(plan, job_id)
        failure = rank_failure(output) if output.is_file() else RankFailure("")
        code = state.exit_code if state.exit_code is not None else exit_code(job_id)
        exc = RunFailed(
            f"{plan.name}: Slurm job {job_id} ended {state.state} without {path.name}; "
            f"from {output}:\n{failure.lines}",
            returncode=code,
            log_tail=failure.lines,
            rank=failure.rank,  # torchrun's Root Cause, as a local run's (launchers/local.py)
            rank_exit_code=failure.rank_exit_code,
            signal=failure.signal,
        )
        console.print(str(exc), highlight=False)
        failures.append(str(record_failure(plan, exc)))
    finish(prepared, job, results, console, done)
    if failures:
        raise RunFailed(
            f"{len(failures)} of {len(prepared.plans)} run(s) failed: " + ", ".join(failures)
        )
    return 0


def finish(
    prepared: Prepared, job: Job, results: list[dict], console: Console, done: set[str]
) -> None:
    """The job's report over what finished, and how to run what did not."""
    if results:
        job.on_all(prepared.cfg, prepared.sweep_id, results, console)
    if len(prepared.plans) > 1 and len(done) < len(prepared.plans):
        # Printed as it is (launch/terminal.py): `cluster.hosts=[n1,n2]` is no markup tag.
        console.print(
            f"to run the remaining points: {prepared.resume_command}",
            soft_wrap=True,
            highlight=False,
        )


def print_commands(prepared: Prepared, job: Job) -> None:
    """The lines a run would start. With one driver per node (cluster=multinode, torchrun)
    node k > 0 prints only its own, as it would run only those; node 0 prints every node's,
    each naming the config that node's driver writes (config-node<k>.yaml)."""
    cfg = prepared.cfg
    node = driver_node_rank(cfg)
    per_node_drivers = cfg.cluster.name == "multinode" and cfg.launcher.name == "torchrun"
    for plan in prepared.plans:
        commands = prepared.commands[plan.name]
        batch = f", global batch {plan.global_batch}" if job.trains else ""
        print(
            f"# {plan.name}: world size {plan.world_size} = {plan.nodes} node(s) x "
            f"{plan.nproc_per_node}{batch}"
        )
        if per_node_drivers and node > 0:
            commands = commands_run_here(cfg, commands)
            if not commands:
                used = "node 0" if plan.nodes == 1 else f"nodes 0-{plan.nodes - 1}"
                print(f"# nothing on node {node}: this run uses {used}")
        for command in commands:
            if len(commands) > 1:
                print(f"# node {command.node_rank}")
            if per_node_drivers and command.node_rank != node:
                command = _with_config_of(command, plan, prepared.config_paths[plan.name])
            print(command.shell_line())


def _with_config_of(command: NodeCommand, plan: RunPlan, config: Path) -> NodeCommand:
    """Another node's line as its own driver renders it: with the config it writes."""
    theirs = str(plan.run_dir / config_name(command.node_rank))
    argv = [theirs if a == str(config) else a for a in command.argv]
    return NodeCommand(command.node_rank, argv, command.env)


def run_job(cfg: RunConfig, overrides: list[str], job: Job, console: Console) -> int:
    prepared = prepare(cfg, overrides, job, console)
    try:
        return execute(prepared, job, console)
    finally:
        # The run dir's lock ends with its job: closed here rather than whenever the garbage
        # collector drops the file (a ResourceWarning, and in a multirun an unlock at no
        # set point).
        if prepared.lock is not None:
            prepared.lock.close()


def job_app(job: Job) -> None:
    """`python -m <job.driver_module>`: the one Hydra entry (launch/app.py) running ``job``;
    a multirun checks every one of its jobs (``check``) before the first starts."""
    run_app(
        lambda cfg, overrides, console: run_job(cfg, overrides, job, console),
        check=lambda cfg, overrides, console: check(cfg, overrides, job, console),
        help_text=job.help_text,
    )
