"""DeepSpeed's CPU shared-memory all-reduce segments: where they are, so that none outlives
its run.

DeepSpeed (0.19.8, ops/csrc/cpu/comm/shm.cpp shm_initialize) starts a shared-memory
all-reduce when every rank is on one node (the deepspeed launcher's LOCAL_SIZE) and creates one
66 MB segment per rank, /dev/shm/deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_
{rank}, which it never unlinks: in RAM until a reboot. Each zero* rank unlinks its own name once
every rank has mapped them all (train/parallel/zero.py); the driver sweeps what a rank that
died before that left behind (launch/pipeline.py).
"""

from __future__ import annotations

import os
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PREFIX = "deepspeed_allreduce_buffer"


def allreduce_segment(addr: str, port: str | int, rank: int) -> Path:
    """One rank's segment, as shm_initialize names it."""
    return SHM_DIR / f"{PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


def allreduce_segments(port: str | int) -> list[Path]:
    """This user's segments of the run on ``port`` (any address, every rank)."""
    return sorted(SHM_DIR.glob(f"{PREFIX}_{os.getuid()}_*_{port}_*"))
