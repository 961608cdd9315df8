"""The layout catalog: one row per parallel layout, saying what it is and what it supports.

Every decision that depends on which layout a run uses reads a row here (how it syncs
gradients, which degrees it may spread over, whether DeepSpeed runs it, and what it cannot
do and why), so a new layout is one row plus its apply function in train/parallel/, and no
other module compares layout names.

Vocabulary (train/spec/degrees.py): world size = pp x dp_replicate x dp_shard x ep x tp; the
mesh is rank-major in that order, TP innermost, so a TP group shares a node, and EP next to
it, so an EP group does too unless parallel.ep asks for more ranks than a node has.
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
    fp8_rowwise = "fp8_rowwise"  # torchao's rowwise scaling
    fp16 = "fp16"
    fp16_on_cpu = "fp16_on_cpu"
    checkpoint = "checkpoint"  # save and resume (checkpoint.every > 0)
    twin = "twin"  # the no-sync twin step (profile.twin)
    offload_optimizer = "offload_optimizer"
    offload_params = "offload_params"
    tied_embeddings = "tied_embeddings"
    moe = "moe"  # a mixture-of-experts model (model.n_experts > 0)


DEGREE_KEYS = ("pp", "dp_replicate", "dp_shard", "ep", "tp")

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
_NO_PIPELINE_FP8_TE = (
    "{name} has no Transformer Engine fp8 inside pipeline stages (not checked: TE's fp8 "
    "autocast would span every microbatch of the schedule's step, with one scaling update for "
    "all of them); use precision.fp8.backend=torchao"
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
_NO_TP_FP8_TE = (
    "{name} with Transformer Engine's fp8 would need TE's own tensor-parallel layers, which are "
    "not wired up; use precision.fp8.backend=torchao (torchao's float8 TP styles)"
)
_NO_TP_FP8_ROWWISE = (
    "{name} runs fp8 through torchao's float8 tensor-parallel styles, which take tensorwise "
    "scaling only; use precision.fp8.recipe=tensorwise"
)
_OFFLOAD_OPTIMIZER = (
    "{name} has no optimizer offload; it is a DeepSpeed option (parallel=zero1, zero2 or zero3)"
)
_OFFLOAD_PARAMS = (
    "{name} has no parameter offload; only parallel=zero3 partitions parameters and can keep "
    "them in host memory"
)
_NO_TP_MOE = (
    "{name} has no tensor-parallel plan for MoE blocks (experts are split by expert "
    "parallelism instead); use parallel=ep or ep_fsdp"
)
_NO_PIPELINE_MOE = (
    "{name} has no MoE blocks inside pipeline stages (not wired up: the routing statistics, "
    "the load-balancing loss and the comm accounting assume one stage); use parallel=ep_fsdp"
)
_NO_DEEPSPEED_MOE = (
    "{name} runs through DeepSpeed, whose engine has not been checked with this MoE model "
    "(DeepSpeed brings its own MoE layer); use parallel=ep, ep_fsdp, fsdp or ddp"
)
_NO_EP_TWIN = (
    "{name} sends tokens to their experts inside every MoE block's forward and backward "
    "(all-to-all); no_sync cannot skip that"
)
_NO_EP_CHECKPOINT = (
    "{name} is not checkpointed yet (saving and resuming expert-split weights through "
    "torch.distributed.checkpoint is not checked); set checkpoint.every=0"
)


@dataclass(frozen=True)
class Layout:
    name: LayoutName
    description: str
    # Degrees this layout may spread over more than one rank; the others must be 1.
    degrees: tuple[str, ...]
    gradient_sync: GradientSync | None  # None: no data-parallel dim (tp alone)
    engine: Engine = Engine.torch
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
    # model's scaling efficiency): the same compute, no communication. None: this layout.
    single_rank: LayoutName | None = None
    # parallel=auto: the degrees to consider at (world size, ranks per node, nodes, tp).
    auto_degrees: Callable[[int, int, int, int], dict[str, int] | None] | None = None

    @property
    def base_layout(self) -> str:
        """single_rank's name: what one rank runs to stand for this layout."""
        return (self.single_rank or self.name).value

    @property
    def tensor_parallel(self) -> bool:
        return "tp" in self.degrees

    @property
    def expert_parallel(self) -> bool:
        """Splits MoE experts over the ep ranks; such a row refuses dense models."""
        return "ep" in self.degrees

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


_NOT_DEEPSPEED = {
    Feature.offload_optimizer: _OFFLOAD_OPTIMIZER,
    Feature.offload_params: _OFFLOAD_PARAMS,
}


def _torch_refusals(**reasons: str) -> dict[Feature, str]:
    """A torch layout's refusals: DeepSpeed's offload options, and ``reasons`` by feature."""
    return {**_NOT_DEEPSPEED, **{Feature[name]: why for name, why in reasons.items()}}


# What each family of torch layouts cannot carry (a table: kept aligned by hand).
# fmt: off
_TENSOR_PARALLEL = _torch_refusals(fp8_te=_NO_TP_FP8_TE, fp8_rowwise=_NO_TP_FP8_ROWWISE,
                                   twin=_NO_TWIN_TP, moe=_NO_TP_MOE)
_EXPERT_PARALLEL = _torch_refusals(twin=_NO_EP_TWIN, checkpoint=_NO_EP_CHECKPOINT)
_PIPELINE = _torch_refusals(moe=_NO_PIPELINE_MOE, fp8_te=_NO_PIPELINE_FP8_TE,
                            fp16=_NO_PIPELINE_FP16, checkpoint=_NO_PIPELINE_CHECKPOINT,
                            twin=_NO_PIPELINE_TWIN, tied_embeddings=_NO_PIPELINE_TIES)
# fmt: on
_ZERO_NO_PP = {
    "pp": "pipeline stages with DeepSpeed ZeRO are not wired up (its engine owns the backward a "
    "pipeline schedule must drive); use parallel=pp or parallel=pp_fsdp"
}
_ZERO_TWIN = {
    1: "{name} is DeepSpeed's engine, which has no switch to skip its gradient reduction",
    2: "{name} is DeepSpeed's engine, which reduces gradients at every micro-step with no "
    "switch to skip it",
    3: "{name} gathers parameters in every forward and backward; DeepSpeed has no switch to "
    "skip its collectives",
}
_FSDP_TWIN = (
    # FSDP2 without sync keeps unsharded gradients and leaves the sharded ones empty, so the
    # twin's optimizer step has nothing to update: its exposed comm is an upper bound.
    "the gradient reduce-scatter and the optimizer update (no sharded gradients to step); "
    "FSDP's parameter all-gathers still run"
)
_HSDP_ONE_NODE = (
    "hsdp shards inside a node and replicates across nodes, and this run has one node: "
    "dp_replicate would be 1, which is plain fsdp. Use parallel=fsdp, or set both degrees to "
    "emulate nodes (e.g. parallel.dp_replicate=2 parallel.dp_shard=1)"
)


def _zero(stage: int) -> Layout:
    refusals = {
        Feature.fp8: _NO_DEEPSPEED_FP8,
        Feature.fp8_te: _NO_DEEPSPEED_FP8,
        Feature.fp16_on_cpu: _NO_DEEPSPEED_FP16_CPU,
        Feature.twin: _ZERO_TWIN[stage],
        Feature.moe: _NO_DEEPSPEED_MOE,
    }
    if stage != 3:
        refusals[Feature.offload_params] = _OFFLOAD_PARAMS
    return Layout(
        LayoutName(f"zero{stage}"),
        f"DeepSpeed ZeRO stage {stage} over every data-parallel rank",
        ("dp_shard",),
        GradientSync.zero,
        engine=Engine.deepspeed,
        zero_stage=stage,
        degree_refusals=_ZERO_NO_PP,
        refusals=refusals,
    )


# parallel=auto's candidates at (world size, ranks per node, nodes, tp): the degrees each row
# proposes (launch/perfmodel/choose.py predicts each and keeps the fastest that fits).
def _auto_ddp(world, per_node, nodes, tp):
    return {"dp_replicate": world}


def _auto_fsdp(world, per_node, nodes, tp):
    return {"dp_shard": world} if world > 1 else None


def _auto_hsdp(world, per_node, nodes, tp):
    return {"dp_replicate": nodes, "dp_shard": per_node} if nodes > 1 and per_node > 1 else None


def _auto_tp(world, per_node, nodes, tp):
    return {"tp": tp} if tp == world else None


def _auto_tp_fsdp(world, per_node, nodes, tp):
    return {"dp_shard": world // tp, "tp": tp} if 1 < tp < world and world % tp == 0 else None


# One row per layout (a table: kept aligned by hand).
# fmt: off
ROWS = (
    Layout(LayoutName.ddp, "DistributedDataParallel: the whole model per rank, gradients "
           "all-reduced", ("dp_replicate",), GradientSync.replicate, refusals=_NOT_DEEPSPEED,
           twin_skips="the gradient all-reduce (all of DDP's step comm)", auto_degrees=_auto_ddp),
    Layout(LayoutName.fsdp, "FSDP2 (fully_shard), one unit per block, over every rank",
           ("dp_shard",), GradientSync.shard, refusals=_NOT_DEEPSPEED, twin_skips=_FSDP_TWIN,
           auto_degrees=_auto_fsdp),
    Layout(LayoutName.hsdp, "FSDP2 on a 2-D mesh: shards inside a node, replicas across nodes",
           ("dp_replicate", "dp_shard"), GradientSync.shard, refusals=_NOT_DEEPSPEED,
           node_split=("dp_replicate", "dp_shard"), one_node_refusal=_HSDP_ONE_NODE,
           twin_skips="the gradient reduce-scatter, the replica all-reduce and the optimizer "
           "update; parameter all-gathers still run", auto_degrees=_auto_hsdp),
    _zero(1),
    _zero(2),
    _zero(3),
    Layout(LayoutName.tp, "tensor parallel (Megatron-style on DTensor) over every rank",
           ("tp",), None, refusals=_TENSOR_PARALLEL, single_rank=LayoutName.ddp,
           auto_degrees=_auto_tp),
    Layout(LayoutName.tp_fsdp, "tensor parallel inside a node, FSDP2 across the rest",
           ("dp_replicate", "dp_shard", "tp"), GradientSync.shard, refusals=_TENSOR_PARALLEL,
           node_split=("dp_shard", "tp"), auto_degrees=_auto_tp_fsdp),
    Layout(LayoutName.pp, "pipeline stages across ranks, DDP within a stage group, optionally "
           "tensor parallel inside each stage (Megatron-LM's 3-D layout)",
           ("pp", "dp_replicate", "tp"), GradientSync.replicate, pipeline=True,
           refusals=_PIPELINE),
    Layout(LayoutName.pp_fsdp, "pipeline stages across ranks, FSDP2 within a stage group, "
           "optionally tensor parallel inside each stage (torchtitan's 3-D layout)",
           ("pp", "dp_shard", "tp"), GradientSync.shard, pipeline=True, refusals=_PIPELINE),
    Layout(LayoutName.ep, "expert parallel: each MoE block's experts split over parallel.ep "
           "ranks (tokens sent by all-to-all), the rest of the model replicated (FSDP2 on a "
           "shard dim of one rank: gradients all-reduced over every data-parallel rank)",
           ("dp_replicate", "ep"), GradientSync.replicate, refusals=_EXPERT_PARALLEL,
           node_split=("dp_replicate", "ep"), single_rank=LayoutName.fsdp),
    Layout(LayoutName.ep_fsdp, "expert parallel inside a node, FSDP2 over the dense parameters "
           "(over the EP ranks too, as torchtitan) and over each expert across the rest",
           ("dp_replicate", "dp_shard", "ep"), GradientSync.shard, refusals=_EXPERT_PARALLEL,
           node_split=("dp_shard", "ep"), single_rank=LayoutName.fsdp),
)
# fmt: on
CATALOG: dict[str, Layout] = {row.name.value: row for row in ROWS}
# Every layout a user can name has its row (parallel=auto is resolved to one of them).
assert set(CATALOG) == {n.value for n in LayoutName} - {LayoutName.auto.value}, "catalog rows"


def rowwise_fp8_refusal(row: Layout, tp: int) -> str | None:
    """Why torchao's rowwise fp8 cannot run under ``row`` at parallel.tp ``tp`` (-1: filled
    in later, so possibly > 1), or None: its float8 tensor-parallel styles take tensorwise
    scaling only, in a TP layout and in TP inside pipeline stages."""
    if row.refusal(Feature.fp8_rowwise):
        return row.refusal(Feature.fp8_rowwise)
    if row.pipeline and tp != 1:
        inside = f"parallel={row.name.value} with TP inside its stages"
        return _NO_TP_FP8_ROWWISE.format(name=inside)
    return None


def layout(name: str) -> Layout:
    """The row of ``name`` (a parallel.name value other than auto)."""
    return CATALOG[str(name)]


def names() -> tuple[str, ...]:
    return tuple(CATALOG)
