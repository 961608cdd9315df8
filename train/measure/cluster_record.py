"""What a run's summary.json records about where it ran: cluster, link, fabric, topology.

Read on rank 0 from its config and its environment (the NCCL variables it really got), so
the record is right however the rank was started (torchrun, deepspeed, an sbatch script).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from train.spec.config import RunConfig

IB_SYSFS = Path("/sys/class/infiniband")


def cluster_record(
    cfg: RunConfig, device: torch.device, *, fabric_warnings: Sequence[str] | None = None
) -> dict:
    """summary.json's (and comm.json's) ``cluster`` and ``fabric`` keys."""
    return {
        "cluster": cluster_fields(cfg, device),
        "fabric": fabric_fields(cfg, device, fabric_warnings=fabric_warnings),
    }


def cluster_fields(cfg: RunConfig, device: torch.device) -> dict:
    """Where the run ran: the cluster, its launcher, restarts, the emulated link."""
    c = cfg.cluster
    cluster = {
        "name": c.name,
        "launcher": cfg.launcher.name,
        "max_restarts": c.max_restarts,
        # Restarts rank 0's torchrun made after failures on its node (a restart forced by
        # another node's failure re-forms the group without counting here).
        "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        # CPU ranks sharing cores (cluster.allow_oversubscribe): contention, not devices.
        "oversubscribed": device.type == "cpu" and oversubscribed(cfg),
    }
    if cfg.resolved.applied_link:  # the emulated link, or the one declared for real nodes
        # rate, qdisc, latency (applied or not), link match
        cluster["link"] = cfg.resolved.applied_link
    return cluster


def fabric_fields(
    cfg: RunConfig, device: torch.device, *, fabric_warnings: Sequence[str] | None
) -> dict:
    """The NCCL variables this rank really got, and the topology of its node.

    ``fabric_warnings``: every node's (gather_fabric_warnings), recorded as fabric.warnings;
    None (recorded as null) when the caller did not check, which is not the same as none."""
    fabric = {
        "name": cfg.fabric.name,
        "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")},
        "warnings": None if fabric_warnings is None else list(fabric_warnings),
    }
    if cfg.fabric.capture_topology and device.type == "cuda":
        fabric["topology"] = capture_topology()
    return fabric


def ib_hca_warning(nccl_ib_hca: str | None, sysfs: Path = IB_SYSFS) -> str | None:
    """Why NCCL_IB_HCA does not fit this node's HCAs (under ``sysfs``), or None if it fits.

    NCCL's syntax: a comma list of HCA names, each an HCA name prefix (``mlx5`` takes
    mlx5_0, mlx5_1, ...) or, after a leading ``=``, an exact name; ``:port`` picks one port;
    a leading ``^`` (before the ``=``) makes it a list to exclude. Names that match no HCA are
    ignored without a word, and when no HCA is left NCCL runs over sockets (TCP): a fabric
    profile written for other nodes silently turns InfiniBand runs into Ethernet runs.
    """
    if not nccl_ib_hca or not nccl_ib_hca.strip():
        return None
    spec = nccl_ib_hca.strip()
    exclude = spec.startswith("^")
    spec = spec.removeprefix("^")
    exact = spec.startswith("=")
    spec = spec.removeprefix("=")
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    hcas = _hca_ports(sysfs)

    def matching(name: str) -> list[str]:
        return [h for h in hcas if (h == name if exact else h.startswith(name))]

    have = ", ".join(sorted(hcas)) or f"none ({sysfs} is empty or missing)"
    if exclude:
        excluded = {h for e in entries for h in matching(e.partition(":")[0])}
        if hcas and excluded == set(hcas):
            return (
                f"NCCL_IB_HCA={nccl_ib_hca} excludes every HCA of this node ({have}): "
                "NCCL will run over sockets (TCP), not InfiniBand/RoCE"
            )
        return None
    unmatched = []
    for entry in entries:
        name, _, port = entry.partition(":")
        found = matching(name)
        if not found or (port and not any(port in hcas[h] for h in found)):
            unmatched.append(entry)
    if not unmatched:
        return None
    if len(unmatched) == len(entries):
        return (
            f"NCCL_IB_HCA={nccl_ib_hca} names no HCA of this node (it has: {have}): "
            "NCCL will run over sockets (TCP), not InfiniBand/RoCE"
        )
    return (
        f"NCCL_IB_HCA={nccl_ib_hca}: {', '.join(unmatched)} not on this node (it has: {have}); "
        "NCCL ignores them and uses the rest"
    )


def _hca_ports(sysfs: Path) -> dict[str, set[str]]:
    """Each HCA under ``sysfs`` (e.g. /sys/class/infiniband/mlx5_0) and its port numbers."""
    if not sysfs.is_dir():
        return {}
    return {
        hca.name: {p.name for p in (hca / "ports").glob("*")} for hca in sorted(sysfs.iterdir())
    }


def gather_fabric_warnings(*, local_rank: int, backend: str, sysfs: Path = IB_SYSFS) -> list[str]:
    """Every node's fabric warnings, on every rank: each node's first rank checks its own HCAs
    (a profile can fit one node and not another). Collective when a process group is up: call
    it on every rank."""
    mine: list[str] = []
    # NCCL_IB_HCA means nothing to gloo (CPU ranks): no warning about sockets there.
    if local_rank == 0 and backend == "nccl":
        warning = ib_hca_warning(os.environ.get("NCCL_IB_HCA"), sysfs)
        if warning:
            mine.append(f"{socket.gethostname()}: {warning}")
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return mine
    gathered: list[list[str] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    return [w for node in gathered for w in node or []]


def capture_topology() -> dict:
    """rank 0's node: `nvidia-smi topo -m` and each InfiniBand port's state and link layer."""
    topology: dict = {"nvidia_smi_topo": None, "infiniband": []}
    if shutil.which("nvidia-smi"):
        try:
            result = subprocess.run(
                ["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=20
            )
            topology["nvidia_smi_topo"] = result.stdout if result.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            pass
    if IB_SYSFS.is_dir():
        for port in sorted(IB_SYSFS.glob("*/ports/*")):
            topology["infiniband"].append(
                {
                    "device": port.parent.parent.name,
                    "port": port.name,
                    "state": _read(port / "state"),  # e.g. "4: ACTIVE"
                    "link_layer": _read(port / "link_layer"),  # InfiniBand or Ethernet (RoCE)
                    "rate": _read(port / "rate"),  # e.g. "400 Gb/sec (4X NDR)"
                }
            )
    return topology


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def oversubscribed(cfg: RunConfig) -> bool:
    """This node's CPU rank threads outnumber its cores."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.cluster.nproc_per_node))
    nodes_here = cfg.cluster.nodes if cfg.cluster.name == "emulated" else 1
    threads = local_ranks * nodes_here * cfg.cluster.cpu_threads_per_rank
    return threads > len(os.sched_getaffinity(0))
