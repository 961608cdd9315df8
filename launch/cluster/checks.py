"""Bad input for multi-node launches: clusters, launchers, links and fabrics, before any start."""

from __future__ import annotations

import math

from launch.cluster.emulated import MAX_NODES, check_congestion_control, check_requirements
from launch.cluster.fabric import validate_fabric
from launch.cluster.hosts import multinode_hosts
from launch.conf_tree import group_choices
from launch.errors import ConfigError
from launch.launchers.deepspeed import validate_deepspeed
from launch.launchers.slurm import validate_slurm
from launch.plan import RunPlan
from train.spec.config import ClusterConfig, LauncherConfig, RunConfig

# Which launchers each cluster can start ranks with.
CLUSTER_LAUNCHERS = {
    "local": ("torchrun", "deepspeed", "slurm"),
    "multinode": ("torchrun", "deepspeed"),
    "emulated": ("torchrun", "deepspeed"),
    "slurm": ("slurm",),
}


# Keys only one choice of a group reads: set under another they would be ignored without a
# word (cluster.hosts without cluster=multinode ran a plain local job).
ONLY_UNDER = {
    "cluster": (
        ClusterConfig(),
        {
            **{key: ("multinode",) for key in ("hosts", "hostfile", "fabric_addrs", "node_rank")},
            "link_congestion_control": ("emulated",),
        },
    ),
    "launcher": (
        LauncherConfig(),
        {
            "runner": ("deepspeed",),
            **{
                key: ("slurm",)
                for key in ("partition", "account", "time", "wait", "cpus_per_task", "cpus_per_gpu")
            },
        },
    ),
}


def refuse_keys_of_other_choices(cfg: RunConfig) -> None:
    for group, (defaults, keys) in ONLY_UNDER.items():
        section = getattr(cfg, group)
        for key, choices in keys.items():
            value = getattr(section, key)
            if section.name not in choices and value != getattr(defaults, key):
                shown = getattr(value, "value", value)  # an enum's own spelling
                raise ConfigError(
                    f"{group}.{key}",
                    f"{shown!r} applies only to {group}={' or '.join(choices)}, "
                    f"not {group}={section.name} (it would be ignored)",
                )


def validate_launch(cfg: RunConfig, plans: list[RunPlan]) -> None:
    c = cfg.cluster
    refuse_keys_of_other_choices(cfg)
    allowed = CLUSTER_LAUNCHERS.get(c.name, ())
    if cfg.launcher.name not in allowed:
        raise ConfigError(
            "launcher.name",
            f"cluster={c.name} runs with launcher "
            + " or ".join(allowed)
            + f", not {cfg.launcher.name}",
        )
    if not 1 <= c.master_port <= 65535:
        raise ConfigError("cluster.master_port", f"{c.master_port}: must be 1..65535")
    if c.max_restarts < 0:
        raise ConfigError("cluster.max_restarts", f"{c.max_restarts}: must be >= 0")
    validate_fabric(cfg.fabric)
    if cfg.launcher.name == "deepspeed":
        validate_deepspeed(cfg)
    if cfg.launcher.name == "slurm":
        validate_slurm(cfg)
    if c.name == "multinode":
        multinode_hosts(cfg)  # host count, hostfile lines, duplicates, slots
        if not 0 <= c.node_rank < c.nodes:
            raise ConfigError("cluster.node_rank", f"{c.node_rank}: must be 0..{c.nodes - 1}")
    if c.name == "emulated":
        validate_emulated(cfg)


def validate_emulated(cfg: RunConfig) -> None:
    c = cfg.cluster
    if c.nodes > MAX_NODES:
        raise ConfigError("cluster.nodes", f"{c.nodes}: the emulated cluster holds {MAX_NODES}")
    # NaN passed `< 0` and ran an unthrottled link recorded as `gbps: .nan`; inf overflowed tc.
    if not (math.isfinite(c.link_gbps) and c.link_gbps >= 0):
        raise ConfigError(
            "cluster.link_gbps", f"{c.link_gbps}: must be a finite number >= 0 (0: unlimited)"
        )
    if not (math.isfinite(c.link_latency_ms) and c.link_latency_ms >= 0):
        raise ConfigError(
            "cluster.link_latency_ms", f"{c.link_latency_ms}: must be a finite number >= 0"
        )
    if c.link_match_gpu is not None:
        profiles = [g for g in group_choices("gpu") if g not in ("auto", "cpu")]
        if c.link_match_gpu not in profiles:
            raise ConfigError(
                "cluster.link_match_gpu",
                f"unknown gpu profile {c.link_match_gpu!r}; choose from: {', '.join(profiles)}",
            )
    if not cfg.dry_run:
        check_requirements()  # root, ip, tc: only a real run needs them
        check_congestion_control(str(c.link_congestion_control))
