"""From the config to a Layout: which wrappers, in which order, on which mesh.

Order (as torchtitan): tensor parallel, then activation checkpointing, then per-block
compile, then the data-parallel wrapper (FSDP2, DDP or DeepSpeed) and its optimizer. Each
step needs the one before: FSDP shards the DTensors TP made, and checkpointing wraps whole
TP-sharded blocks, so its recompute replays their collectives.

The model arrives on the meta device (``build_model``): TP, checkpointing and FSDP2 are
applied to shapes, and only then does each rank allocate and initialise its own shards
(train/model/weights.py), before DDP, DeepSpeed or the optimizer needs real tensors. ZeRO-3 is the
exception: its model is built partitioned, under deepspeed.zero.Init.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._symmetric_memory import enable_symm_mem_for_group

from train.model.transformer import Transformer, cross_entropy_loss
from train.model.weights import init_weights, materialize
from train.parallel.activation_checkpoint import apply_activation_checkpointing
from train.parallel.ddp import apply_ddp
from train.parallel.expert_parallel import (
    apply_expert_fsdp,
    apply_expert_parallel,
    configure_experts,
    grouped_mm_for,
)
from train.parallel.fsdp import apply_fsdp, fsdp_sync_contexts, mixed_precision_policy
from train.parallel.layout import Layout, TorchLayout, adamw
from train.parallel.mesh import build_mesh, data_parallel_rank
from train.parallel.pipeline_stages import build_pipeline_layout
from train.parallel.tensor_parallel import apply_tensor_parallel, shard_embedding_gradient
from train.parallel.zero import (  # DeepSpeed itself is imported only there
    build_zero_layout,
    deepspeed_config,
    import_deepspeed,
)
from train.spec.config import RunConfig
from train.spec.config_error import ConfigError
from train.spec.degrees import LayoutPlan
from train.spec.precision import gathers_weights_in_fp8, tp_gathers_in_fp8
from train.spec.shapes import expert_shard_dim, is_moe


def build_model(
    cfg: RunConfig, layout: LayoutPlan, precision: str, accum_steps: int, device: torch.device
) -> Transformer:
    """The model before it is placed: shapes only, on the meta device (``build_layout``
    materialises each rank's shards), or for zero3 already partitioned and initialised."""
    if layout.row.zero_stage == 3 and dist.is_initialized():
        return zero3_model(cfg, precision, accum_steps, device)
    with torch.device("meta"):
        model = Transformer(cfg.model)
    configure_experts(model, grouped_mm=grouped_mm_for(cfg.train.grouped_mm, device))  # MoE
    return model


def build_layout(
    model: nn.Module,
    cfg: RunConfig,
    layout: LayoutPlan,
    precision: str,
    accum_steps: int,
    device: torch.device,
    compile_blocks: bool = False,
    fp8_backend: str | None = None,
    fp8_recipe: str | None = None,
) -> Layout:
    """Place ``model`` (a Transformer from ``build_model``) as ``layout`` says.

    ``precision`` is the resolved one, ``fp8_backend``/``fp8_recipe`` the plan's when it is
    fp8. Without a process group (a rank started by hand) the model trains alone, unwrapped.
    """
    degrees = layout.degrees
    te_layers = precision == "fp8" and fp8_backend == "te"
    row = layout.row
    if row.deepspeed:
        apply_activation_checkpointing(model.layers, layout.checkpointed, te_layers)
        _compile_blocks(model, compile_blocks)
        _materialize(model, cfg, device)  # zero1/2 replicate the parameters: whole on each rank
        return build_zero_layout(model, cfg, row.zero_stage, precision, accum_steps, device)

    if not dist.is_initialized():
        apply_activation_checkpointing(model.layers, layout.checkpointed, te_layers)
        _compile_blocks(model, compile_blocks)
        _materialize(model, cfg, device)
        return TorchLayout(model, adamw(model, cfg.train, device), dp_rank=0, dp_size=1)

    if layout.pipeline is not None:  # pp, pp_fsdp: stages driven by a schedule
        return build_pipeline_layout(
            model, cfg, layout, precision, device, compile_blocks=compile_blocks,
            fp8_backend=fp8_backend,
        )  # fmt: skip
    if row.expert_parallel:  # ep, ep_fsdp: experts split over ranks, tokens by all-to-all
        return _expert_parallel(model, cfg, layout, precision, device, compile_blocks, te_layers)
    mesh, on_gpu = build_mesh(degrees, device), device.type == "cuda"
    if degrees.tp > 1:
        apply_tensor_parallel(
            model,
            mesh["tp"],
            sequence_parallel=layout.sequence_parallel,
            # torchao's float8 styles gather fp8, which gloo cannot carry (CPU: plain styles).
            float8=precision == "fp8" and tp_gathers_in_fp8(fp8_backend, on_gpu=on_gpu),
        )
        if cfg.parallel.async_tp:
            enable_async_tp(mesh["tp"], device)
    apply_activation_checkpointing(model.layers, layout.checkpointed, te_layers)
    _compile_blocks(model, compile_blocks, loss=degrees.tp == 1)

    no_sync = accumulate = after_step = None
    if row.shards_parameters:
        dp_dims = ("dp_replicate", "dp_shard") if degrees.dp_replicate > 1 else ("dp_shard",)
        policy = mixed_precision_policy(precision, cfg.parallel.fsdp_reduce_dtype)
        expert_dim = expert_shard_dim(cfg.model, 1, degrees.dp_shard) if is_moe(cfg.model) else 0
        apply_fsdp(model, mesh[dp_dims], policy, expert_dim=expert_dim)
        no_sync, accumulate = fsdp_sync_contexts(model, cfg.parallel.fsdp_reduce_every_micro_step)
        if fsdp_float8_all_gather(layout, fp8_backend, fp8_recipe):
            # torchao: the fp8 extra, imported only by runs that use it.
            from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

            # The fp8 weights' scales for the next all-gathers, from the updated weights:
            # one all-reduce of all their amaxes, instead of one per weight per gather.
            after_step = functools.partial(precompute_float8_dynamic_scale_for_fsdp, model)
    _materialize(model, cfg, device)  # each rank its own TP/FSDP shards (new parameters)
    if degrees.tp > 1 and not row.shards_parameters:
        shard_embedding_gradient(model)
    if not row.shards_parameters and degrees.dp_replicate > 1:
        model = apply_ddp(model, device, cfg.parallel.bucket_mb)
        no_sync = model.no_sync
    optimizer = adamw(model, cfg.train, device)
    return TorchLayout(
        model, optimizer, data_parallel_rank(mesh, degrees), degrees.dp, no_sync,
        accumulate=accumulate, after_step=after_step, vocab_parallel=degrees.tp > 1,
    )  # fmt: skip


def _expert_parallel(
    model: nn.Module,
    cfg: RunConfig,
    layout: LayoutPlan,
    precision: str,
    device: torch.device,
    compile_blocks: bool,
    te_layers: bool,
) -> Layout:
    """ep, ep_fsdp (train/parallel/expert_parallel.py): the experts split over the ep ranks,
    then checkpointing, compile and FSDP2 (experts, blocks, root) in the torch path's order."""
    degrees = layout.degrees
    mesh = build_mesh(degrees, device)
    if degrees.ep > 1:
        apply_expert_parallel(model, mesh["ep"])
    apply_activation_checkpointing(model.layers, layout.checkpointed, te_layers)
    _compile_blocks(model, compile_blocks)
    policy = mixed_precision_policy(precision, cfg.parallel.fsdp_reduce_dtype)
    apply_expert_fsdp(model, mesh, layout, policy, cfg.model)
    _materialize(model, cfg, device)  # each rank its own experts and FSDP shards
    optimizer = adamw(model, cfg.train, device)
    no_sync, accumulate = fsdp_sync_contexts(model, cfg.parallel.fsdp_reduce_every_micro_step)
    return TorchLayout(
        model,
        optimizer,
        data_parallel_rank(mesh, degrees),
        degrees.dp,
        no_sync,
        accumulate=accumulate,
    )


def enable_async_tp(tp_mesh, device: torch.device) -> None:
    """torchtitan's async TP: the compiler's micro-pipelining pass splits each sequence-parallel
    all-gather / reduce-scatter and the matmul beside it into chunks that overlap, through
    symmetric memory on the TP group (CUDA only; train/spec/rules.py check_async_tp)."""
    if device.type != "cuda":
        raise ConfigError(
            "parallel.async_tp", "true: it needs CUDA symmetric memory; this rank runs on CPU"
        )
    # torch._inductor: 1.7 s to import, and only async TP (with compile) needs it here.
    import torch._inductor.config as inductor_config

    inductor_config._micro_pipeline_tp = True
    enable_symm_mem_for_group(tp_mesh.get_group().group_name)


def fsdp_float8_all_gather(
    layout: LayoutPlan, fp8_backend: str | None, fp8_recipe: str | None
) -> bool:
    """Whether FSDP2 gathers torchao's fp8 weights in fp8 (train/spec/precision.py's rule,
    which the performance model reads too), in a distributed run."""
    return dist.is_initialized() and gathers_weights_in_fp8(layout.row, fp8_backend, fp8_recipe)


def zero3_model(
    cfg: RunConfig, precision: str, accum_steps: int, device: torch.device
) -> Transformer:
    """ZeRO-3's model, built under deepspeed.zero.Init: each submodule is partitioned as soon
    as it is constructed, so a rank never holds more than one submodule whole; then every
    parameter is gathered once, given its layout-independent initial value, and partitioned
    again (train/model/weights.py)."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # as build_zero_layout, before import
    deepspeed = import_deepspeed()
    # deepspeed.comm adopts the process group torchrun set up (deepspeed.initialize does
    # this later; zero.Init needs it now, or it sees a world of one and rejects the batch).
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    config = deepspeed_config(cfg, 3, precision, cfg.train.micro_batch, accum_steps)
    # Initialised after the context: inside it, tensor constructors are redirected to the
    # accelerator and cast to the engine's dtype, which would change the drawn values.
    with deepspeed.zero.Init(config_dict_or_path=config):
        model = Transformer(cfg.model, init=False)
    init_weights(model, cfg.model, cfg.seed, device)
    return model


def _materialize(model: nn.Module, cfg: RunConfig, device: torch.device) -> None:
    if any(p.is_meta for p in model.parameters()):
        materialize(model, cfg.model, cfg.seed, device)


def _compile_blocks(model: nn.Module, enabled: bool, *, loss: bool = True) -> None:
    # Block by block, in place: module names stay as train/model/transformer.py has them, and a
    # graph break in one block does not cost the others their compilation.
    if enabled:
        for block in model.layers:
            block.compile()
        if loss:
            # The loss too (as the plain-PyTorch anchor, which compiles the whole model): fused,
            # its float32 upcast never copies the logits (docs/gpu-benchmark.md). Not under
            # tensor parallelism, where loss_parallel computes it on vocab-sharded DTensors.
            model.loss_fn = torch.compile(cross_entropy_loss)
