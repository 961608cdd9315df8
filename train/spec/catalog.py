"""The layout catalog: one row per parallel layout, saying what it is and what it supports.

Every decision that depends on which layout a run uses reads a row here (how it syncs
gradients, which degrees it may spread over, whether DeepSpeed runs it, and what it cannot
do and why), so a new layout is one row plus its apply function in train/parallel/, and no
other module compares layout names.

Vocabulary (train/spec/degrees.py): world size = pp x dp_replicate x dp_shard x tp; the mesh
is rank-major in that order, TP innermost, so a TP group shares a node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from train.spec.config import LayoutName


class Engine(str, Enum):
    torch = "torch"  # torch's wrappers (DDP, FSDP2, DTensor TP, pipelining) + torch AdamW
    deepspeed = "deepspeed"  # DeepSpeed's engine owns backward, step, precision and clipping


class GradientSync(str, Enum):
    """How the data-parallel ranks agree on gradients."""

    replicate = "replicate"  # DDP: whole model per rank, gradients all-reduced in buckets
    shard = "shard"  # FSDP2: units gathered when used, gradients reduce-scattered
    zero = "zero"  # DeepSpeed ZeRO: its stage decides what is partitioned


class Feature(str, Enum):
    """What a run may ask of its layout; a row refuses the ones it cannot carry, with why."""

    fp8 = "fp8"  # any fp8 backend
    fp8_te = "fp8_te"  # Transformer Engine's fp8 layers
    fp16 = "fp16"
    fp16_on_cpu = "fp16_on_cpu"
    checkpoint = "checkpoint"  # save and resume (checkpoint.every > 0)
    twin = "twin"  # the no-sync twin step (profile.twin)
    offload_optimizer = "offload_optimizer"
    offload_params = "offload_params"
    tied_embeddings = "tied_embeddings"


DEGREE_KEYS = ("pp", "dp_replicate", "dp_shard", "tp")

# Each reason starts with the layout ("{name}" becomes "parallel=<name>"), so it reads the same
# after "fp8 skipped: " (precision=auto) and after "precision.name: fp8: " (a refused request).
_NO_TWIN_TP = (
    "{name} moves activations inside every block's forward and backward (tensor parallel); "
    "no_sync cannot skip that"
)
_NO_PIPELINE_CHECKPOINT = (
    "{name} is not checkpointed yet (a pipeline's per-stage optimizer state does not resume "
    "through torch.distributed.checkpoint); set checkpoint.every=0"
)
_NO_PIPELINE_TWIN = (
    "{name} reduces gradients inside its schedule, so the no-sync twin step is not defined "
    "for it; use profile.enabled alone"
)
_NO_PIPELINE_FP8 = (
    "{name} has no fp8 inside pipeline stages (not wired up: the zero-bubble schedules split "
    "backward into input and weight parts, which fp8 linears have not been checked under); "
    "use bf16"
)
_NO_PIPELINE_FP16 = (
    "{name} would have to scale the fp16 loss inside the schedule's backward, which is not "
    "wired up; use bf16"
)
_NO_PIPELINE_TIES = (
    "{name} puts the embedding on the first stage and the head on the last; the gradient of a "
    "matrix tied across stages is not wired up"
)
_NO_DEEPSPEED_FP8 = (
    "{name} runs through DeepSpeed, which has no fp8 (its engine runs fp32, bf16 or fp16); "
    "use bf16, or fp8 with parallel=fsdp"
)
_NO_DEEPSPEED_FP16_CPU = (
    "{name} runs through DeepSpeed, whose CPU accelerator has no fp16; use bf16 or fp32"
)
_NO_TP_FP8 = (
    "{name} needs fp8-aware tensor-parallel plans, which are not wired up; use bf16, or fp8 "
    "with parallel=ddp or fsdp"
)
_OFFLOAD_OPTIMIZER = (
    "{name} has no optimizer offload; it is a DeepSpeed option (parallel=zero1, zero2 or zero3)"
)
_OFFLOAD_PARAMS = (
    "{name} has no parameter offload; only parallel=zero3 partitions parameters and can keep "
    "them in host memory"
)


@dataclass(frozen=True)
class Layout:
    name: LayoutName
    description: str
    engine: Engine
    # Degrees this layout may spread over more than one rank; the others must be 1.
    degrees: tuple[str, ...]
    gradient_sync: GradientSync | None  # None: no data-parallel dim (tp alone)
    zero_stage: int | None = None
    pipeline: bool = False
    # The two degrees that follow the node boundary when both are -1: (across nodes, inside a
    # node). That is where NVLink stops and the NIC starts.
    node_split: tuple[str, str] | None = None
    # Why both node-split degrees at -1 cannot run on one node (None: they can).
    one_node_refusal: str | None = None
    # Why the layout cannot take a degree, where "only spreads over ..." would not say.
    degree_refusals: dict[str, str] = field(default_factory=dict)
    refusals: dict[Feature, str] = field(default_factory=dict)
    # What the no-sync twin (profile.twin) removes from a step of this layout.
    twin_skips: str = "gradient synchronisation"
    # The layout one rank runs to stand for this one in a single-device base (the performance
    # model's scaling efficiency): the same compute, no communication.
    single_rank: LayoutName | None = None
    # parallel=auto: the degrees to consider at (world size, ranks per node, nodes, tp).
    auto_degrees: Callable[[int, int, int, int], dict[str, int] | None] | None = None

    @property
    def tensor_parallel(self) -> bool:
        return "tp" in self.degrees

    @property
    def shards_parameters(self) -> bool:
        """FSDP2 units: parameters gathered in the compute dtype when used."""
        return self.gradient_sync is GradientSync.shard

    @property
    def deepspeed(self) -> bool:
        return self.engine is Engine.deepspeed

    def refusal(self, feature: Feature) -> str | None:
        """Why this layout cannot carry ``feature``, or None when it can."""
        reason = self.refusals.get(feature)
        return reason.format(name=f"parallel={self.name.value}") if reason else None

    def optimizer_split(self, dp_shard: int) -> int:
        """Ranks the optimizer step is split over (sharded layouts step their shard)."""
        return dp_shard if self.gradient_sync in (GradientSync.shard, GradientSync.zero) else 1


def _zero(stage: int, twin: str) -> Layout:
    refusals = {
        Feature.fp8: _NO_DEEPSPEED_FP8,
        Feature.fp8_te: _NO_DEEPSPEED_FP8,
        Feature.fp16_on_cpu: _NO_DEEPSPEED_FP16_CPU,
        Feature.twin: twin,
    }
    if stage != 3:
        refusals[Feature.offload_params] = _OFFLOAD_PARAMS
    return Layout(
        name=LayoutName(f"zero{stage}"),
        description=f"DeepSpeed ZeRO stage {stage} over every data-parallel rank",
        engine=Engine.deepspeed,
        degrees=("dp_shard",),
        gradient_sync=GradientSync.zero,
        zero_stage=stage,
        degree_refusals={
            "pp": "pipeline stages with DeepSpeed ZeRO are not wired up (its engine owns the "
            "backward a pipeline schedule must drive); use parallel=pp or parallel=pp_fsdp"
        },
        refusals=refusals,
        single_rank=LayoutName(f"zero{stage}"),
    )


def _pipeline(name: LayoutName, inner: GradientSync, within: str) -> Layout:
    return Layout(
        name=name,
        description=f"pipeline stages across ranks, {within} within a stage group",
        engine=Engine.torch,
        degrees=("pp", "dp_replicate" if inner is GradientSync.replicate else "dp_shard"),
        gradient_sync=inner,
        pipeline=True,
        degree_refusals={
            "tp": "tensor parallel inside a pipeline stage is not wired up (the stage boundary "
            "would carry DTensor activations); use parallel=tp_fsdp or pp alone"
        },
        refusals={
            Feature.fp8: _NO_PIPELINE_FP8,
            Feature.fp8_te: _NO_PIPELINE_FP8,
            Feature.fp16: _NO_PIPELINE_FP16,
            Feature.checkpoint: _NO_PIPELINE_CHECKPOINT,
            Feature.twin: _NO_PIPELINE_TWIN,
            Feature.tied_embeddings: _NO_PIPELINE_TIES,
            Feature.offload_optimizer: _OFFLOAD_OPTIMIZER,
            Feature.offload_params: _OFFLOAD_PARAMS,
        },
        single_rank=name,
    )


_NOT_DEEPSPEED = {
    Feature.offload_optimizer: _OFFLOAD_OPTIMIZER,
    Feature.offload_params: _OFFLOAD_PARAMS,
}
_TENSOR_PARALLEL = {
    **_NOT_DEEPSPEED,
    Feature.fp8: _NO_TP_FP8,
    Feature.fp8_te: _NO_TP_FP8,
    Feature.twin: _NO_TWIN_TP,
}

ROWS = (
    Layout(
        name=LayoutName.ddp,
        description="DistributedDataParallel: the whole model per rank, gradients all-reduced",
        engine=Engine.torch,
        degrees=("dp_replicate",),
        gradient_sync=GradientSync.replicate,
        refusals=_NOT_DEEPSPEED,
        twin_skips="the gradient all-reduce (all of DDP's step comm)",
        single_rank=LayoutName.ddp,
        auto_degrees=lambda world, per_node, nodes, tp: {"dp_replicate": world},
    ),
    Layout(
        name=LayoutName.fsdp,
        description="FSDP2 (fully_shard), one unit per block, over every rank",
        engine=Engine.torch,
        degrees=("dp_shard",),
        gradient_sync=GradientSync.shard,
        refusals=_NOT_DEEPSPEED,
        # FSDP2 without sync keeps unsharded gradients and leaves the sharded ones empty, so
        # the twin's optimizer step has nothing to update: its exposed comm is an upper bound.
        twin_skips="the gradient reduce-scatter and the optimizer update (no sharded gradients "
        "to step); FSDP's parameter all-gathers still run",
        single_rank=LayoutName.fsdp,
        auto_degrees=lambda world, per_node, nodes, tp: {"dp_shard": world} if world > 1 else None,
    ),
    Layout(
        name=LayoutName.hsdp,
        description="FSDP2 on a 2-D mesh: shards inside a node, replicas across nodes",
        engine=Engine.torch,
        degrees=("dp_replicate", "dp_shard"),
        gradient_sync=GradientSync.shard,
        node_split=("dp_replicate", "dp_shard"),
        one_node_refusal="hsdp shards inside a node and replicates across nodes, and this run "
        "has one node: dp_replicate would be 1, which is plain fsdp. Use parallel=fsdp, or set "
        "both degrees to emulate nodes (e.g. parallel.dp_replicate=2 parallel.dp_shard=1)",
        refusals=_NOT_DEEPSPEED,
        twin_skips="the gradient reduce-scatter, the replica all-reduce and the optimizer "
        "update; parameter all-gathers still run",
        single_rank=LayoutName.hsdp,
        auto_degrees=lambda world, per_node, nodes, tp: (
            {"dp_replicate": nodes, "dp_shard": per_node} if nodes > 1 and per_node > 1 else None
        ),
    ),
    _zero(1, "zero1 is DeepSpeed's engine, which has no switch to skip its gradient reduction"),
    _zero(
        2,
        "zero2 is DeepSpeed's engine, which reduces gradients at every micro-step with no "
        "switch to skip it",
    ),
    _zero(
        3,
        "zero3 gathers parameters in every forward and backward; DeepSpeed has no switch to "
        "skip its collectives",
    ),
    Layout(
        name=LayoutName.tp,
        description="tensor parallel (Megatron-style on DTensor) over every rank",
        engine=Engine.torch,
        degrees=("tp",),
        gradient_sync=None,
        refusals=_TENSOR_PARALLEL,
        single_rank=LayoutName.ddp,
        auto_degrees=lambda world, per_node, nodes, tp: {"tp": tp} if tp == world else None,
    ),
    Layout(
        name=LayoutName.tp_fsdp,
        description="tensor parallel inside a node, FSDP2 across the rest",
        engine=Engine.torch,
        degrees=("dp_replicate", "dp_shard", "tp"),
        gradient_sync=GradientSync.shard,
        node_split=("dp_shard", "tp"),
        refusals=_TENSOR_PARALLEL,
        single_rank=LayoutName.tp_fsdp,
        auto_degrees=lambda world, per_node, nodes, tp: (
            {"dp_shard": world // tp, "tp": tp} if 1 < tp < world and world % tp == 0 else None
        ),
    ),
    _pipeline(LayoutName.pp, GradientSync.replicate, "DDP"),
    _pipeline(LayoutName.pp_fsdp, GradientSync.shard, "FSDP2"),
)
CATALOG: dict[str, Layout] = {row.name.value: row for row in ROWS}
# Every layout a user can name has its row (parallel=auto is resolved to one of them).
assert set(CATALOG) == {n.value for n in LayoutName} - {LayoutName.auto.value}, "catalog rows"


def layout(name: str) -> Layout:
    """The row of ``name`` (a parallel.name value other than auto)."""
    return CATALOG[str(name)]


def names() -> tuple[str, ...]:
    return tuple(CATALOG)
