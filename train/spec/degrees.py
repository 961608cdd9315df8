"""The layout a config asks for, as numbers: world size = pp x dp_replicate x dp_shard x tp
(-1 means "the rest"), which blocks are checkpointed, and whether the model can be split so.

Pure arithmetic on the config (no torch), used by the driver (validation, before any rank
starts) and by the ranks (to build the device mesh), so the two never disagree; LayoutError
names the config key at fault and the driver turns it into a one-line ConfigError.
"""

from __future__ import annotations

from dataclasses import dataclass

from train.spec.config import ModelConfig, ParallelConfig, RunConfig
from train.spec.stages import PipelinePlan, plan_pipeline

LAYOUTS = ("ddp", "fsdp", "hsdp", "zero1", "zero2", "zero3", "tp", "tp_fsdp", "pp", "pp_fsdp")
PIPELINE_LAYOUTS = ("pp", "pp_fsdp")
ZERO_STAGES = {"zero1": 1, "zero2": 2, "zero3": 3}
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")
DEGREE_KEYS = ("pp", "dp_replicate", "dp_shard", "tp")
# ZeRO-3 keeps a gathered parameter for reuse when it comes back within this many elements
# (DeepSpeed's default, pinned in train/parallel/zero.py because train/spec/traffic.py models it:
# below it the forward's all-gather also serves backward). Here, not in zero.py, so that the
# comm volume and the performance model read it without importing torch.
ZERO3_MAX_REUSE_DISTANCE = 1_000_000_000

# The degrees each layout may spread over more than one rank; the others must be 1. ZeRO
# partitions over every data-parallel rank, which is dp_shard in this vocabulary.
FREE_DEGREES = {
    "ddp": ("dp_replicate",),
    "fsdp": ("dp_shard",),
    "hsdp": ("dp_replicate", "dp_shard"),
    "zero1": ("dp_shard",),
    "zero2": ("dp_shard",),
    "zero3": ("dp_shard",),
    "tp": ("tp",),
    "tp_fsdp": ("dp_replicate", "dp_shard", "tp"),
    # Pipeline stages, and inside a stage group DDP (pp) or FSDP2 (pp_fsdp).
    "pp": ("pp", "dp_replicate"),
    "pp_fsdp": ("pp", "dp_shard"),
}
# Why a layout cannot take a degree, where "only spreads over ..." would not say.
DEGREE_REFUSALS = {
    **{
        (z, "pp"): "pipeline stages with DeepSpeed ZeRO are not wired up (its engine owns the "
        "backward a pipeline schedule must drive); use parallel=pp or parallel=pp_fsdp"
        for z in ZERO_STAGES
    },
    **{
        (name, "tp"): "tensor parallel inside a pipeline stage is not wired up (the stage "
        "boundary would carry DTensor activations); use parallel=tp_fsdp or pp alone"
        for name in PIPELINE_LAYOUTS
    },
}


class LayoutError(ValueError):
    """A layout the world size or the model cannot take; names the config key at fault."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@dataclass(frozen=True)
class Degrees:
    dp_replicate: int  # model replicas; gradients all-reduced between them
    dp_shard: int  # ranks that split parameters, gradients and optimizer state (FSDP/ZeRO)
    tp: int  # ranks that split each layer's matmuls (tensor parallel)
    pp: int = 1  # pipeline stage groups (outermost): each holds a contiguous run of blocks

    @property
    def dp(self) -> int:
        """Data-parallel size: how many ways each step's global batch is split."""
        return self.dp_replicate * self.dp_shard

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp


def resolve_degrees(p: ParallelConfig, world_size: int, nproc_per_node: int) -> Degrees:
    """The degrees of layout ``p.name`` at this world size; LayoutError when they cannot be.

    One degree may be -1 ("the rest of the world size"). Two layouts may leave two degrees at
    -1 and then follow the node boundary, because that is where NVLink stops and the NIC starts:
    hsdp shards inside a node and replicates across nodes (dp_shard = ranks per node,
    dp_replicate = nodes), so only an all-reduce of a shard crosses the network; tp_fsdp runs
    tensor parallel inside a node and FSDP across nodes (tp = ranks per node, dp_shard = nodes).
    """
    if p.name not in FREE_DEGREES:
        raise LayoutError("parallel.name", f"{p.name!r} is not one of: {', '.join(LAYOUTS)}")
    values = {key: getattr(p, key) for key in DEGREE_KEYS}
    for key, value in values.items():
        if value == 0 or value < -1:
            raise LayoutError(f"parallel.{key}", f"{value}: must be >= 1, or -1 for the rest")
        if value != 1 and (p.name, key) in DEGREE_REFUSALS:
            raise LayoutError(f"parallel.{key}", f"{value}: {DEGREE_REFUSALS[p.name, key]}")
        if value != 1 and key not in FREE_DEGREES[p.name]:
            raise LayoutError(
                f"parallel.{key}",
                f"{value}: parallel={p.name} only spreads over "
                f"{' and '.join(FREE_DEGREES[p.name])}; {key} must be 1",
            )
    rest = [key for key, value in values.items() if value == -1]
    nodes = max(1, world_size // nproc_per_node)
    if p.name == "hsdp" and rest == ["dp_replicate", "dp_shard"]:
        if nodes == 1 and world_size > 1:
            raise LayoutError(
                "parallel.dp_replicate",
                "hsdp shards inside a node and replicates across nodes, and this run has one "
                "node: dp_replicate would be 1, which is plain fsdp. Use parallel=fsdp, or set "
                "both degrees to emulate nodes (e.g. parallel.dp_replicate=2 "
                "parallel.dp_shard=1)",
            )
        values.update(dp_replicate=nodes, dp_shard=world_size // nodes)
    elif p.name == "tp_fsdp" and rest == ["dp_shard", "tp"]:
        values.update(dp_shard=nodes, tp=world_size // nodes)
    elif len(rest) > 1:
        raise LayoutError(
            f"parallel.{rest[-1]}", f"only one of {', '.join(rest)} may be -1 (the rest)"
        )
    elif rest:
        fixed = _product(v for k, v in values.items() if k != rest[0])
        if world_size % fixed:
            raise LayoutError(
                f"parallel.{rest[0]}",
                f"-1 (the rest) is world size {world_size} / {fixed}, not a whole number",
            )
        values[rest[0]] = world_size // fixed
    degrees = Degrees(**values)
    if degrees.world != world_size:
        key = next((k for k in reversed(DEGREE_KEYS) if values[k] > 1), "dp_replicate")
        raise LayoutError(
            f"parallel.{key}",
            (f"pp {degrees.pp} x " if degrees.pp != 1 else "")
            + f"dp_replicate {degrees.dp_replicate} x dp_shard {degrees.dp_shard} x tp "
            f"{degrees.tp} = {degrees.world}, but the world size is {world_size}",
        )
    return degrees


@dataclass(frozen=True)
class LayoutPlan:
    """What a config asks of the layout, known before any rank builds it (summary.json)."""

    name: str
    degrees: Degrees
    sequence_parallel: bool
    checkpointed: list[int]  # block indices under activation checkpointing
    pipeline: PipelinePlan | None = None  # pp, pp_fsdp: stages, schedule, microbatches

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "pp": self.degrees.pp,
            "dp_replicate": self.degrees.dp_replicate,
            "dp_shard": self.degrees.dp_shard,
            "tp": self.degrees.tp,
            "sequence_parallel": self.sequence_parallel and self.degrees.tp > 1,
            "checkpointed_layers": len(self.checkpointed),
        }


def plan_layout(cfg: RunConfig, world_size: int, nproc_per_node: int) -> LayoutPlan:
    """The layout ``cfg`` asks for at this world size; LayoutError naming the key if none."""
    p = cfg.parallel
    degrees = resolve_degrees(p, world_size, nproc_per_node)
    if p.activation_checkpoint not in ACTIVATION_CHECKPOINTING:
        raise LayoutError(
            "parallel.activation_checkpoint",
            f"{p.activation_checkpoint!r} is not one of: {', '.join(ACTIVATION_CHECKPOINTING)}",
        )
    if p.checkpoint_every < 1:
        raise LayoutError("parallel.checkpoint_every", f"{p.checkpoint_every}: must be >= 1")
    if p.sequence_parallel and "tp" not in FREE_DEGREES[p.name]:
        raise LayoutError(
            "parallel.sequence_parallel",
            f"splits tensor-parallel groups; parallel={p.name} has none",
        )
    if degrees.tp > 1:
        check_tensor_parallel(cfg.model, degrees.tp, cfg.train.seq_len, p.sequence_parallel)
    if p.offload_optimizer and p.name not in ZERO_STAGES:
        raise LayoutError(
            "parallel.offload_optimizer",
            f"parallel={p.name} has no optimizer offload; it is a DeepSpeed option "
            "(parallel=zero1, zero2 or zero3)",
        )
    if p.offload_params and p.name != "zero3":
        raise LayoutError(
            "parallel.offload_params",
            f"parallel={p.name} has no parameter offload; only parallel=zero3 partitions "
            "parameters and can keep them in host memory",
        )
    checkpointed = checkpointed_layers(
        p.activation_checkpoint, cfg.model.n_layers, p.checkpoint_every
    )
    pipeline = check_pipeline(cfg, degrees) if p.name in PIPELINE_LAYOUTS else None
    return LayoutPlan(p.name, degrees, p.sequence_parallel, checkpointed, pipeline)


def check_pipeline(cfg: RunConfig, degrees: Degrees) -> PipelinePlan:
    """What a pipeline layout needs beyond its degrees (train/spec/stages.py)."""
    if degrees.pp > 1 and cfg.model.tie_embeddings:
        raise LayoutError(
            "model.tie_embeddings",
            f"model {cfg.model.name} ties its embedding to its head, which a pipeline puts on "
            "the first and last stages; the shared gradient across stages is not wired up",
        )
    if cfg.precision.name in ("fp8", "fp16"):
        reason = {
            "fp8": "fp8 inside pipeline stages is not wired up (the zero-bubble schedules split "
            "backward into input and weight parts, which fp8 linears have not been checked "
            "under); use bf16",
            "fp16": "fp16 loss scaling would have to scale the loss inside the schedule's "
            "backward, which is not wired up; use bf16",
        }[str(cfg.precision.name)]
        raise LayoutError("precision.name", f"{cfg.precision.name}: {reason}")
    if cfg.profile.twin:
        raise LayoutError(
            "profile.twin",
            "the no-sync twin step is not defined for a pipeline (its schedule reduces "
            "gradients inside the step); use profile.enabled alone",
        )
    rows_per_rank = cfg.train.global_batch // degrees.dp
    accum_steps = max(1, rows_per_rank // cfg.train.micro_batch)
    return plan_pipeline(cfg.parallel, cfg.model, degrees.pp, rows_per_rank, accum_steps)


def checkpointed_layers(mode: str, n_layers: int, every: int) -> list[int]:
    """Indices of the blocks to checkpoint: all (full), every k-th (selective), or none."""
    if mode == "full":
        return list(range(n_layers))
    if mode == "selective":
        # Blocks k-1, 2k-1, ...: the torchtitan convention for per-layer selective AC.
        return [i for i in range(n_layers) if (i + 1) % every == 0]
    return []


def check_tensor_parallel(model: ModelConfig, tp: int, seq_len: int, sequence_parallel: bool):
    """Tensor parallelism splits heads, kv heads and the MLP width; each must split evenly."""
    for key, value in (
        ("n_heads", model.n_heads),
        ("n_kv_heads", model.n_kv_heads),
        ("ffn_hidden", model.ffn_hidden),
    ):
        if value % tp:
            raise LayoutError(
                "parallel.tp", f"{tp} does not divide model.{key} {value} ({model.name})"
            )
    if sequence_parallel and seq_len % tp:
        raise LayoutError(
            "parallel.tp",
            f"sequence parallelism splits the sequence: {tp} does not divide train.seq_len "
            f"{seq_len}",
        )


def _product(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out
