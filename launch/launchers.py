"""From a planned run to what starts it, for each launcher and cluster.

- torchrun on cluster=local: one `torchrun --standalone` line.
- torchrun on cluster=multinode: one line per node (c10d rendezvous on the head); this
  machine runs the line of cluster.node_rank.
- torchrun or deepspeed on cluster=emulated: one line per node, each inside its namespace;
  this machine runs them all.
- deepspeed on local/multinode: one `deepspeed` line that starts every node itself.
- slurm: an sbatch script per run (launch/slurm.py), submitted rather than run here.
"""

from __future__ import annotations

import contextlib
import errno
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from launch import slurm
from launch.commands import NodeCommand, torchrun_commands
from launch.conf_tree import load_gpu_profile
from launch.deepspeed_launch import deepspeed_commands, write_launch_files
from launch.emulated import EmulatedCluster, netem_available
from launch.errors import ConfigError
from launch.hostfile import ClusterNode, multinode_hosts
from launch.link_match import cpu_flops_per_rank, matched_link_gbps
from launch.plan import RunPlan
from train.config import RunConfig


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
    if c.name == "multinode":
        nodes = multinode_hosts(cfg)
        hosts_rendezvous = cfg.launcher.name == "deepspeed" or c.node_rank == 0
        if hosts_rendezvous and not cfg.dry_run and cfg.launcher.name != "slurm":
            check_port_free(c.master_port)
        return ClusterSetup(nodes)
    if c.name == "emulated":
        matched_to = match_link_to_gpu(cfg, console) if c.link_match_gpu else None
        largest = max(plan.nodes for plan in plans)
        emulated = EmulatedCluster(largest, c.link_gbps, c.link_latency_ms)
        if c.link_latency_ms > 0 and not cfg.dry_run:
            emulated.latency_applied = netem_available()
            if not emulated.latency_applied:
                console.print(
                    f"[yellow]warning:[/] this kernel has no sch_netem: cluster.link_latency_ms="
                    f"{c.link_latency_ms} is not applied (the links are rate-limited only)"
                )
        c.applied_link = emulated.applied_link()
        if matched_to:
            c.applied_link["matched_to"] = matched_to
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


def check_port_free(port: int) -> None:
    """The rendezvous port must be free on the node that hosts it (this one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "cluster.master_port", f"port {port} is in use on this machine"
                ) from None
            raise


def launch_commands(
    cfg: RunConfig, plan: RunPlan, config_path: Path, setup: ClusterSetup, module: str = "train"
) -> list[NodeCommand]:
    """Every node's command for one planned run (launcher=torchrun or deepspeed)."""
    if cfg.launcher.name == "deepspeed":
        write_launch_files(cfg, plan, setup.nodes)
        commands = deepspeed_commands(
            cfg, plan, config_path, setup.nodes, module, per_node=setup.emulated is not None
        )
    else:
        commands = torchrun_commands(cfg, plan, config_path, setup.nodes, module)
    if setup.emulated:
        commands = [setup.emulated.wrap(command) for command in commands]
    return commands


def commands_run_here(cfg: RunConfig, commands: list[NodeCommand]) -> list[NodeCommand]:
    """The commands this machine starts: one node's on a real multi-node cluster."""
    if cfg.cluster.name == "multinode" and cfg.launcher.name == "torchrun":
        return [c for c in commands if c.node_rank == cfg.cluster.node_rank]
    return commands


def submit_slurm_jobs(
    cfg: RunConfig, plans: list[RunPlan], config_paths: dict[str, Path], module: str = "train"
) -> int:
    """launcher=slurm: write each run's sbatch script; print it (dry_run) or submit it."""
    for plan in plans:
        script = slurm.write_script(cfg, plan, config_paths[plan.name], module)
        if cfg.dry_run:
            print(
                f"# {plan.name}: {script}  (submit with: {shlex.join(slurm.sbatch_argv(script))})"
            )
            print(script.read_text())
            continue
        job_id = slurm.submit(script)
        print(f"{plan.name}: submitted Slurm job {job_id} ({script})")
    if not cfg.dry_run and cfg.sweep.name != "none":
        root = Path(cfg.run_dir)
        print(f"when the jobs have finished: python -m launch.report {root}")
    return 0
