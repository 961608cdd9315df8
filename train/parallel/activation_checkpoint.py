"""Activation checkpointing: keep a block's input, recompute its insides during backward.

Trades memory for compute: a checkpointed block stores one [B, T, d] tensor instead of every
intermediate, and runs its forward a second time in backward. That second forward is work
the hardware does but the model does not need, so HFU counts it and MFU does not.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointed(nn.Module):
    """Runs ``block`` under torch.utils.checkpoint (non-reentrant: works with DTensor, FSDP2
    and DeepSpeed's hooks, and with inputs that do not require grad).

    ``te_layers``: the block holds Transformer Engine layers, so it is checkpointed with TE's
    own ``checkpoint``, whose recompute re-enters TE's fp8 autocast (torch's would recompute
    them in bf16, or fail under delayed scaling, whose amax history the recompute must not
    update twice)."""

    def __init__(self, block: nn.Module, te_layers: bool = False):
        super().__init__()
        self.block = block
        self.te_layers = te_layers

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        if self.te_layers:
            import transformer_engine.pytorch as te  # the te extra: only TE fp8 runs have it

            # TE 2.x: te.checkpoint(function, *args, use_reentrant=..., ...); its default is
            # reentrant, which FSDP2 and DTensor do not support.
            return te.checkpoint(self.block, *args, use_reentrant=False)
        return checkpoint(self.block, *args, use_reentrant=False)


def apply_activation_checkpointing(
    layers: nn.ModuleList, indices: list[int], te_layers: bool = False
) -> None:
    """Wrap the chosen blocks in place (after tensor parallelism, before FSDP/DDP/ZeRO).

    ``te_layers``: the blocks hold Transformer Engine layers (fp8 through TE).
    """
    for i in indices:
        layers[i] = Checkpointed(layers[i], te_layers)
