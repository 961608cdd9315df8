"""Tensor parallelism (Megatron-style, on DTensor) over the attention and MLP of every block.

wq/wk/wv and w1/w3 are split column-wise (each rank computes its own heads / its slice of the
MLP width, no communication), wo and w2 row-wise (each rank holds a partial sum of the block
output). The embedding, norms and output head stay whole on every rank.

Without sequence parallelism a block costs, per micro-batch, two all-reduces of the
activations [B, T, d] in forward (after wo and after w2) and two in backward (the input
gradients of attention and MLP, once each: the module-level PrepareModuleInput makes wq/wk/wv
share one replicated input, so their three partial input gradients are summed before the one
all-reduce). With sequence parallelism the norms and the residual stream between blocks are
split along the sequence, and each all-reduce becomes an all-gather before the matmuls plus a
reduce-scatter after them; the norm weights' gradients then come out partial and are
all-reduced once per step (train/parallel/layout.py).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)


def block_plan(sequence_parallel: bool) -> dict:
    """The plan for one TransformerBlock, keyed by the module names in train/model/transformer.py."""
    # Between blocks the residual stream is whole (Replicate) or split along the sequence.
    stream = Shard(1) if sequence_parallel else Replicate()
    plan = {
        # (x, cos, sin): x gathered to a whole, replicated DTensor; rope tables untouched.
        "attention": PrepareModuleInput(
            input_layouts=(stream, None, None), desired_input_layouts=(Replicate(), None, None)
        ),
        "attention.wq": ColwiseParallel(),
        "attention.wk": ColwiseParallel(),
        "attention.wv": ColwiseParallel(),
        "attention.wo": RowwiseParallel(output_layouts=stream),
        "feed_forward": PrepareModuleInput(
            input_layouts=(stream,), desired_input_layouts=(Replicate(),)
        ),
        "feed_forward.w1": ColwiseParallel(),
        "feed_forward.w3": ColwiseParallel(),
        "feed_forward.w2": RowwiseParallel(output_layouts=stream),
    }
    if sequence_parallel:
        plan["attention_norm"] = SequenceParallel()
        plan["ffn_norm"] = SequenceParallel()
    return plan


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, sequence_parallel: bool):
    """Shard ``model`` (a train.model.transformer.Transformer) in place over ``tp_mesh``."""
    for block in model.layers:
        parallelize_module(block, tp_mesh, block_plan(sequence_parallel))
    if sequence_parallel:
        # The embedding output is whole on every rank: the first block takes its own slice
        # of the sequence (no communication; its gradient is all-gathered in backward). The
        # last block's output is split: gather it before the final norm and the head.
        parallelize_module(
            model,
            tp_mesh,
            {
                "layers.0": PrepareModuleInput(
                    input_layouts=(Replicate(), None, None),
                    desired_input_layouts=(Shard(1), None, None),
                    use_local_output=True,
                ),
                "norm": PrepareModuleInput(
                    input_layouts=(Shard(1),),
                    desired_input_layouts=(Replicate(),),
                    use_local_output=True,
                ),
            },
        )
