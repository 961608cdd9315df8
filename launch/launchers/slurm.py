"""launcher=slurm: an sbatch script per run, submitted with `sbatch` when it is on PATH.

The script asks for `nodes` nodes with one task each; `srun` starts that task on every node,
and the task is torchrun with a c10d rendezvous on the allocation's first node (from
`scontrol show hostnames`). Values from the config are shell-quoted; `#SBATCH` lines (which
sbatch parses itself, not a shell) only ever hold checked or sanitized values.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

from launch.errors import ConfigError, RunFailed
from launch.launchers.torchrun import slurm_task_command
from launch.plan import RunPlan
from launch.rundir import dry_run_path
from train.files.safe_files import write_atomic
from train.spec.config import RunConfig

SCRIPT_NAME = "job.sbatch"
# A multi-node job's rendezvous port: cluster.master_port + job id modulo this.
RDZV_PORTS = 1000
# Slurm's --time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
SLURM_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")
# Partition and account names: what sbatch accepts unquoted on a directive line.
SLURM_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def refuse_gpu_auto(cfg: RunConfig) -> None:
    """gpu=auto detects the machine the driver runs on: for sbatch that is a login node."""
    if cfg.launcher.name == "slurm" and cfg.gpu.name == "auto":
        raise ConfigError(
            "gpu",
            "gpu=auto with launcher=slurm would detect this login node, not the allocation's "
            "GPUs; name the nodes' profile (gpu=h100_sxm, gpu=a800, ...)",
        )


def validate_slurm(cfg: RunConfig) -> None:
    launcher = cfg.launcher
    if not SLURM_TIME.match(str(launcher.time)):
        raise ConfigError(
            "launcher.time", f"{launcher.time!r} is not a Slurm time ([D-]HH:MM:SS or minutes)"
        )
    for key in ("partition", "account"):
        value = getattr(launcher, key)
        if value is not None and not SLURM_NAME.match(str(value)):
            raise ConfigError(f"launcher.{key}", f"{value!r}: letters, digits, _ . + - only")
    # Each went into the job script as written: --cpus-per-task=-8.
    for key in ("cpus_per_task", "cpus_per_gpu"):
        value = getattr(launcher, key)
        if value is not None and value < 1:
            raise ConfigError(f"launcher.{key}", f"{value}: must be >= 1")
    # sbatch asks for --gpus-per-node=nproc_per_node: more than the profile's node holds
    # was accepted here and refused (or left pending) by Slurm after the driver had started.
    per_node, gpu = cfg.cluster.nproc_per_node, cfg.gpu
    if gpu.name not in ("cpu", "auto") and per_node > gpu.gpus_per_node:
        raise ConfigError(
            "cluster.nproc_per_node",
            f"{per_node}: a gpu={gpu.name} node holds {gpu.gpus_per_node} GPUs, and each rank "
            "takes one (set gpu.gpus_per_node where the partition's nodes hold more)",
        )
    if cfg.cluster.name not in ("slurm", "local"):
        raise ConfigError(
            "cluster.name",
            f"launcher=slurm takes its nodes from the allocation: use cluster=slurm "
            f"(cluster.nodes, cluster.nproc_per_node), not cluster={cfg.cluster.name}",
        )


def job_name(name: str) -> str:
    """The run name as a Slurm job name: anything but [A-Za-z0-9._-] becomes `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64] or "scaleprobe"


def partition_cpus(partition: str | None) -> int | None:
    """The fewest CPUs a node of ``partition`` (default: Slurm's) has, from `sinfo`, or None
    where sinfo is missing, fails or answers nothing (a login node without Slurm's config)."""
    if shutil.which("sinfo") is None:
        return None
    argv = ["sinfo", "--noheader", "--Node", "--format=%c"]
    if partition:
        argv.append(f"--partition={partition}")
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    counts = [int(x) for x in result.stdout.split() if x.isdigit()]
    return min(counts) if result.returncode == 0 and counts else None


def cpus_per_task(cfg: RunConfig, plan: RunPlan, node_cpus: int | None = None) -> int:
    """CPUs for the one task per node (torchrun and all its ranks).

    Without it Slurm may give the task one core, which torchrun, every rank, its data and
    torch.compile's workers then share. CPU ranks get cpu_threads_per_rank each; GPU ranks
    launcher.cpus_per_gpu each (a DGX/HGX node has 14 or more cores per GPU), capped at the
    partition's smallest node (``node_cpus``, from sinfo): more than a node has is a job that
    never starts.
    """
    if cfg.launcher.cpus_per_task:
        if node_cpus is not None and cfg.launcher.cpus_per_task > node_cpus:
            raise ConfigError(
                "launcher.cpus_per_task",
                f"{cfg.launcher.cpus_per_task}: the partition's nodes have {node_cpus} CPUs "
                "(sinfo); the job would never start",
            )
        return cfg.launcher.cpus_per_task
    per_rank = (
        cfg.cluster.cpu_threads_per_rank if cfg.gpu.name == "cpu" else cfg.launcher.cpus_per_gpu
    )
    wanted = plan.nproc_per_node * per_rank
    return wanted if node_cpus is None else min(wanted, node_cpus)


def sbatch_script(
    cfg: RunConfig, plan: RunPlan, config_path: Path, module: str = "train", workdir: Path = None
) -> str:
    workdir = workdir or Path.cwd()
    node_cpus = partition_cpus(cfg.launcher.partition)
    directives = [
        f"--job-name={job_name(f'{cfg.name}-{plan.name}')}",
        f"--nodes={plan.nodes}",
        # One task per node: that task is torchrun, which starts the node's ranks.
        "--ntasks-per-node=1",
        f"--cpus-per-task={cpus_per_task(cfg, plan, node_cpus)}",
    ]
    if cfg.gpu.name != "cpu":
        directives.append(f"--gpus-per-node={plan.nproc_per_node}")
        # The whole node and all its memory: a scaling measurement shares nothing, and
        # ZeRO-Offload's host copies would hit the cgroup's default memory limit.
        directives += ["--exclusive", "--mem=0"]
    directives.append(f"--time={cfg.launcher.time}")
    if cfg.launcher.partition:
        directives.append(f"--partition={cfg.launcher.partition}")
    if cfg.launcher.account:
        directives.append(f"--account={cfg.launcher.account}")

    task = slurm_task_command(cfg, plan, config_path, module)
    checked = (
        f"the partition's nodes have {node_cpus} CPUs (sinfo)"
        if node_cpus is not None
        else "not checked against the nodes (no sinfo answer here)"
    )
    lines = [
        "#!/bin/bash",
        f"# scaleprobe {job_name(plan.name)}: {plan.nodes} node(s) x {plan.nproc_per_node} rank(s)",
        f"# --cpus-per-task: {checked}",
        *(f"#SBATCH {d}" for d in directives),
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        *task.export_lines(),
        # Since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch.
        'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"',
        "# The rendezvous lives on the allocation's first node; torchrun there hosts it, on a",
        "# port of this job's own: another job may share that node.",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"rdzv_port=$(({cfg.cluster.master_port} + SLURM_JOB_ID % {RDZV_PORTS}))",
        f"srun --nodes={plan.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 \\",
        f"    {task.argv_line()}",
    ]
    return "\n".join(lines) + "\n"


def sbatch_argv(script_path: Path) -> list[str]:
    # --output here rather than on an #SBATCH line: an argv needs no quoting for any path.
    output = script_path.parent / "slurm-%j.out"
    return ["sbatch", "--parsable", f"--output={output}", str(script_path)]


def write_script(cfg: RunConfig, plan: RunPlan, config_path: Path, module: str = "train") -> Path:
    path = dry_run_path(plan.run_dir / SCRIPT_NAME, cfg.dry_run)
    write_atomic(path, sbatch_script(cfg, plan, config_path, module))
    os.chmod(path, 0o755)
    return path


def sbatch_available() -> bool:
    return shutil.which("sbatch") is not None


def submit(script_path: Path) -> str:
    """Submit the script; the job id."""
    result = subprocess.run(sbatch_argv(script_path), capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RunFailed(f"sbatch {script_path} failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def waits(cfg: RunConfig) -> bool:
    """launcher.wait, or its default: follow the jobs unless this driver is itself a Slurm
    job (it would hold its allocation only to wait)."""
    if cfg.launcher.wait is not None:
        return cfg.launcher.wait
    return "SLURM_JOB_ID" not in os.environ


def print_scripts(
    cfg: RunConfig, plans: list[RunPlan], config_paths: dict[str, Path], module: str
) -> None:
    """dry_run: write each run's sbatch script and print it."""
    for plan in plans:
        script = write_script(cfg, plan, config_paths[plan.name], module)
        print(f"# {plan.name}: {script}  (submit with: {shlex.join(sbatch_argv(script))})")
        print(script.read_text())


def submit_all(
    cfg: RunConfig, plans: list[RunPlan], config_paths: dict[str, Path], module: str
) -> dict[str, str]:
    """Write and submit each run's sbatch script; the job id of each run."""
    jobs = {}
    for plan in plans:
        script = write_script(cfg, plan, config_paths[plan.name], module)
        jobs[plan.name] = submit(script)
        print(f"{plan.name}: submitted Slurm job {jobs[plan.name]} ({script})", flush=True)
    return jobs


def output_path(plan: RunPlan, job_id: str) -> Path:
    """The job's stdout and stderr (sbatch --output=RUN_DIR/slurm-%j.out)."""
    return plan.run_dir / f"slurm-{job_id}.out"
