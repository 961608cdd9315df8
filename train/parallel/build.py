"""From the config to a Layout: which wrappers, in which order, on which mesh.

Order (as torchtitan): tensor parallel, then activation checkpointing, then per-block
compile, then the data-parallel wrapper (FSDP2, DDP or DeepSpeed) and its optimizer. Each
step needs the one before: FSDP shards the DTensors TP made, and checkpointing wraps whole
TP-sharded blocks, so its recompute replays their collectives.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn

from train.config import RunConfig
from train.parallel.checkpointing import apply_activation_checkpointing
from train.parallel.ddp import apply_ddp
from train.parallel.degrees import ZERO_STAGES, LayoutPlan
from train.parallel.fsdp import apply_fsdp, fsdp_no_sync
from train.parallel.layout import Layout, TorchLayout, adamw
from train.parallel.mesh import build_mesh, data_parallel_rank
from train.parallel.tensor_parallel import apply_tensor_parallel
from train.parallel.zero import build_zero_layout  # DeepSpeed itself is imported only there

FSDP_LAYOUTS = ("fsdp", "hsdp", "tp_fsdp")


def build_layout(
    model: nn.Module,
    cfg: RunConfig,
    layout: LayoutPlan,
    precision: str,
    accum_steps: int,
    device: torch.device,
    compile_blocks: bool = False,
) -> Layout:
    """Place ``model`` (a train.model.Transformer on ``device``) as ``layout`` says.

    ``precision`` is the resolved one. Without a process group (a rank started by hand) the
    model trains alone, unwrapped.
    """
    degrees = layout.degrees
    if layout.name in ZERO_STAGES:
        apply_activation_checkpointing(model.layers, layout.checkpointed)
        _compile_blocks(model, compile_blocks)
        stage = ZERO_STAGES[layout.name]
        return build_zero_layout(model, cfg, stage, precision, accum_steps, device)

    if not dist.is_initialized():
        apply_activation_checkpointing(model.layers, layout.checkpointed)
        _compile_blocks(model, compile_blocks)
        return TorchLayout(model, adamw(model, cfg.train, device), dp_rank=0, dp_size=1)

    mesh = build_mesh(degrees, device)
    if degrees.tp > 1:
        # The driver refuses an explicit fp8 here; precision=auto can still resolve to it.
        if precision == "fp8":
            raise ValueError(
                "precision.name: fp8 with tensor parallelism needs fp8-aware TP plans, which "
                "are not wired up; use bf16, or fp8 with ddp/fsdp"
            )
        apply_tensor_parallel(model, mesh["tp"], layout.sequence_parallel)
    apply_activation_checkpointing(model.layers, layout.checkpointed)
    _compile_blocks(model, compile_blocks)

    no_sync = None
    if layout.name in FSDP_LAYOUTS:
        dp_dims = ("dp_replicate", "dp_shard") if degrees.dp_replicate > 1 else ("dp_shard",)
        apply_fsdp(model, mesh[dp_dims])
        no_sync = functools.partial(fsdp_no_sync, model)
    elif degrees.dp_replicate > 1:
        model = apply_ddp(model, device, cfg.parallel.bucket_mb)
        no_sync = model.no_sync
    optimizer = adamw(model, cfg.train, device)
    return TorchLayout(model, optimizer, data_parallel_rank(mesh, degrees), degrees.dp, no_sync)


def _compile_blocks(model: nn.Module, enabled: bool) -> None:
    # Block by block, in place: module names stay as train/model.py has them, and a graph
    # break in one block does not cost the others their compilation.
    if enabled:
        for block in model.layers:
            block.compile()
