"""Fabric profiles (conf/fabric/*.yaml): the NCCL variables each rank of a run gets."""

from __future__ import annotations

import re

from launch.errors import ConfigError
from train.spec.config import FabricConfig

NCCL_NAME = re.compile(r"^NCCL_[A-Z0-9_]+$")


def validate_fabric(fabric: FabricConfig) -> None:
    for key, value in fabric.nccl_env.items():
        if not NCCL_NAME.match(key):
            raise ConfigError(f"fabric.nccl_env.{key}", "names an NCCL_* variable, in capitals")
        if value is None or str(value) == "":
            # An empty NCCL_IB_HCA matches every HCA: almost never what a profile means.
            raise ConfigError(f"fabric.nccl_env.{key}", "is empty; remove it or give a value")
        if "\n" in str(value):
            raise ConfigError(f"fabric.nccl_env.{key}", "holds a newline")


def fabric_environment(fabric: FabricConfig) -> dict[str, str]:
    """The profile's NCCL variables, as every node's launcher and rank get them.

    The profile wins over a variable exported by hand, so that a printed command means the
    same on every node; change one with an override (`fabric.nccl_env.NCCL_DEBUG=INFO`).
    """
    return {k: str(v) for k, v in sorted(fabric.nccl_env.items())}
