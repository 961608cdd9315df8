"""What a run's summary.json records about where it ran: cluster, link, fabric, topology.

Read on rank 0 from its config and its environment (the NCCL variables it really got), so
the record is right however the rank was started (torchrun, deepspeed, an sbatch script).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import torch

from train.config import RunConfig

IB_SYSFS = Path("/sys/class/infiniband")


def cluster_record(cfg: RunConfig, device: torch.device) -> dict:
    c = cfg.cluster
    cluster = {
        "name": c.name,
        "launcher": cfg.launcher.name,
        "max_restarts": c.max_restarts,
        # Restarts rank 0's torchrun made after failures on its node (a restart forced by
        # another node's failure re-forms the group without counting here).
        "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
    }
    if c.name == "emulated":
        cluster["link"] = c.applied_link  # rate, qdisc, latency (applied or not), link match
    fabric = {
        "name": cfg.fabric.name,
        "nccl_env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("NCCL_")},
    }
    if cfg.fabric.capture_topology and device.type == "cuda":
        fabric["topology"] = capture_topology()
    return {"cluster": cluster, "fabric": fabric}


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
