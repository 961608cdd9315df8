"""The device mesh of a layout: dims (pp, dp_replicate, dp_shard, ep, tp), rank-major in that
order.

TP is the innermost dim, so a TP group is made of consecutive ranks: on a cluster those share
a node and talk over NVLink, and only the data-parallel dims cross the NIC. The pipeline dim
is outermost: its neighbours are the farthest apart, and they exchange the least.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from train.spec.degrees import MESH_DIMS, Degrees


def build_mesh(degrees: Degrees, device: torch.device) -> DeviceMesh:
    shape = tuple(getattr(degrees, dim) for dim in MESH_DIMS)
    return init_device_mesh(device.type, shape, mesh_dim_names=MESH_DIMS)


def data_parallel_rank(mesh: DeviceMesh, degrees: Degrees) -> int:
    """Which slice of the global batch this rank trains on: its place among the dp ranks.

    Ranks of one TP group, or of one pipeline, share a coordinate here, so they see the same
    rows; EP ranks are data-parallel ranks (the innermost), each with its own rows.
    """
    _, replica, shard, expert, _ = mesh.get_coordinate()
    return (replica * degrees.dp_shard + shard) * degrees.ep + expert
