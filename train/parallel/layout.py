"""What the training loop talks to: a model placed on ranks, its optimizer, and the rules for
when gradients are synchronised.

``train_step`` calls, per micro-batch, ``gradient_sync(last=...)``, ``autocast``, ``model(...)``,
``backward(loss)``; then once per step ``finish_gradients(max_norm)``, ``step()`` and
``zero_grad()``. Torch layouts (ddp, fsdp, hsdp, tp, tp_fsdp and one rank alone) share
``TorchLayout``; DeepSpeed's engine, which owns its backward, step, precision and clipping,
has its own (train/parallel/zero.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import loss_parallel

from train.measure.held_memory import (
    HeldMemory,
    optimizer_param_tensors,
    optimizer_state_tensors,
    tensor_bytes,
)
from train.parallel.router_bias import router_bias_update
from train.runtime.numerics import autocast
from train.spec.config import TrainConfig


def adamw(model: nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """The optimizer of every layout (DeepSpeed's too), so layouts compare update for update.

    Built after the model is wrapped: FSDP2 and TP replace parameters with DTensors.
    """
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=train.lr,
        betas=(0.9, 0.95),
        weight_decay=train.weight_decay,
        fused=device.type == "cuda" if train.fused_adamw is None else train.fused_adamw,
    )
    update = router_bias_update(model)
    if update is not None:  # MoE with model.router_bias_update: after every update
        optimizer.register_step_post_hook(lambda *_: update())
    return optimizer


class Layout:
    """Base: the model and optimizer of one rank, and where it sits in the data-parallel split.

    Subclasses set ``model``, ``optimizer``, ``dp_rank``, ``dp_size`` and implement the hooks.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    dp_rank: int
    dp_size: int
    # True when the engine scales fp16 losses itself, so the loop must not add a GradScaler.
    scales_loss: bool = False
    grad_bytes: int = 0  # noted by finish_gradients, the moment every gradient exists
    # True when the layout runs a whole step itself (``train_step``): a pipeline's schedule
    # drives every micro-batch's forward and backward (train/parallel/pipeline_stages.py).
    runs_whole_step: bool = False
    # pp layouts: summary.json's ``pipeline`` (schedule, stages, bubble, memory per stage).
    pipeline_summary: dict | None = None

    def autocast(self, plan, device: torch.device) -> AbstractContextManager:
        return autocast(plan, device)

    def gradient_sync(self, *, last: bool, sync: bool = True) -> AbstractContextManager:
        """Context for one micro-step: ``last`` on the step's last, where gradients are all
        reduced; ``sync=False`` (the no-sync twin) reduces nothing on any."""
        return contextlib.nullcontext()

    def loss_context(self) -> AbstractContextManager:
        """Around a micro-step's forward and backward: the loss over logits that TP leaves
        sharded over the vocabulary runs under loss_parallel (train/parallel/tensor_parallel.py)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def finish_gradients(self, max_norm: float) -> None:
        raise NotImplementedError

    def step(self) -> None:
        self.optimizer.step()

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def held_memory(self) -> HeldMemory:
        raise NotImplementedError


class TorchLayout(Layout):
    """A torch-wrapped model (DDP, FSDP2, DTensor TP, or none) with a torch optimizer."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        dp_rank: int,
        dp_size: int,
        no_sync: Callable[[], AbstractContextManager] | None = None,
        *,
        accumulate: Callable[[], AbstractContextManager] | None = None,
        after_step: Callable[[], None] | None = None,
        vocab_parallel: bool = False,
    ):
        self.model, self.optimizer = model, optimizer
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self._no_sync = no_sync  # skips every gradient reduction of a micro-step
        # A non-final micro-step of a synced step, where that differs from no_sync (FSDP2:
        # reduce-scatter each micro-step, so unsharded gradients never pile up; default:
        # no_sync, as DDP accumulates its whole gradients anyway).
        self._accumulate = accumulate or no_sync
        self._after_step = after_step  # e.g. torchao's fp8 scales for FSDP's fp8 all-gather
        self._vocab_parallel = vocab_parallel  # TP: logits sharded over the vocabulary

    def loss_context(self) -> AbstractContextManager:
        return loss_parallel() if self._vocab_parallel else contextlib.nullcontext()

    def step(self) -> None:
        self.optimizer.step()
        if self._after_step is not None:
            self._after_step()

    def gradient_sync(self, *, last: bool, sync: bool = True) -> AbstractContextManager:
        context = self._no_sync if not sync else None if last else self._accumulate
        return context() if context is not None else contextlib.nullcontext()

    def finish_gradients(self, max_norm: float) -> None:
        params = [p for p in self.model.parameters() if p.grad is not None]
        match_parameter_placements(params)
        self.grad_bytes = tensor_bytes(p.grad for p in params)
        if max_norm > 0:
            clip_grad_norm_(params, max_norm)

    def held_memory(self) -> HeldMemory:
        params = list(self.model.parameters())
        return HeldMemory(
            param_bytes=tensor_bytes(params),
            grad_bytes=self.grad_bytes,
            optimizer_state_bytes=tensor_bytes(optimizer_state_tensors(self.optimizer)),
            # A torch optimizer steps the model's own parameters: no separate master copy.
            master_weight_bytes=tensor_bytes(optimizer_param_tensors(self.optimizer), params),
        )


def match_parameter_placements(params: Iterable[nn.Parameter]) -> None:
    """Bring each DTensor gradient to its parameter's own placement.

    Under sequence parallelism a norm's weight is replicated but each rank saw only its part of
    the sequence, so its gradient is Partial: one all-reduce of the weight per norm, once per
    step rather than per micro-step. A gradient left whole (Replicate) where its parameter is
    sharded (the row-wise embedding's, which DTensor's backward leaves so; tensor_parallel.py
    shard_embedding_gradient usually cuts it already) becomes this rank's shard without any
    communication, before a pipeline's replicas all-reduce it.
    """
    for p in params:
        if isinstance(p.grad, DTensor) and p.grad.placements != p.placements:
            p.grad = p.grad.redistribute(placements=p.placements)


def clip_grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale gradients so their global L2 norm is at most ``max_norm``; return that norm.

    The norm covers the whole model whatever the layout, with at most one all-reduce of a
    float32 scalar: each rank adds the squares of what it holds, weighted so that copies held
    by several ranks count once. A DTensor split into k distinct shards has each shard on
    world/k ranks, so its local sum of squares is weighted k/world before the sum over ranks;
    a replicated gradient (every DDP gradient, or TP's norms and embeddings) is counted from
    the local copy alone. No all-reduce when nothing is sharded (DDP, one rank).
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    grads = [p.grad for p in params]
    device = grads[0].device if grads else torch.device("cpu")
    replicated_sq = torch.zeros((), dtype=torch.float32, device=device)
    sharded_sq = torch.zeros((), dtype=torch.float32, device=device)
    local = [(g.to_local() if isinstance(g, DTensor) else g).detach() for g in grads]
    # One multi-tensor kernel per pass, as torch's own clip: a pow, a sum and a mul_ per
    # tensor took 11.3 ms and 880 kernels of a gpt_1_3b step on an H100 (docs/gpu-benchmark.md).
    norms = torch._foreach_norm(local, 2, dtype=torch.float32) if local else []
    by_shards: dict[int, list[torch.Tensor]] = {}
    for grad, norm in zip(grads, norms, strict=True):
        by_shards.setdefault(distinct_shards(grad), []).append(norm)
    for shards, group in by_shards.items():
        sq = torch.stack(group).pow(2).sum()
        if shards == 1:
            replicated_sq += sq
        else:
            sharded_sq += sq * (shards / world)
    if any(shards > 1 for shards in by_shards):
        dist.all_reduce(sharded_sq)
    total_norm = (replicated_sq + sharded_sq).sqrt()
    # Same formula as torch.nn.utils.clip_grad_norm_, so one rank matches it step for step.
    clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    if local:
        with torch.no_grad():
            torch._foreach_mul_(local, clip_coef)
    return total_norm


def distinct_shards(tensor: torch.Tensor) -> int:
    if not isinstance(tensor, DTensor):
        return 1
    shards = 1
    for dim, placement in enumerate(tensor.placements):
        # Neither replicated nor partial means split along this mesh dim: Shard, and also
        # FSDP2's _StridedShard under TP, whose is_shard() is False.
        if not placement.is_replicate() and not placement.is_partial():
            shards *= tensor.device_mesh.size(dim)
    return shards
