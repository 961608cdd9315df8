"""DeepSeek-V3's auxiliary-loss-free balancing (model.router_bias_update): after each optimizer
step every MoE block's router bias moves towards balance, from the tokens each expert took
during the step on every rank (train/model/moe.py Router.nudge_bias)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from train.model.moe import moe_blocks


def router_bias_update(model: nn.Module) -> Callable[[], None] | None:
    """The update for ``model``'s MoE blocks that have a bias (None: none has): their loads
    since the last step, summed over every rank in one all-reduce (all ranks then move their
    biases alike), each nudging its router."""
    blocks = [b for b in moe_blocks(model) if b.cfg.router_bias_update]
    if not blocks:
        return None

    def update() -> None:
        loads = torch.stack([b.take_load() for b in blocks])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(loads)
        for block, load in zip(blocks, loads, strict=True):
            block.router.nudge_bias(load)

    return update
