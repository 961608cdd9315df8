"""Pipeline parallelism (parallel=pp, pp_fsdp) with torch.distributed.pipelining.

The reference transformer is cut by blocks into ``pp x pp_stages_per_rank`` stages
(train/spec/stages.py: the first stages get one more block when the count is uneven); the
embedding runs on the first stage, the final norm, head and loss on the last. Each stage keeps
its parameters' names (``layers.3.attention.wq``), so every rank initialises them exactly as
one rank would (train/model/weights.py). With parallel.tp > 1 each stage is tensor parallel
over its TP group (train/parallel/tensor_parallel.py; Megatron-LM's and torchtitan's 3-D
layout): stages pass plain tensors (under sequence parallelism each TP rank's 1/tp of the
sequence), and the last stage's loss runs on its vocab/tp logits (vocab_parallel_loss).
Inside a stage group the stage is wrapped in FSDP2 (pp_fsdp, across parallel.dp_shard;
torch's PipelineStage reduces its gradients on the last microbatch's backward only), or
replicated (pp, across parallel.dp_replicate): gradients are all-reduced in flat buckets of
parallel.bucket_mb after the schedule. Not DDP itself: in torch
2.13 a DDP-wrapped stage fails its bucket rebuild ("rebuilt parameter indices size is not same
as original model parameters size"), the first step's shape inference having run a backward of
its own; the price is that the all-reduce does not overlap the backward.

A step is one ``schedule.step``: the schedule runs every microbatch's forward and backward (the
gradient accumulation), scaling gradients by 1/microbatches so they equal the mean loss's, as
train/runtime/rank_step.py's train_step does. The loss exists on the last stage only; it is
summed over the pipeline so every rank returns it (4 bytes, counted as an all-reduce).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining import schedules as torch_schedules
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import loss_parallel

from train.measure.held_memory import (
    HeldMemory,
    optimizer_param_tensors,
    optimizer_state_tensors,
    tensor_bytes,
)
from train.measure.marks import Marks
from train.model.transformer import Transformer
from train.model.weights import materialize
from train.parallel.activation_checkpoint import Checkpointed
from train.parallel.fsdp import mixed_precision_policy
from train.parallel.layout import Layout, adamw, distinct_shards, match_parameter_placements
from train.parallel.mesh import build_mesh, data_parallel_rank
from train.parallel.tensor_parallel import apply_tensor_parallel, shard_embedding_gradient
from train.spec.config import RunConfig
from train.spec.degrees import LayoutPlan
from train.spec.precision import tp_gathers_in_fp8
from train.spec.stages import SINGLE_STAGE, TORCH_SCHEDULES, PipelinePlan


class TransformerStage(nn.Module):
    """A contiguous run of blocks of a Transformer, with the embedding on the first stage and
    the final norm and head on the last. Takes tokens (first stage) or the residual stream;
    returns the stream, or logits (last stage)."""

    def __init__(
        self,
        model: Transformer,
        layer_ids: range,
        *,
        first: bool,
        last: bool,
        sequence_shards: int = 1,
        boundary_mesh: DeviceMesh | None = None,
    ):
        super().__init__()
        # Under sequence parallelism a stage receives its TP rank's 1/tp of the sequence:
        # the rope tables still cover the whole of it (attention gathers the sequence).
        self.sequence_shards = sequence_shards
        # TP without sequence parallelism: Megatron-LM's scatter/gather (Narayanan et al.
        # 2021, section 4.1). The stream between stages is whole on every TP rank; each sends
        # only its 1/tp of the sequence, and the next stage all-gathers it over the TP group
        # (NVLink) before its blocks. Backward mirrors it: the sender all-gathers the
        # gradient's parts. None: the stream crosses whole (no TP) or already split (SP).
        self.boundary_mesh = boundary_mesh
        self.tok_embeddings = model.tok_embeddings if first else None
        # Keyed by the block's index in the whole model, so parameter names match it.
        self.layers = nn.ModuleDict({str(i): model.layers[i] for i in layer_ids})
        self.norm = model.norm if last else None
        self.output = model.output if last else None
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tok_embeddings is not None:
            seq_len, h = x.shape[1], self.tok_embeddings(x)
        else:
            h = self._across_boundary(x, Shard(1), Replicate())  # gathered, if split to send
            seq_len = h.shape[1] * self.sequence_shards
        cos, sin = self.rope_cos[:seq_len], self.rope_sin[:seq_len]
        for layer in self.layers.values():
            h = layer(h, cos, sin)
        if self.output is None:
            return self._across_boundary(h, Replicate(), Shard(1))  # this rank's part to send
        return self.output(self.norm(h))

    def _across_boundary(self, x: torch.Tensor, held, wanted) -> torch.Tensor:
        if self.boundary_mesh is None:
            return x
        placed = DTensor.from_local(x, self.boundary_mesh, (held,), run_check=False)
        return placed.redistribute(placements=(wanted,)).to_local()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss of train/model/transformer.py's Transformer.forward, on the last stage's logits."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def vocab_parallel_loss(tp_mesh: DeviceMesh):
    """The loss on a TP stage's vocab/tp logits (plain tensors, as the schedule passes them),
    wrapped back into the DTensor loss_parallel takes (train/parallel/tensor_parallel.py): no
    gather of the logits. The schedule's step runs under loss_parallel (PipelineLayout)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        sharded = DTensor.from_local(logits, tp_mesh, (Shard(-1),), run_check=False)
        return cross_entropy(sharded, targets)

    return loss


def _quiet_fsdp_view_warning() -> None:
    """torch 2.13's FSDP2 warns, on every forward of a stage whose output is a view, that an
    in-place op on that view would skip its pre-backward hook and "produce wrong gradients".
    A TP last stage's logits are one (DTensor.to_local is a view_as of the local shard), and
    nothing changes them in place: the schedule hands them to vocab_parallel_loss, which wraps
    them in a new DTensor. tests/integration/test_pipeline.py holds pp_fsdp x TP to one rank's
    losses and to the bytes of the formula, so the warning is a false alarm here; a user
    would read it as a broken run. Ignored for that module's message only."""
    warnings.filterwarnings(
        "ignore", message=r"FSDP2-wrapped module \(FSDPTransformerStage\) returned a view"
    )


def _shard_stage(module: nn.Module, mesh, precision: str, reduce_dtype) -> None:
    """pp_fsdp: each block of the stage, then the stage, FSDP2-sharded over ``mesh``. Not
    resharded after forward: gathered once per step, not once per microbatch (the stage keeps
    them gathered until the last microbatch's backward)."""
    policy = mixed_precision_policy(precision, reduce_dtype)
    for block in module.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    fully_shard(module, mesh=mesh, mp_policy=policy, reshard_after_forward=False)


def build_pipeline_layout(
    model: Transformer,
    cfg: RunConfig,
    layout: LayoutPlan,
    precision: str,
    device: torch.device,
    *,
    compile_blocks: bool = False,
    fp8_backend: str | None = None,
) -> PipelineLayout:
    """This rank's stages of ``model`` (on the meta device, from build_model, its fp8 layers
    already swapped in: numerics.prepare_model), materialised, wrapped for their stage group,
    and the schedule that drives them. ``fp8_backend``: the plan's, when precision is fp8
    (torchao only: train/spec/rules.py refuses TE's and the zero-bubble schedules)."""
    if precision == "fp16":  # refused by the rules (train/spec/catalog.py _NO_PIPELINE_FP16)
        raise ValueError(f"precision.name: {precision} is not supported with parallel=pp*")
    plan, degrees = layout.pipeline, layout.degrees
    mesh = build_mesh(degrees, device)
    pp_rank = mesh["pp"].get_local_rank()
    pp_group = mesh["pp"].get_group()
    tp = degrees.tp > 1
    shards = degrees.tp if layout.sequence_parallel else 1
    modules, stages = [], []
    for s in plan.stages_of(pp_rank):
        ids = plan.layer_ids(s)
        last = s == plan.stages - 1
        module = TransformerStage(
            model, ids, first=s == 0, last=last, sequence_shards=shards,
            boundary_mesh=mesh["tp"] if tp and not layout.sequence_parallel else None,
        )  # fmt: skip
        if tp:  # Megatron-LM's 3-D layout: each stage's blocks split over the TP group
            apply_tensor_parallel(
                module,
                mesh["tp"],
                sequence_parallel=layout.sequence_parallel,
                local_logits=True,
                # torchao's float8 styles gather fp8, which gloo cannot carry (as build.py).
                float8=precision == "fp8"
                and tp_gathers_in_fp8(fp8_backend, on_gpu=device.type == "cuda"),
            )
        for i in (i for i in layout.checkpointed if i in ids):
            module.layers[str(i)] = Checkpointed(module.layers[str(i)])
        if compile_blocks:
            for block in module.layers.values():
                block.compile()
        if layout.row.shards_parameters:
            _shard_stage(module, mesh["dp_shard"], precision, cfg.parallel.fsdp_reduce_dtype)
            if tp and last:
                _quiet_fsdp_view_warning()
        materialize(module, cfg.model, cfg.seed, device)
        if tp and not layout.row.shards_parameters:
            shard_embedding_gradient(module)  # after materialising, which replaces parameters
        modules.append(module)
        stages.append(PipelineStage(module, s, plan.stages, device, group=pp_group))
    schedule_class = getattr(torch_schedules, TORCH_SCHEDULES[plan.schedule])
    schedule = schedule_class(
        stages[0] if plan.schedule in SINGLE_STAGE else stages,
        n_microbatches=plan.microbatches,
        loss_fn=vocab_parallel_loss(mesh["tp"]) if tp else cross_entropy,
        scale_grads=True,  # gradients of the mean over microbatches, as the worker's loop
    )
    held = nn.ModuleList(modules)
    return PipelineLayout(
        model=held,
        optimizer=adamw(held, cfg.train, device),
        schedule=schedule,
        plan=plan,
        pp_rank=pp_rank,
        pp_group=pp_group,
        dp_rank=data_parallel_rank(mesh, degrees),
        dp_size=degrees.dp,
        # Ranks holding identical gradients: pp's replicas (FSDP's shards are distinct).
        replicas=degrees.dp_replicate,
        replica_group=mesh["dp_replicate"].get_group() if degrees.dp_replicate > 1 else None,
        bucket_bytes=int(cfg.parallel.bucket_mb * 2**20),
        vocab_parallel=tp,
    )


class PipelineLayout(Layout):
    """This rank's pipeline stages, their optimizer and schedule; runs whole steps."""

    runs_whole_step = True

    def __init__(
        self,
        *,
        model: nn.ModuleList,
        optimizer: torch.optim.Optimizer,
        schedule,
        plan: PipelinePlan,
        pp_rank: int,
        pp_group: dist.ProcessGroup,
        dp_rank: int,
        dp_size: int,
        replicas: int,
        replica_group: dist.ProcessGroup | None = None,
        bucket_bytes: int = 25 * 2**20,
        vocab_parallel: bool = False,
    ):
        self.model, self.optimizer, self.schedule, self.plan = model, optimizer, schedule, plan
        self.pp_rank, self.pp_group = pp_rank, pp_group
        self.dp_rank, self.dp_size, self.replicas = dp_rank, dp_size, replicas
        self.replica_group, self.bucket_bytes = replica_group, bucket_bytes
        local = plan.stages_of(pp_rank)
        self.has_first, self.has_last = 0 in local, plan.stages - 1 in local
        self.pipeline_summary = plan.as_dict()
        self._vocab_parallel = vocab_parallel  # TP stages: the loss on sharded logits

    def loss_context(self):
        return loss_parallel() if self._vocab_parallel else contextlib.nullcontext()

    def train_step(self, micro_batches, precision_plan, device, grad_clip: float, marks: Marks):
        """One optimizer step over this data-parallel rank's rows; the mean loss on every
        rank. The schedule re-splits the rows into plan.microbatches equal microbatches.
        ``marks`` names the phases in a profiler trace (train/measure/marks.py)."""
        inputs = torch.cat([x for x, _ in micro_batches]).to(device, non_blocking=True)
        targets = torch.cat([y for _, y in micro_batches]).to(device, non_blocking=True)
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.has_first else ()
        # The schedule runs each microbatch's loss and its backward inside step().
        with marks("pipeline"), self.autocast(precision_plan, device), self.loss_context():
            # return_outputs=False: the last stage would keep every microbatch's logits (and
            # their concatenation) until the next step, for a caller that reads only losses.
            self.schedule.step(
                *args,
                target=targets if self.has_last else None,
                losses=losses,
                return_outputs=False,
            )
        loss = torch.zeros((), device=device, dtype=torch.float32)
        if self.has_last:
            loss = torch.stack([_local(x).detach().float() for x in losses]).mean()
        if self.plan.pp > 1:  # SUM: only the last stage's is non-zero
            dist.all_reduce(loss, group=self.pp_group)
        with marks("optimizer"):
            self.finish_gradients(grad_clip)
            self.step()
            self.zero_grad()
        return loss

    def finish_gradients(self, max_norm: float) -> None:
        params = [p for p in self.model.parameters() if p.grad is not None]
        match_parameter_placements(params)
        if self.replica_group is not None:
            grads = [_local(p.grad) for p in params]
            average_over_replicas(grads, self.replica_group, self.bucket_bytes)
        self.grad_bytes = tensor_bytes(p.grad for p in params)
        if max_norm > 0:
            clip_pipeline_grad_norm_(params, max_norm, self.plan.pp)

    def held_memory(self) -> HeldMemory:
        """This rank's bytes; also gathers every pipeline rank's into the summary (called
        on every rank at the same point of the run)."""
        params = list(self.model.parameters())
        held = HeldMemory(
            param_bytes=tensor_bytes(params),
            grad_bytes=self.grad_bytes,
            optimizer_state_bytes=tensor_bytes(optimizer_state_tensors(self.optimizer)),
            master_weight_bytes=tensor_bytes(optimizer_param_tensors(self.optimizer), params),
        )
        # On the parameters' device: NCCL gathers CUDA tensors only.
        device = params[0].device if params else torch.device("cpu")
        mine = torch.tensor([held.total_bytes], dtype=torch.int64, device=device)
        everyone = [torch.zeros_like(mine) for _ in range(self.plan.pp)]
        dist.all_gather(everyone, mine, group=self.pp_group)
        self.pipeline_summary = {
            **self.plan.as_dict(),
            # Parameters, gradients, optimizer state of each pipeline rank (its stages).
            "held_bytes_per_pp_rank": [int(t) for t in everyone],
        }
        return held


def average_over_replicas(
    grads: list[torch.Tensor], group: dist.ProcessGroup, bucket_bytes: int
) -> None:
    """Replace each gradient by its mean over the replicas (as DDP): one all-reduce per flat
    bucket of about ``bucket_bytes``, grouped by dtype."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for grad in grads:
        if not buckets or size >= bucket_bytes or buckets[-1][0].dtype != grad.dtype:
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += grad.numel() * grad.element_size()
    replicas = dist.get_world_size(group)
    for bucket in buckets:
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat, group=group)  # SUM: gloo has no AVG
        flat /= replicas
        for grad, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket), strict=True):
            grad.copy_(reduced)


def clip_pipeline_grad_norm_(params: list[nn.Parameter], max_norm: float, pp: int):
    """Clip to the global L2 norm over every stage: one float32 all-reduce over all ranks of
    each rank's weighted sum of squares, then the formula of torch.nn.utils.clip_grad_norm_
    (as train/parallel/layout.py). A stage's parameter lives on world / pp ranks; split into
    k distinct shards (FSDP's, TP's; 1 for a replica's whole copy), each shard is on
    world / (pp k) of them, so its squares are weighted pp k / world and count once."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    device = params[0].device if params else torch.device("cpu")
    squares = torch.zeros((), dtype=torch.float32, device=device)
    for p in params:
        weight = distinct_shards(p.grad) * pp / world
        squares += _local(p.grad).detach().float().pow(2).sum() * weight
    if world > 1:
        dist.all_reduce(squares)
    total_norm = squares.sqrt()
    clip_coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    with torch.no_grad():
        for p in params:
            local = _local(p.grad)
            local.mul_(clip_coef.to(local.dtype))
    return total_norm


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (its storage, so in-place ops reach the DTensor), or the
    tensor itself."""
    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor
