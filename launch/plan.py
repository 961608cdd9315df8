"""From one config to the runs it asks for: a single run, or one per world size of a sweep."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from launch.errors import ConfigError
from launch.resolve import choose_layouts
from train.spec.config import ParallelConfig, RunConfig
from train.spec.degrees import BatchRule, batch_held, resolve_degrees


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
    """One run (sweep=none) or one per world size, each with its nodes and global batch;
    under parallel=auto each with the layout the performance model chose and why."""
    return choose_layouts(cfg, _runs(cfg))


def _runs(cfg: RunConfig) -> list[RunPlan]:
    root = Path(cfg.run_dir)
    cluster = cfg.cluster
    for key in ("nodes", "nproc_per_node"):
        if getattr(cluster, key) < 1:
            raise ConfigError(f"cluster.{key}", f"{getattr(cluster, key)}: must be >= 1")
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
        name = f"ws{world_size}"
        plans.append(RunPlan(name, world_size, nodes, nproc, cfg.train.global_batch, root / name))
    if cfg.sweep.name == "weak" and cfg.parallel.name != "auto":
        # parallel=auto: the batch follows each run's chosen layout (launch/resolve.py).
        degrees = {
            p.name: resolve_degrees(cfg.parallel, p.world_size, p.nproc_per_node) for p in plans
        }
        rule = BatchRule.weak_from(
            cfg.train.global_batch, degrees[plans[0].name], plans[0].world_size
        )
        plans = [
            dataclasses.replace(p, global_batch=rule.global_batch_for(degrees[p.name]))
            for p in plans
        ]
    return plans


def config_for(cfg: RunConfig, plan: RunPlan, sweep_id: str) -> RunConfig:
    """The resolved config one run's ranks read."""
    run_cfg = copy.deepcopy(cfg)
    run_cfg.cluster.nodes = plan.nodes
    run_cfg.cluster.nproc_per_node = plan.nproc_per_node
    run_cfg.train.global_batch = plan.global_batch
    run_cfg.run_dir = str(plan.run_dir)
    run_cfg.resolved.sweep_id = sweep_id
    run_cfg.resolved.batch_held = batch_held(cfg.sweep.name, cfg.parallel.name)
    if run_cfg.checkpoint.dir:
        # Ranks may run elsewhere (another cwd, another node): an absolute path.
        run_cfg.checkpoint.dir = str(Path(run_cfg.checkpoint.dir).resolve())
    if plan.parallel is not None:
        run_cfg.parallel = copy.deepcopy(plan.parallel)
        run_cfg.resolved.layout_reason = plan.layout_reason
    return run_cfg
