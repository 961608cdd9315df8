"""Every node's NCCL_IB_HCA warning reaches rank 0: two gloo ranks stand in for two nodes."""

from __future__ import annotations

import json

import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, tmp: str) -> None:
    import os
    from pathlib import Path

    from train.measure.cluster_record import gather_fabric_warnings

    dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=2)
    try:
        # Node 0 has mlx5_0; node 1 has only mlx5_4, which the profile's list does not name.
        sysfs = Path(tmp) / f"node{rank}"
        (sysfs / ("mlx5_0" if rank == 0 else "mlx5_4") / "ports" / "1").mkdir(parents=True)
        os.environ["NCCL_IB_HCA"] = "=mlx5_0"
        # backend="nccl": the check itself; the gather runs over this gloo group.
        warnings = gather_fabric_warnings(local_rank=0, backend="nccl", sysfs=sysfs)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(warnings))
    finally:
        dist.destroy_process_group()


def test_rank_zero_gets_the_other_nodes_warning(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2, join=True)
    for rank in (0, 1):
        [warning] = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert "NCCL_IB_HCA==mlx5_0 names no HCA of this node (it has: mlx5_4)" in warning
