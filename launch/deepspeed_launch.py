"""launcher=deepspeed: the `deepspeed` CLI line, its hostfile and its .deepspeed_env.

On a real cluster the deepspeed CLI starts every node itself (over ssh with pdsh, or mpirun,
or srun: `launcher.runner`), so the driver runs one command on the head node. On the
emulated cluster, where there is no ssh, each node runs its share itself with
``--no_ssh --node_rank k`` (DeepSpeed's own way of starting nodes without a runner).
The ranks are the same ``python -m train --config ...`` as under torchrun (`--no_local_rank`:
they take LOCAL_RANK from the environment, not from a `--local_rank` argument).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from launch.commands import NodeCommand, rank_environment
from launch.errors import ConfigError
from launch.hostfile import ClusterNode, format_hostfile
from launch.plan import RunPlan
from train.config import RunConfig

# DeepSpeed's --launcher choices (deepspeed/launcher/runner.py LAUNCHER_CLASSES).
DEEPSPEED_RUNNERS = ("pdsh", "openmpi", "mvapich", "mpich", "impi", "slurm")
HOSTFILE = "hostfile"
ENV_FILE = ".deepspeed_env"


def deepspeed_executable() -> str:
    """`deepspeed` beside this interpreter when there is one, so the same install runs it."""
    beside_python = Path(sys.executable).parent / "deepspeed"
    on_path = shutil.which("deepspeed")
    if on_path and beside_python.exists() and Path(on_path).resolve() == beside_python.resolve():
        return "deepspeed"
    return str(beside_python) if beside_python.exists() else "deepspeed"


def validate_deepspeed(cfg: RunConfig) -> None:
    if cfg.launcher.runner not in DEEPSPEED_RUNNERS:
        raise ConfigError(
            "launcher.runner",
            f"{cfg.launcher.runner!r} is not one of: {', '.join(DEEPSPEED_RUNNERS)}",
        )
    if cfg.cluster.max_restarts:
        raise ConfigError(
            "cluster.max_restarts",
            "the deepspeed launcher does not restart failed ranks; use launcher=torchrun",
        )


def deepspeed_env_file(cfg: RunConfig) -> str:
    """.deepspeed_env: KEY=VALUE lines the runner exports on every node (NCCL_* et al.).

    DeepSpeed reads the value up to the end of the line and quotes it itself, so values are
    written raw (the fabric check refuses newlines).
    """
    env = rank_environment(cfg)  # with the fabric's NCCL variables
    return "".join(f"{key}={value}\n" for key, value in sorted(env.items()))


def write_launch_files(cfg: RunConfig, plan: RunPlan, nodes: list[ClusterNode]) -> None:
    """The run's hostfile (its first plan.nodes hosts) and .deepspeed_env, in its run dir."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if plan.nodes > 1:
        names = [node.name for node in nodes[: plan.nodes]]
        (plan.run_dir / HOSTFILE).write_text(format_hostfile(names, plan.nproc_per_node))
    (plan.run_dir / ENV_FILE).write_text(deepspeed_env_file(cfg))


def deepspeed_commands(
    cfg: RunConfig,
    plan: RunPlan,
    config_path: Path,
    nodes: list[ClusterNode] | None = None,
    module: str = "train",
    per_node: bool = False,
) -> list[NodeCommand]:
    """The deepspeed line(s): one for the head node, or one per node when per_node."""
    run_dir = config_path.parent
    env = rank_environment(cfg)
    # DS_ENV_FILE: DeepSpeed's name for .deepspeed_env; an absolute path points it at the run's.
    env["DS_ENV_FILE"] = str(run_dir / ENV_FILE)
    program = ["--no_local_rank", "--module", module, "--config", str(config_path)]
    if plan.nodes == 1:
        # No hostfile: DeepSpeed runs on this machine (or this node's namespace) only.
        argv = [
            deepspeed_executable(),
            "--num_gpus",
            str(plan.nproc_per_node),
            "--master_port",
            str(cfg.cluster.master_port),
            *program,
        ]
        return [NodeCommand(0, argv, env)]
    head = nodes[0]
    common = [
        deepspeed_executable(),
        "--hostfile",
        str(run_dir / HOSTFILE),
        "--num_nodes",
        str(plan.nodes),
        "--num_gpus",
        str(plan.nproc_per_node),
        "--master_addr",
        head.rendezvous_host,
        "--master_port",
        str(cfg.cluster.master_port),
    ]
    if not per_node:
        return [NodeCommand(0, [*common, "--launcher", cfg.launcher.runner, *program], env)]
    return [
        NodeCommand(k, [*common, "--no_ssh", "--node_rank", str(k), *program], env)
        for k in range(plan.nodes)
    ]
