"""Pipeline layouts (pp, pp_fsdp): each rank's stage compute, the schedule's bubble, the
stage-to-stage sends and the memory a stage holds with its in-flight microbatches.

Per pipeline rank r (train/spec/stages.py's plan; its sends from train/spec/traffic.py):

- compute: its blocks (the head too on the rank holding the last stage) over the step's m
  microbatches of rows / m sequences (compute.py);
- sends: its activations forward and gradients back, over NVLink or, between nodes, its NIC
  (collectives.py send_recv). torch's schedules wait for a microbatch's input before its
  compute, so sends are charged in the schedule, not hidden;
- the schedule: m microbatch slots of (compute + sends) / m and the bubble's idle slots,
  b / (m + b) of the schedule (PipelinePlan.predicted_bubble, from the GPipe, 1F1B,
  interleaved and zero-bubble papers), the AdamW step after it; the step is the busiest
  rank's;
- its other collectives (pp: DDP's all-reduce of the stage gradients once per step; pp_fsdp:
  the stage gathered once and reduce-scattered once): exposed (the schedule starts after the
  gather and the step ends with the reduction).

Memory: the stage's parameters, gradients and AdamW state (sharded over dp_shard under
pp_fsdp), plus one microbatch's activations of its blocks times the microbatches in flight on
that rank: GPipe all m (Huang et al. 2019); 1F1B p - r (Narayanan et al. 2021); interleaved
(Megatron-LM's warm-up count, 2(p - r - 1) + (v - 1) p + 1 chunk-microbatches of 1/v of the
stage); zero-bubble V as 1F1B (Qi et al. 2024: the same peak memory).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from launch.perfmodel.compute import (
    RUNTIME_KERNELS,
    ComputeTime,
    Kernels,
    compute_time,
    layout_optimizer_split,
    optimizer_step_s,
    with_sequence_regroups,
)
from launch.perfmodel.fp8 import Fp8Casts
from launch.perfmodel.hardware import PartRates
from launch.perfmodel.memory import (
    ADAM_STEP_BYTES,
    MemoryEstimate,
    activation_bytes,
    usable_bytes,
)
from launch.perfmodel.overlap import CommTime, comm_time
from train.spec import shapes
from train.spec.config import ModelConfig, RunConfig
from train.spec.degrees import LayoutPlan
from train.spec.precision import SIXTEEN_BIT
from train.spec.stages import INTERLEAVED, PipelinePlan
from train.spec.traffic import StepShape, stage_param_shapes, step_collectives


@dataclass(frozen=True)
class StageStep:
    """One pipeline rank's step."""

    pp_rank: int
    compute: ComputeTime
    comm: CommTime
    bubble_s: float

    @property
    def step_s(self) -> float:
        return self.compute.total_s + self.comm.pipeline_s + self.bubble_s + self.comm.exposed_s


def in_flight(plan: PipelinePlan, pp_rank: int) -> float:
    """Microbatches whose activations rank ``pp_rank`` holds at once, in units of its whole
    stage's activations (module docstring)."""
    p, v, m = plan.pp, plan.stages_per_rank, plan.microbatches
    if plan.schedule == "gpipe":
        return float(m)
    if plan.schedule in INTERLEAVED:
        chunks = 2 * (p - pp_rank - 1) + (v - 1) * p + 1
        return min(m * v, chunks) / v
    if plan.schedule == "one_f_one_b":
        return float(min(p - pp_rank, m))
    return float(min(p, m))  # zero_bubble_v


def stage_model(m: ModelConfig, plan: PipelinePlan, pp_rank: int) -> ModelConfig:
    """The model as rank ``pp_rank`` runs it: its blocks only."""
    blocks = sum(plan.layers_per_stage[s] for s in plan.stages_of(pp_rank))
    return dataclasses.replace(m, n_layers=blocks)


def stage_tensors(
    m: ModelConfig, plan: PipelinePlan, pp_rank: int, tp: int = 1
) -> list[tuple[int, ...]]:
    """The parameter shapes rank ``pp_rank`` holds: its stages' blocks, the embedding on the
    first stage's rank, the final norm and head on the last's; TP's shards of them."""
    return [s for stage in plan.stages_of(pp_rank) for s in stage_param_shapes(m, plan, stage, tp)]


def runs_head(plan: PipelinePlan, pp_rank: int) -> bool:
    return plan.stages - 1 in plan.stages_of(pp_rank)


def stage_plan(plan: LayoutPlan, pp_rank: int) -> LayoutPlan:
    """``plan`` as rank ``pp_rank`` sees it: only its own blocks' checkpointing, numbered as
    stage_model numbers its blocks (0 up, in the stages' order). Until 2026-12-01 they kept
    their numbers in the whole model, so every rank but the first counted its checkpointed
    blocks as keeping all their activations."""
    pipe = plan.pipeline
    mine = [i for s in pipe.stages_of(pp_rank) for i in pipe.layer_ids(s)]
    local = [n for n, i in enumerate(mine) if i in set(plan.checkpointed)]
    return dataclasses.replace(plan, checkpointed=local)


def stage_steps(
    cfg: RunConfig,
    plan: LayoutPlan,
    shape: StepShape,
    *,
    nproc_per_node: int,
    precision: str,
    rates: PartRates,
    kernels: Kernels = RUNTIME_KERNELS,
) -> list[StageStep]:
    """Every pipeline rank's step (the step is the slowest)."""
    pipe = plan.pipeline
    rows = shape.micro_batch * shape.accum_steps // pipe.microbatches
    out = []
    for r in range(pipe.pp):
        model = stage_model(cfg.model, pipe, r)
        compute = compute_time(
            model,
            stage_plan(plan, r),
            micro_batch=rows,
            seq_len=shape.seq_len,
            accum_steps=pipe.microbatches,
            precision=precision,
            rates=rates,
            fp8=Fp8Casts.of_run(cfg, plan),
            kernels=kernels,
            head=runs_head(pipe, r),
            compiled=cfg.train.compile,
            stage_params=shapes.numel(stage_tensors(cfg.model, pipe, r, plan.degrees.tp)),
            fsdp_reduce_width=shape.reduce_width,
        )
        collectives = step_collectives(cfg.model, plan, shape, pp_rank=r)
        # TP inside the stage: the sequence-parallel regrouping copies of its collectives.
        compute = with_sequence_regroups(compute, collectives, rows, rates)
        comm = comm_time(
            collectives,
            compute,
            degrees=plan.degrees,
            nproc_per_node=nproc_per_node,
            n_layers=max(1, model.n_layers),
            accum_steps=pipe.microbatches,
            bucket_bytes=int(cfg.parallel.bucket_mb * 2**20),
            rates=rates,
        )
        # The idle slots are the schedule's: its compute and sends, not the AdamW step the
        # rank runs after it (train/parallel/pipeline_stages.py train_step).
        params = shapes.numel(stage_tensors(cfg.model, pipe, r, plan.degrees.tp))
        after = optimizer_step_s(params, layout_optimizer_split(plan), rates)
        scheduled = compute.total_s - after + comm.pipeline_s
        idle = pipe.predicted_bubble / (1 - pipe.predicted_bubble)
        out.append(StageStep(r, compute, comm, scheduled * idle))
    return out


def stage_memory(
    m: ModelConfig, plan: LayoutPlan, shape: StepShape, hbm_bytes: float | None
) -> MemoryEstimate:
    """The busiest pipeline rank's memory (module docstring)."""
    pipe, d, precision = plan.pipeline, plan.degrees, shape.precision
    rows = shape.micro_batch * shape.accum_steps // pipe.microbatches
    shard = d.dp_shard if plan.row.shards_parameters else 1
    width = 2 if precision in SIXTEEN_BIT else 4
    best: MemoryEstimate | None = None
    for r in range(pipe.pp):
        tensors = stage_tensors(m, pipe, r, d.tp)
        local = shapes.numel(tensors, pad_to=shard) // shard
        params = local * 4
        model = stage_model(m, pipe, r)
        # Each in-flight microbatch holds what its blocks saved (a checkpointed block, its
        # input; on the last stage the head's and the loss's log-softmax: GPipe computes every
        # microbatch's loss before any backward); the block a checkpointed backward rebuilds
        # and the loss's backward gradients exist for the one microbatch in backward. Until
        # 2026-12-01 every in-flight microbatch was charged them: Megatron-LM 2021's 1T run
        # (64 stages of 2 blocks, 1F1B) came out at 133 GiB on an 80 GB A100 where it ran.
        mine, head = stage_plan(plan, r), runs_head(pipe, r)
        whole = activation_bytes(model, mine, rows, shape.seq_len, precision, head=head)
        held = activation_bytes(
            model, mine, rows, shape.seq_len, precision, head=head, backward_peak=False
        )
        gathered = shapes.numel(tensors) * width if shard > 1 else 0
        # torch's PipelineStage turns FSDP2's gradient sync off until the last microbatch:
        # the stage's unsharded gradients are kept between them, in the reduce dtype
        # (FSDPParam.to_accumulated_grad_if_needed upcasts a 16-bit one to an fp32 reduce
        # dtype; a bf16 one accumulates as it is).
        kept = shapes.numel(tensors) * shape.reduce_width
        if d.tp > 1 and 0 in pipe.stages_of(r):
            # Under TP, DTensor's embedding backward leaves that gradient whole (Replicate),
            # and FSDP2 accumulates it so until it reduces (_fsdp_param.py
            # to_accumulated_grad_if_needed keeps the DTensor's placement).
            kept += m.vocab_size * m.d_model * (d.tp - 1) // d.tp * shape.reduce_width
        accumulated = kept if shard > 1 and pipe.microbatches > 1 else 0
        buckets = local * 4 if d.dp_replicate > 1 else 0
        estimate = MemoryEstimate(
            param_bytes=params,
            grad_bytes=params,
            optimizer_state_bytes=2 * params + ADAM_STEP_BYTES * len(tensors),
            master_weight_bytes=0,
            activation_bytes=int(held * in_flight(pipe, r) + whole - held),
            transient_bytes=gathered + accumulated + buckets,
            capacity_bytes=usable_bytes(hbm_bytes),
        )
        if best is None or estimate.peak_bytes > best.peak_bytes:
            best = estimate
    return best
