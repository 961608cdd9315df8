"""Rank-side helper for tests/integration/test_tensor_parallel.py, on 4 ranks.

``torchrun --nproc-per-node 4 -m tests.ranks.tp_ranks OUT_DIR CONFIG... --fp16 FP16_CONFIG``
runs each config's whole run (its metrics.jsonl and summary.json, as under `python -m
launch`), counting the bytes of its third step's collectives (OUT_DIR/counted.json); then
trains FP16_CONFIG (fp16, a TP x FSDP mesh) with an inf written into one rank's shard of one
w2 gradient at one step, and records on every rank the loss scale and a checksum of its
parameters around that step (OUT_DIR/fp16_inf.json): every rank must skip the step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tests.ranks.collective_counting import run_counted
from tests.ranks.leave import leave_after
from train.runtime import distributed
from train.runtime.rank_setup import set_up
from train.spec.config import load_run_config

POISONED_STEP = 3  # the step whose gradients carry the inf (the scaler has settled by then)
POISONED_RANK = 1


def main(out_dir: Path, config_paths: list[Path], fp16_config: Path) -> None:
    rank = distributed.init_distributed()
    try:
        counted = {}
        for path in config_paths:
            counted[path.parent.name] = run_counted(path, rank)
        skipped = fp16_overflow_on_one_rank(fp16_config, rank)
        gathered = [None] * rank.world_size
        dist.all_gather_object(gathered, skipped)
        if rank.is_main:
            (out_dir / "counted.json").write_text(json.dumps(counted, indent=2))
            (out_dir / "fp16_inf.json").write_text(json.dumps(gathered, indent=2))
    finally:
        distributed.shutdown()


def fp16_overflow_on_one_rank(path: Path, rank: distributed.RankInfo) -> dict:
    """Train a few fp16 steps; at POISONED_STEP put an inf into POISONED_RANK's local shard of
    layers.0's w2 gradient just before the scaler unscales (after every reduction)."""
    run = set_up(load_run_config(path), path.parent, rank)
    scaler, model = run.steps.scaler, run.layout.model
    w2 = model.layers[0].feed_forward.w2.weight
    unscale = scaler.unscale_
    state = {"step": 0}

    def poisoned_unscale(optimizer):
        if state["step"] == POISONED_STEP and rank.rank == POISONED_RANK:
            w2.grad.to_local().view(-1)[0] = float("inf")
        return unscale(optimizer)

    scaler.unscale_ = poisoned_unscale
    record = {"rank": rank.rank, "scale": [], "checksum": []}
    for step in range(1, POISONED_STEP + 2):
        state["step"] = step
        run.steps.step(run.steps.draw(step))
        record["scale"].append(float(scaler.get_scale()))
        record["checksum"].append(checksum(model))
    return record


def checksum(model: torch.nn.Module) -> float:
    """This rank's own parameter values, summed (a skipped step leaves it unchanged)."""
    total = 0.0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += float(local.detach().double().sum())
    return total


def _main_from_argv() -> None:
    args = sys.argv[1:]
    split = args.index("--fp16")
    main(Path(args[0]), [Path(a) for a in args[1:split]], Path(args[split + 1]))


if __name__ == "__main__":
    leave_after(_main_from_argv)
