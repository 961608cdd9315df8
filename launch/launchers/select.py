"""From a planned run to what starts it, for each launcher and cluster.

- torchrun on cluster=local: one `torchrun --standalone` line.
- torchrun on cluster=multinode: one line per node (c10d rendezvous on the head); this
  machine runs the line of cluster.node_rank.
- torchrun or deepspeed on cluster=emulated: one line per node, each inside its namespace;
  this machine runs them all.
- deepspeed on local/multinode: one `deepspeed` line that starts every node itself.
- slurm: an sbatch script per run (launch/launchers/slurm.py), submitted rather than run here.
"""

from __future__ import annotations

from pathlib import Path

from launch.cluster.setup import ClusterSetup
from launch.launchers.command import NodeCommand
from launch.launchers.deepspeed import deepspeed_commands, write_launch_files
from launch.launchers.torchrun import torchrun_commands
from launch.plan import RunPlan
from train.spec.config import RunConfig


def launch_commands(
    cfg: RunConfig, plan: RunPlan, config_path: Path, setup: ClusterSetup, module: str = "train"
) -> list[NodeCommand]:
    """Every node's command for one planned run (launcher=torchrun or deepspeed)."""
    if cfg.launcher.name == "deepspeed":
        write_launch_files(cfg, plan, setup.nodes)
        commands = deepspeed_commands(
            cfg,
            plan,
            config_path,
            nodes=setup.nodes,
            module=module,
            per_node=setup.emulated is not None,
        )
    else:
        commands = torchrun_commands(cfg, plan, config_path, setup.nodes, module)
    if setup.emulated:
        commands = [setup.emulated.wrap(command) for command in commands]
    return commands


def driver_node_rank(cfg: RunConfig) -> int:
    """The node this driver starts: cluster.node_rank where one driver runs per node
    (cluster=multinode with torchrun), 0 where this driver starts every node."""
    if cfg.cluster.name == "multinode" and cfg.launcher.name == "torchrun":
        return cfg.cluster.node_rank
    return 0


def commands_run_here(cfg: RunConfig, commands: list[NodeCommand]) -> list[NodeCommand]:
    """The commands this machine starts: one node's on a real multi-node cluster."""
    if cfg.cluster.name == "multinode" and cfg.launcher.name == "torchrun":
        return [c for c in commands if c.node_rank == driver_node_rank(cfg)]
    return commands
