"""Rank-side helper for tests/integration/test_pipeline.py: several pipeline runs in one
process group (one torchrun start), as tests/ranks/parallel_ranks.py does for the other
layouts.

``torchrun --nproc-per-node N -m tests.ranks.pipeline_ranks OUT_DIR RUN_DIR/config.yaml ...``
runs the worker's loop once per config; each writes metrics.jsonl and summary.json, and the
bytes of the collectives and sends of its third step, per kind and per rank, go to
OUT_DIR/counted.json (every rank's: pipeline ranks send different amounts, and so do EP ranks
in their all-to-alls: tests/integration/test_expert_parallel.py runs its cases here too).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from tests.ranks.collective_counting import counting_third_step
from tests.ranks.leave import leave_after
from train.runtime import distributed, worker
from train.spec.config import load_run_config


def main(out_dir: Path, config_paths: list[Path]) -> None:
    rank = distributed.init_distributed()
    counted = {}
    try:
        for path in config_paths:
            with counting_third_step() as counter:
                worker.run_rank(load_run_config(path), path.parent, rank)
            mine = {"bytes": dict(counter.counted.bytes), "unknown": counter.counted.unknown}
            everyone = [None] * rank.world_size
            dist.all_gather_object(everyone, mine)
            counted[path.parent.name] = everyone
            dist.barrier()
        if rank.is_main:
            (out_dir / "counted.json").write_text(json.dumps(counted, indent=2))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    leave_after(lambda: main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
