"""Process-group setup: what torchrun's environment says about this rank and its device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.distributed.distributed_c10d as c10d

from train.files.heartbeat import collective_timeout_s
from train.spec.devices import cpu_model_name


@dataclass(frozen=True)
class RankInfo:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    backend: str

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# Where launchers other than torchrun put a rank's place: (rank, world size, local rank, local
# size). DeepSpeed's MPI and slurm runners start `python -m train` directly, without RANK.
LAUNCHER_RANK_VARIABLES = (
    # Open MPI (deepspeed --launcher openmpi)
    (
        "OMPI_COMM_WORLD_RANK",
        "OMPI_COMM_WORLD_SIZE",
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "OMPI_COMM_WORLD_LOCAL_SIZE",
    ),
    # MVAPICH2
    (
        "MV2_COMM_WORLD_RANK",
        "MV2_COMM_WORLD_SIZE",
        "MV2_COMM_WORLD_LOCAL_RANK",
        "MV2_COMM_WORLD_LOCAL_SIZE",
    ),
    # MPICH and Intel MPI (Hydra process manager)
    ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    # srun (deepspeed --launcher slurm)
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE"),
)


def adopt_launcher_ranks(environ: dict[str, str]) -> str | None:
    """Set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from an MPI or Slurm launcher's
    variables when torchrun's are absent; the launcher's name, or None when nothing was set."""
    if "RANK" in environ:
        return None
    for rank, size, local_rank, local_size in LAUNCHER_RANK_VARIABLES:
        if not all(name in environ for name in (rank, size, local_rank)):
            continue
        environ["RANK"], environ["WORLD_SIZE"] = environ[rank], environ[size]
        environ["LOCAL_RANK"] = environ[local_rank]
        if local_size in environ:
            # SLURM_NTASKS_PER_NODE may read "8(x2)": the count comes first.
            environ["LOCAL_WORLD_SIZE"] = environ[local_size].split("(")[0].split(",")[0]
        return rank.split("_")[0]
    return None


def init_distributed(
    nccl_env: dict[str, str] | None = None, *, timeout_s: float | None = None
) -> RankInfo:
    """Join the process group torchrun (or the deepspeed launcher) set up in the environment.

    Without RANK in the environment (``python -m train`` run by hand) the rank is alone and no
    process group is created, so a single process needs no rendezvous. ``nccl_env`` (the
    fabric profile's variables) is set here too, before NCCL reads it: launchers that export
    without a shell may mangle values such as `^lo,docker` (launch/launchers/deepspeed.py).
    ``timeout_s``: every process group's collective timeout (``collective_timeouts``).
    """
    os.environ.update({k: str(v) for k, v in (nccl_env or {}).items()})
    adopt_launcher_ranks(os.environ)
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    # torchrun says LOCAL_WORLD_SIZE, the deepspeed launcher LOCAL_SIZE.
    local_world_size = int(
        os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world_size))
    )
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if "RANK" in os.environ and not dist.is_initialized():
        # With device_id NCCL binds this rank's device and forms its communicator now, not
        # lazily at the first collective (inside a step), sub-groups split from it, and
        # barrier() knows the device instead of guessing it with a warning. gloo: CPU only.
        device_id = {"device_id": device} if device.type == "cuda" else {}
        timeout = collective_timeouts(backend, timeout_s)
        dist.init_process_group(backend=backend, timeout=timeout, **device_id)
    return RankInfo(rank, local_rank, world_size, local_world_size, device, backend)


def collective_timeouts(backend: str, timeout_s: float | None) -> timedelta:
    """The timeout of every process group this rank makes (default: train/files/heartbeat.py).

    init_process_group takes it for the default group, but new_group (and so DeviceMesh,
    FSDP, pipelining, DeepSpeed) falls back to torch's module defaults (30 min for gloo):
    those are set too, so no sub-group waits longer than the one the run states."""
    timeout = timedelta(seconds=collective_timeout_s(timeout_s, backend))
    c10d.default_pg_timeout = timeout
    c10d.default_pg_nccl_timeout = timeout
    return timeout


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model_name()
