"""Bring up what a config's cluster needs before anything is written or started: its nodes
(hosts, hostfile, the emulated namespaces) and the checks only a live machine can answer (a
free rendezvous port, sbatch on PATH, the emulated link rate matched to a GPU profile)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass

from rich.console import Console

from launch.cluster.emulated import (
    EmulatedCluster,
    inherited_congestion_control,
    netem_available,
)
from launch.cluster.hosts import ClusterNode, multinode_hosts
from launch.cluster.link_match import cpu_flops_per_rank, matched_link_gbps
from launch.conf_tree import load_gpu_profile
from launch.errors import ConfigError
from launch.launchers import slurm
from launch.plan import RunPlan
from launch.terminal import warning
from train.spec.config import RunConfig


@dataclass
class ClusterSetup:
    """The nodes of this config's cluster, and the emulated cluster to bring up, if any."""

    nodes: list[ClusterNode]
    emulated: EmulatedCluster | None = None

    def running(self):
        """While the runs go: the emulated cluster's namespaces exist (and always go after)."""
        return self.emulated if self.emulated else contextlib.nullcontext()


def set_up_cluster(cfg: RunConfig, plans: list[RunPlan], console: Console) -> ClusterSetup:
    """Resolve the nodes and check what must be true before anything is written or started."""
    c = cfg.cluster
    if c.name in ("multinode", "slurm") and c.link_gbps > 0:
        cfg.resolved.applied_link = declared_link(c.link_gbps)
    if c.name == "multinode":
        nodes = multinode_hosts(cfg)
        hosts_rendezvous = cfg.launcher.name == "deepspeed" or c.node_rank == 0
        if hosts_rendezvous and not cfg.dry_run and cfg.launcher.name != "slurm":
            check_port_free(c.master_port)
        if cfg.launcher.name == "deepspeed" and not cfg.dry_run:
            check_deepspeed_runner(cfg)
        return ClusterSetup(nodes)
    if c.name == "emulated":
        matched_to = match_link_to_gpu(cfg, console) if c.link_match_gpu else None
        largest = max(plan.nodes for plan in plans)
        congestion_control = str(c.link_congestion_control)
        emulated = EmulatedCluster(
            largest, c.link_gbps, c.link_latency_ms, congestion_control=congestion_control
        )
        if c.link_latency_ms > 0 and not cfg.dry_run:
            emulated.latency_applied = netem_available()
            if not emulated.latency_applied:
                console.print(
                    warning(
                        f"this kernel has no sch_netem: cluster.link_latency_ms="
                        f"{c.link_latency_ms} is not applied (the links are rate-limited only)"
                    )
                )
        if congestion_control == "host" and not cfg.dry_run:
            emulated.inherited = inherited_congestion_control()
        cfg.resolved.applied_link = emulated.applied_link()
        if matched_to:
            cfg.resolved.applied_link["matched_to"] = matched_to
        return ClusterSetup(emulated.cluster_nodes(), emulated)
    if cfg.launcher.name == "deepspeed" and not cfg.dry_run:
        check_port_free(c.master_port)  # the deepspeed ranks rendezvous on it, here
    if cfg.launcher.name == "slurm" and not cfg.dry_run and not slurm.sbatch_available():
        raise ConfigError(
            "launcher.name", "launcher=slurm: sbatch is not on PATH; dry_run=true prints the script"
        )
    return ClusterSetup([ClusterNode("localhost", "")])


def match_link_to_gpu(cfg: RunConfig, console: Console) -> dict:
    """cluster.link_match_gpu: set link_gbps so comm:compute matches the profile (README)."""
    c = cfg.cluster
    profile = load_gpu_profile(c.link_match_gpu)
    cpu_flops, flops_source = cpu_flops_per_rank(c.cpu_threads_per_rank)
    c.link_gbps = matched_link_gbps(profile, c.link_match, cpu_flops, c.nproc_per_node)
    matched_to = {
        "gpu": profile.name,
        "link": c.link_match,
        "cpu_gflops_per_rank": cpu_flops / 1e9,
        "cpu_gflops_source": flops_source,
        "gpu_peak_tflops_bf16": profile.peak_tflops.bf16,
    }
    console.print(
        f"link: {c.link_gbps * 1000:.1f} Mbit/s per node = {profile.name} {c.link_match} "
        f"rate x (CPU {cpu_flops / 1e9:.1f} GFLOP/s per rank / {profile.peak_tflops.bf16} "
        f"TFLOP/s bf16) x {c.nproc_per_node} rank(s) per node; CPU FLOP/s from {flops_source}"
    )
    return matched_to


def declared_link(gbps: float) -> dict:
    """cluster.link_gbps on real nodes: what the user says their link is, recorded with each
    run (resolved.applied_link) so that sweeps over different links are separate curves."""
    return {"gbps": gbps, "declared": True, "qdisc": "none (declared, not applied)"}


def check_deepspeed_runner(cfg: RunConfig) -> None:
    """DeepSpeed's slurm runner starts the ranks with srun: only inside an allocation."""
    if cfg.launcher.runner == "slurm" and "SLURM_JOB_ID" not in os.environ:
        raise ConfigError(
            "launcher.runner",
            "runner=slurm starts the ranks with srun, which needs an allocation: run this "
            "driver inside `salloc -N<nodes>` (or an sbatch script), or use launcher=slurm "
            "(the driver submits the jobs) or runner=pdsh/openmpi",
        )


def free_port() -> int:
    """A port the kernel says is free now (a suggestion: it may be taken by the next run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def check_port_free(port: int) -> None:
    """The rendezvous port must be free on the node that hosts it (this one).

    SO_REUSEADDR as the rendezvous store binds it: a port left in TIME_WAIT by the last run
    (for about a minute) is free for the next one, only a listening socket is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "cluster.master_port",
                    f"port {port} is in use on this machine: pick a free one, 1024..65535 "
                    f"(e.g. cluster.master_port={free_port()})",
                ) from None
            raise
