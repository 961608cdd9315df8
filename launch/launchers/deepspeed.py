r"""launcher=deepspeed: the `deepspeed` CLI line, its hostfile and its .deepspeed_env.

On a real cluster the deepspeed CLI starts every node itself (over ssh with pdsh, or mpirun,
or srun: `launcher.runner`), so the driver runs one command on the head node. On the
emulated cluster, where there is no ssh, each node runs its share itself with
``--no_ssh --node_rank k`` (DeepSpeed's own way of starting nodes without a runner).
The ranks are the same ``python -m train --config ...`` as under torchrun (`--no_local_rank`:
they take LOCAL_RANK from the environment, not from a `--local_rank` argument; under the MPI
and slurm runners, which set no RANK/LOCAL_RANK, from OMPI_/PMI_/SLURM_ variables, see
train/runtime/distributed.py).

Traps of DeepSpeed 0.19's runners, handled here (each run for real in tests/cluster):
- openmpi as root: mpirun refuses to start without `--allow-run-as-root`, passed as
  `--launcher_args` when the driver is root;
- the slurm runner turns --num_gpus into `srun --gpus-per-node` (CPU nodes have none), checks
  ssh it does not use, and runs `python -u SCRIPT` without the `-m` of --module: its line has
  no --num_gpus, has --no_ssh_check and `-- -m module` (and `--ntasks-per-node`, without
  which srun sets no SLURM_NTASKS_PER_NODE for the ranks); srun needs an allocation, so the
  driver refuses it outside one (launch/cluster/setup.py);
- the MPI runners (openmpi, mpich, impi, mvapich) refuse `--num_nodes/--num_gpus` ("does not
  support limiting num nodes/gpus"): the run's own hostfile says how many instead;
- every runner but pdsh hands variables over without a shell (`mpirun -x K=v`, `srun
  --export=ALL,K=v`, `-genv`), yet DeepSpeed wraps any value with a character outside
  `[\w@%+=:,./-]` in literal double quotes: NCCL would then get `"^lo,docker"` and match no
  interface. Such values are left out of what those runners export; each rank sets the
  fabric's variables itself from its config.yaml before it joins the process group.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from launch.cluster.hosts import ClusterNode, format_hostfile
from launch.errors import ConfigError
from launch.launchers.command import NodeCommand, executable_beside_python
from launch.launchers.environment import rank_environment
from launch.plan import RunPlan
from train.files.safe_files import write_atomic
from train.spec.config import RunConfig

HOSTFILE = "hostfile"
ENV_FILE = ".deepspeed_env"
# Runners that start ranks through mpirun: they refuse --num_nodes/--num_gpus.
MPI_RUNNERS = ("openmpi", "mpich", "impi", "mvapich")
# Characters DeepSpeed's add_export leaves unquoted (multinode_runner.py, 0.19.8).
EXPORT_SAFE = re.compile(r"^[\w@%+=:,./-]*$")


def validate_deepspeed(cfg: RunConfig) -> None:
    if cfg.cluster.max_restarts:
        raise ConfigError(
            "cluster.max_restarts",
            "the deepspeed launcher does not restart failed ranks; use launcher=torchrun",
        )


def runner_environment(cfg: RunConfig) -> dict[str, str]:
    """The variables the deepspeed command carries and its runner exports to every rank.

    Runners that export without a shell get only values DeepSpeed will not wrap in literal
    quotes; the ranks set the rest from the fabric profile themselves (module docstring).
    """
    env = rank_environment(cfg)
    if cfg.launcher.runner == "pdsh":
        return env
    return {k: v for k, v in env.items() if EXPORT_SAFE.match(v)}


def env_command(cfg: RunConfig) -> NodeCommand:
    """The environment of the deepspeed line, as a command whose dotenv is .deepspeed_env."""
    return NodeCommand(0, [], runner_environment(cfg))


def write_launch_files(cfg: RunConfig, plan: RunPlan, nodes: list[ClusterNode]) -> None:
    """The run's hostfile (its first plan.nodes hosts) and .deepspeed_env, in its run dir.
    A dry run keeps an earlier run's files as they are (the command names the paths a real
    run writes) and writes only those not there yet."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)

    def write(name: str, text: str) -> None:
        if not (cfg.dry_run and (plan.run_dir / name).exists()):
            write_atomic(plan.run_dir / name, text)

    if plan.nodes > 1:
        names = [node.name for node in nodes[: plan.nodes]]
        write(HOSTFILE, format_hostfile(names, plan.nproc_per_node))
    env = env_command(cfg)
    if plan.nodes > 1 and cfg.launcher.runner != "pdsh":
        # The openmpi and slurm runners pass no rendezvous to the ranks; the file reaches them.
        master = {
            "MASTER_ADDR": nodes[0].rendezvous_host,
            "MASTER_PORT": str(cfg.cluster.master_port),
        }
        env = NodeCommand(0, [], {**env.env, **master})
    # DeepSpeed reads each value up to the end of its line and quotes it itself: raw values
    # (the fabric check refuses newlines).
    write(ENV_FILE, env.dotenv())


def runner_options(runner: str, nproc_per_node: int) -> list[str]:
    """What a runner needs beyond DeepSpeed's defaults to start ranks right."""
    if runner == "openmpi" and os.geteuid() == 0:
        # mpirun refuses to run as root without it (containers and test clusters run as root).
        return ["--launcher_args=--allow-run-as-root"]
    if runner == "slurm":
        # srun reaches the nodes itself: no ssh to check (compute nodes may not run sshd).
        # --ntasks-per-node: equal shares, and SLURM_NTASKS_PER_NODE, from which each rank
        # knows its node's size (srun sets it only when asked).
        return ["--no_ssh_check", f"--launcher_args=--ntasks-per-node={nproc_per_node}"]
    return []


def runner_program(runner: str, module: str, config_path: Path) -> list[str]:
    """The ranks' program: `-m module --config PATH` however the runner starts python."""
    if runner == "slurm":
        # DeepSpeed's slurm runner runs `python -u SCRIPT ARGS` and drops --module: after
        # `--` the script is `-m` and the module its first argument, so srun runs
        # `python -u -m module`, from any directory.
        return ["--no_local_rank", "--", "-m", module, "--config", str(config_path)]
    return ["--no_local_rank", "--module", module, "--config", str(config_path)]


def deepspeed_commands(
    cfg: RunConfig,
    plan: RunPlan,
    config_path: Path,
    *,
    nodes: list[ClusterNode],
    module: str,
    per_node: bool = False,
) -> list[NodeCommand]:
    """The deepspeed line(s): one for the head node, or one per node when per_node."""
    run_dir = config_path.parent
    env = runner_environment(cfg)
    # DS_ENV_FILE: DeepSpeed's name for .deepspeed_env; an absolute path points it at the run's.
    env["DS_ENV_FILE"] = str(run_dir / ENV_FILE)
    program = ["--no_local_rank", "--module", module, "--config", str(config_path)]
    if plan.nodes == 1:
        # No hostfile: DeepSpeed runs on this machine (or this node's namespace) only.
        argv = [
            executable_beside_python("deepspeed"),
            "--num_gpus",
            str(plan.nproc_per_node),
            "--master_port",
            str(cfg.cluster.master_port),
            *program,
        ]
        return [NodeCommand(0, argv, env)]
    head = nodes[0]
    runner = cfg.launcher.runner
    common = [executable_beside_python("deepspeed"), "--hostfile", str(run_dir / HOSTFILE)]
    if per_node or runner not in MPI_RUNNERS:
        common += ["--num_nodes", str(plan.nodes)]
    if per_node or runner not in (*MPI_RUNNERS, "slurm"):
        # The slurm runner turns --num_gpus into srun --gpus-per-node: no CPU node has one.
        common += ["--num_gpus", str(plan.nproc_per_node)]
    common += [
        "--master_addr",
        head.rendezvous_host,
        "--master_port",
        str(cfg.cluster.master_port),
    ]
    if not per_node:
        argv = [*common, "--launcher", runner, *runner_options(runner, plan.nproc_per_node)]
        return [NodeCommand(0, [*argv, *runner_program(runner, module, config_path)], env)]
    return [
        NodeCommand(k, [*common, "--no_ssh", "--node_rank", str(k), *program], env)
        for k in range(plan.nodes)
    ]
