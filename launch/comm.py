"""``python -m launch.comm [overrides]``: the collective benchmark, started like a training run.

The same config tree and launch pipeline as ``python -m launch`` (cluster=local, emulated or
multinode; launcher=torchrun, deepspeed or slurm), with ``python -m train.bench.comm_rank`` as the
ranks; the comm.* keys set the ops and the size sweep (launch/bench/comm_job.py).

    python -m launch.comm cluster.nproc_per_node=2 comm.max_bytes=16777216
    python -m launch.comm cluster=emulated cluster.nodes=2 cluster.link_gbps=0.2 \\
        comm.ops=[all_reduce]
"""

from __future__ import annotations

from launch.bench.comm_job import COMM
from launch.pipeline import job_app


def main() -> None:
    job_app(COMM)


if __name__ == "__main__":
    main()
