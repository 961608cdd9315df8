"""From one config to the runs it asks for: a single run, or one per world size of a sweep."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from launch.errors import ConfigError
from train.spec.config import ParallelConfig, RunConfig


@dataclass(frozen=True)
class RunPlan:
    name: str
    world_size: int
    nodes: int
    nproc_per_node: int
    global_batch: int
    run_dir: Path
    # parallel=auto: the layout chosen for this run, and why (launch/resolve.py).
    parallel: ParallelConfig | None = None
    layout_reason: str | None = None


def plan_runs(cfg: RunConfig) -> list[RunPlan]:
    root = Path(cfg.run_dir)
    cluster = cfg.cluster
    if cfg.sweep.name == "none":
        world_size = cluster.nodes * cluster.nproc_per_node
        return [
            RunPlan(
                root.name,
                world_size,
                cluster.nodes,
                cluster.nproc_per_node,
                cfg.train.global_batch,
                root,
            )
        ]
    if not cfg.sweep.world_sizes:
        raise ConfigError("sweep.world_sizes", f"sweep={cfg.sweep.name} needs a non-empty list")
    if any(ws < 1 for ws in cfg.sweep.world_sizes):
        raise ConfigError("sweep.world_sizes", f"{cfg.sweep.world_sizes}: sizes must be >= 1")
    base = min(cfg.sweep.world_sizes)
    plans = []
    for world_size in sorted(set(cfg.sweep.world_sizes)):
        # Fill a node before using the next one: that is how a job meets the NIC on a cluster.
        nproc = min(world_size, cluster.nproc_per_node)
        if world_size % nproc:
            raise ConfigError(
                "sweep.world_sizes",
                f"world size {world_size} is not divisible by cluster.nproc_per_node={nproc}",
            )
        nodes = world_size // nproc
        if nodes > cluster.nodes:
            raise ConfigError(
                "sweep.world_sizes",
                f"world size {world_size} needs {nodes} nodes of {nproc} ranks; "
                f"cluster.nodes={cluster.nodes}",
            )
        global_batch = cfg.train.global_batch
        if cfg.sweep.name == "weak":
            # train.global_batch is the batch at the smallest world size; per device it stays.
            if (global_batch * world_size) % base:
                raise ConfigError(
                    "sweep.world_sizes",
                    f"weak scaling needs world sizes that are multiples of the smallest ({base})",
                )
            global_batch = global_batch * world_size // base
        plans.append(
            RunPlan(
                f"ws{world_size}", world_size, nodes, nproc, global_batch, root / f"ws{world_size}"
            )
        )
    return plans


def config_for(cfg: RunConfig, plan: RunPlan, sweep_id: str) -> RunConfig:
    """The resolved config one run's ranks read."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg.cluster.nodes = plan.nodes
    run_cfg.cluster.nproc_per_node = plan.nproc_per_node
    run_cfg.train.global_batch = plan.global_batch
    run_cfg.run_dir = str(plan.run_dir)
    run_cfg.resolved.sweep_id = sweep_id
    if run_cfg.checkpoint.dir:
        # Ranks may run elsewhere (another cwd, another node): an absolute path.
        run_cfg.checkpoint.dir = str(Path(run_cfg.checkpoint.dir).resolve())
    if plan.parallel is not None:
        run_cfg.parallel = copy.deepcopy(plan.parallel)
        run_cfg.resolved.layout_reason = plan.layout_reason
    return run_cfg
