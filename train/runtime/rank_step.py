"""One optimizer step of a rank, and what comes around it: drawing its rows, reducing its loss.

``RankSteps`` binds the step to a run (train/runtime/rank_setup.py). The timed loop
(train/runtime/loop.py) and the profiled and twin windows (train/measure/profiling.py) call the
same object, so the step that is profiled is the step that is timed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from train.measure.marks import Marks, no_marks
from train.measure.routing import routing_record
from train.model.moe import take_routing_stats
from train.parallel.layout import Layout
from train.runtime.data import SyntheticTokens, TokenFile, draw_rank_batches
from train.spec.precision import PrecisionPlan

Batches = list[tuple[torch.Tensor, torch.Tensor]]  # (inputs, targets) per micro-step


def train_step(
    layout: Layout,
    scaler: torch.amp.GradScaler | None,
    micro_batches: Batches,
    accum_steps: int,
    plan: PrecisionPlan,
    device: torch.device,
    grad_clip: float,
    *,
    sync: bool = True,
    marks: Marks = no_marks,
) -> torch.Tensor:
    """One optimizer step over accum_steps micro-batches; returns the mean loss (a tensor).

    ``sync=False`` is the no-sync twin (train/measure/profiling.py): gradients are never reduced.
    ``marks`` names the phases in a profiler trace; the timed steps leave it at ``no_marks``.
    """
    if layout.runs_whole_step:  # a pipeline: its schedule runs every micro-batch
        return layout.train_step(micro_batches, plan, device, grad_clip, marks)
    loss_sum = torch.zeros((), device=device)
    for i, (inputs, targets) in enumerate(micro_batches):
        # DDP reduces gradients on the last micro-step; FSDP2 reduce-scatters each one and
        # all-reduces across HSDP's replicas on the last (train/parallel/fsdp.py).
        last = i == accum_steps - 1
        with layout.gradient_sync(last=last, sync=sync), layout.loss_context():
            with marks("forward"), layout.autocast(plan, device):
                loss = layout.model(
                    inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                )
            scaled = loss / accum_steps
            with marks("backward"):
                layout.backward(scaler.scale(scaled) if scaler else scaled)
        # A vocab-parallel loss is a replicated DTensor: its local value is the loss.
        loss_sum += loss.detach().to_local() if isinstance(loss, DTensor) else loss.detach()
    with marks("optimizer"):
        if scaler:
            scaler.unscale_(layout.optimizer)
        layout.finish_gradients(grad_clip)  # clips to grad_clip (0: off), notes gradient bytes
        if scaler:
            scaler.step(layout.optimizer)  # skips the update when the gradients overflowed
            scaler.update()
        else:
            layout.step()
        layout.zero_grad()
    return loss_sum / accum_steps


def mean_over_ranks(value: torch.Tensor) -> float:
    """The loss every rank logs: the mean over ranks (a collective; also waits for the device)."""
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)  # SUM: gloo has no AVG
        value /= dist.get_world_size()
    return float(value)


@dataclass(frozen=True)
class RankSteps:
    """This rank's step bound to its run: what the loop and the profiler call."""

    layout: Layout
    scaler: torch.amp.GradScaler | None  # fp16 without an engine that scales losses itself
    plan: PrecisionPlan
    device: torch.device
    data: SyntheticTokens | TokenFile
    micro_batch: int
    accum_steps: int
    grad_clip: float

    def draw(self, step: int) -> Batches:
        """This rank's rows of ``step`` only, on the host (pinned for a CUDA device)."""
        return draw_rank_batches(
            self.data,
            step,
            dp_rank=self.layout.dp_rank,
            dp_size=self.layout.dp_size,
            micro_batch=self.micro_batch,
            accum_steps=self.accum_steps,
            pin=self.device.type == "cuda",
        )

    def step(self, batches: Batches, *, sync: bool = True, marks: Marks = no_marks):
        # train_step is looked up in this module at each call: tests substitute a counting one.
        return train_step(
            self.layout,
            self.scaler,
            batches,
            self.accum_steps,
            self.plan,
            self.device,
            self.grad_clip,
            sync=sync,
            marks=marks,
        )

    def reduce_loss(self, loss: torch.Tensor) -> float:
        return mean_over_ranks(loss)

    def routing(self) -> dict | None:
        """MoE: how the steps since the last call routed, summed over every rank (one
        all-reduce: the loop calls it after a step's clock stops); None for a dense model."""
        stats = take_routing_stats(self.layout.model, self.device)
        if stats is None:
            return None
        if dist.is_initialized():
            dist.all_reduce(stats)
        return routing_record(stats.tolist())
