"""Rank-side helper for tests/integration/test_expert_parallel.py: one step's gradients.

``torchrun --nproc-per-node N -m tests.ranks.expert_gradients OUT CONFIG [OUT CONFIG ...]``
sets each CONFIG's run up in turn (one process group: one start for several layouts), takes
one step, and writes (rank 0) every parameter's gradient as the optimizer would see it, whole
(DTensor shards gathered), to its OUT: after every reduction, before clipping. Without
a process group (``gradients`` called in the test's own process) it is the one-rank
reference. AdamW hides a gradient's scale (its update divides by the gradient's own RMS), so
losses alone cannot tell a gradient that is k times what it should be.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from tests.ranks.leave import leave_after
from train.runtime import distributed
from train.runtime.rank_setup import set_up
from train.spec.config import load_run_config


def gradients(path: Path, rank: distributed.RankInfo) -> dict[str, torch.Tensor]:
    run = set_up(load_run_config(path), path.parent, rank)
    layout, seen = run.layout, {}
    finish = layout.finish_gradients

    def capture(max_norm: float) -> None:
        for name, p in layout.model.named_parameters():
            if p.grad is not None:
                grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                seen[name.removeprefix("module.")] = grad.detach().clone()
        finish(max_norm)

    layout.finish_gradients = capture
    run.steps.step(run.steps.draw(0))
    return seen


def main(pairs: list[tuple[Path, Path]]) -> None:
    rank = distributed.init_distributed()
    try:
        for out, config in pairs:
            seen = gradients(config, rank)
            if rank.is_main:
                torch.save(seen, out)
            if dist.is_initialized():
                dist.barrier()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]]
    leave_after(lambda: main(list(zip(paths[::2], paths[1::2], strict=True))))
