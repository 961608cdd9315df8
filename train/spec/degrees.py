"""The layout a config asks for, as numbers: world size = pp x dp_replicate x dp_shard x ep x
tp (-1 means "the rest"), how each step's batch splits, which blocks are checkpointed, and
where each mesh group sits on the nodes.

Pure arithmetic on the config (no torch), used by the driver (validation, before any rank
starts), the ranks (to build the device mesh) and the performance model, so they never
disagree. What a layout may do comes from its catalog row (train/spec/catalog.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from train.spec.catalog import CATALOG, DEGREE_KEYS, Feature, Layout, layout
from train.spec.config import ModelConfig, ParallelConfig, RunConfig
from train.spec.config_error import ConfigError
from train.spec.stages import PipelinePlan, plan_pipeline

# The device mesh's dims, outermost first: rank-major, TP innermost (consecutive ranks, one
# node, NVLink), the pipeline outermost (its neighbours are farthest apart and exchange least).
# EP is the innermost data-parallel dim, as torchtitan borrows it from the data-parallel ranks
# (dp_shard = its FSDP part x ep): its all-to-alls sit on the critical path of every MoE block,
# forward and backward, so its group takes consecutive ranks, one node's NVLink by default,
# and leaves the NIC to FSDP's gathers and reductions, which prefetch and overlap.
MESH_DIMS = ("pp", "dp_replicate", "dp_shard", "ep", "tp")


@dataclass(frozen=True)
class Degrees:
    dp_replicate: int  # model replicas; gradients all-reduced between them
    dp_shard: int  # ranks that split parameters, gradients and optimizer state (FSDP/ZeRO)
    tp: int  # ranks that split each layer's matmuls (tensor parallel)
    pp: int = 1  # pipeline stage groups (outermost): each holds a contiguous run of blocks
    ep: int = 1  # ranks that split each MoE block's experts (data-parallel ranks as well)

    @property
    def dp(self) -> int:
        """Data-parallel size: how many ways each step's global batch is split (EP ranks
        train their own rows)."""
        return self.dp_replicate * self.dp_shard * self.ep

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    def size(self, dims: tuple[str, ...]) -> int:
        """Ranks in a group spanning these mesh dims."""
        out = 1
        for dim in dims:
            out *= getattr(self, dim)
        return out

    def ranks_per_node(self, dims: tuple[str, ...], nproc_per_node: int) -> int:
        """Ranks of one group spanning ``dims`` that share a node, when nodes hold
        ``nproc_per_node`` consecutive ranks of the rank-major mesh. A group's members are
        spaced by the product of the dims inside (to the right of) its innermost dim."""
        size = self.size(dims)
        if size <= 1:
            return 1
        inner = MESH_DIMS.index(dims[-1])
        stride = self.size(MESH_DIMS[inner + 1 :])
        if stride >= nproc_per_node:
            return 1
        return max(1, min(size, nproc_per_node // stride))


def resolve_degrees(p: ParallelConfig, world_size: int, nproc_per_node: int) -> Degrees:
    """The degrees of layout ``p.name`` at this world size; ConfigError when they cannot be.

    One degree may be -1 ("the rest of the world size"). A layout whose row has a
    ``node_split`` may leave both of those at -1 and then follows the node boundary: hsdp
    shards inside a node and replicates across nodes, tp_fsdp runs TP inside a node and FSDP
    across nodes, ep and ep_fsdp split experts inside a node and replicate or shard the rest
    across nodes, so only the outer dim's traffic crosses the network.
    """
    if str(p.name) not in CATALOG:
        raise ConfigError("parallel.name", f"{p.name!r} is not one of: {', '.join(CATALOG)}")
    row = layout(p.name)
    values = {key: getattr(p, key) for key in DEGREE_KEYS}
    for key, value in values.items():
        if value == 0 or value < -1:
            raise ConfigError(f"parallel.{key}", f"{value}: must be >= 1, or -1 for the rest")
        if value != 1 and key in row.degree_refusals:
            raise ConfigError(f"parallel.{key}", f"{value}: {row.degree_refusals[key]}")
        if value != 1 and key not in row.degrees:
            raise ConfigError(
                f"parallel.{key}",
                f"{value}: parallel={p.name} only spreads over {' and '.join(row.degrees)}; "
                f"{key} must be 1",
            )
    if values["tp"] == -1:
        # TP stays inside a node, where NVLink is: -1 is the node's ranks, not the world's.
        values["tp"] = min(nproc_per_node, world_size)
    if values["ep"] > 1 and world_size % values["ep"]:
        raise ConfigError(
            "parallel.ep", f"{values['ep']} does not divide the world size {world_size}"
        )
    _fill_rest(row, values, world_size, nproc_per_node)
    degrees = Degrees(**values)
    if degrees.world != world_size:
        key = next((k for k in reversed(DEGREE_KEYS) if values[k] > 1), "dp_replicate")
        across = (
            "; TP stays inside a node: use parallel=tp_fsdp across nodes"
            if (row.degrees == ("tp",) and world_size > nproc_per_node)
            else ""
        )
        raise ConfigError(
            f"parallel.{key}",
            (f"pp {degrees.pp} x " if degrees.pp != 1 else "")
            + f"dp_replicate {degrees.dp_replicate} x dp_shard {degrees.dp_shard} x "
            + (f"ep {degrees.ep} x " if degrees.ep != 1 else "")
            + f"tp {degrees.tp} = {degrees.world}, but the world size is {world_size}{across}",
        )
    if degrees.tp > 1 and min(nproc_per_node, world_size) % degrees.tp:
        raise ConfigError(
            "parallel.tp",
            f"{degrees.tp} does not divide cluster.nproc_per_node "
            f"{min(nproc_per_node, world_size)}: a TP group would straddle nodes (TP moves "
            "activations in every block and stays inside a node, on NVLink)",
        )
    check_expert_group(degrees, min(nproc_per_node, world_size))
    return degrees


def check_expert_group(degrees: Degrees, nproc_per_node: int) -> None:
    """An EP group is consecutive ranks (tp is 1 under EP): it fills part of one node or whole
    nodes, never part of two (that would put one group's all-to-all on two links)."""
    ep = degrees.ep
    if ep > 1 and (nproc_per_node % ep if ep <= nproc_per_node else ep % nproc_per_node):
        raise ConfigError(
            "parallel.ep",
            f"{ep} neither divides nor is a multiple of cluster.nproc_per_node "
            f"{nproc_per_node}: an EP group would straddle nodes",
        )


def expert_group_nodes(degrees: Degrees, nproc_per_node: int) -> int:
    """Nodes one EP group spans (1: its all-to-alls stay inside a node)."""
    return max(1, degrees.ep // degrees.ranks_per_node(("ep",), nproc_per_node))


def _fill_rest(row: Layout, values: dict[str, int], world_size: int, nproc_per_node: int):
    rest = [key for key, value in values.items() if value == -1]
    nodes = max(1, world_size // nproc_per_node)
    if row.node_split is not None and sorted(rest) == sorted(row.node_split):
        across, inside = row.node_split
        if row.one_node_refusal and nodes == 1 and world_size > 1:
            raise ConfigError("parallel.dp_replicate", row.one_node_refusal)
        values.update({across: nodes, inside: world_size // nodes})
    elif len(rest) > 1:
        raise ConfigError(
            f"parallel.{rest[-1]}", f"only one of {', '.join(rest)} may be -1 (the rest)"
        )
    elif rest:
        fixed = 1
        for key, value in values.items():
            fixed *= value if key != rest[0] else 1
        if world_size % fixed:
            # Name the degrees that fix the product: a sweep's small world size (the default
            # weak sweep starts at 1) is the usual cause, not the -1 itself.
            named = {k: v for k, v in values.items() if k != rest[0] and v > 1}
            product = " x ".join(f"{k} {v}" for k, v in named.items())
            product += f" = {fixed} ranks" if len(named) > 1 else ""
            raise ConfigError(
                f"parallel.{next(iter(named))}",
                f"{product} does not divide world size {world_size} "
                f"({rest[0]}=-1 takes the rest): every world size must be a multiple of "
                f"{fixed} (sweep.world_sizes=[{fixed},{2 * fixed}], or sweep=none)",
            )
        values[rest[0]] = world_size // fixed


@dataclass(frozen=True)
class BatchPlan:
    """How one optimizer step's sequences split: train.global_batch sequences per step,
    train.micro_batch per forward, over the data-parallel ranks (the ranks of a TP group or a
    pipeline share theirs), the rest by gradient accumulation."""

    global_batch: int
    micro_batch: int
    data_parallel_size: int

    @property
    def rows_per_rank(self) -> int:
        return self.global_batch // self.data_parallel_size

    @property
    def accum_steps(self) -> int:
        return max(1, self.rows_per_rank // self.micro_batch)


# What a sweep holds fixed as the world grows (summary.json's sweep.batch_held; the report
# puts runs on one curve by it). BatchRule.held names its own.
BATCH_HELD = ("global_batch", "sequences_per_dp_rank", "sequences_per_device")


def batch_held(sweep_name: str, parallel_name: str) -> str:
    """What a sweep (or projection) of this kind holds fixed: strong scaling the global
    batch; weak scaling (projections' default, and a single run's: sweep=none) each
    data-parallel rank's sequences, or each device's under parallel=auto (BatchRule)."""
    if str(sweep_name) == "strong":
        return "global_batch"
    return "sequences_per_device" if str(parallel_name) == "auto" else "sequences_per_dp_rank"


@dataclass(frozen=True)
class BatchRule:
    """Each run's global batch in a sweep or projection: fixed (strong scaling), a fixed
    number of sequences per data-parallel rank (weak scaling of one layout: ranks of a TP
    group or a pipeline share theirs, so they do not multiply it), or a fixed number per
    device (weak scaling under parallel=auto, whose layout, and so data-parallel size, can
    differ from one world size to the next and between the candidates at one: the per-rank
    rule would give each candidate its own batch, so the model would rank layouts on
    different work and a sweep's runs would not be one workload)."""

    global_batch: int | None = None  # strong scaling: every run's; per device: the base run's
    rows_per_dp_rank: int | None = None  # weak scaling of one layout
    base_world_size: int | None = None  # weak per device: global_batch is at this world size

    @property
    def held(self) -> str:
        if self.rows_per_dp_rank is not None:
            return "sequences_per_dp_rank"
        return "sequences_per_device" if self.base_world_size else "global_batch"

    def global_batch_for(self, degrees: Degrees) -> int:
        if self.rows_per_dp_rank is not None:
            return self.rows_per_dp_rank * degrees.dp
        if self.base_world_size is None:
            return self.global_batch
        if self.global_batch * degrees.world % self.base_world_size:
            raise ConfigError(
                "train.global_batch",
                f"{self.global_batch} at world size {self.base_world_size} is "
                f"{self.global_batch * degrees.world / self.base_world_size:g} at "
                f"{degrees.world}: weak scaling under parallel=auto keeps each device's "
                "sequences, and that is not a whole number",
            )
        return self.global_batch * degrees.world // self.base_world_size

    @classmethod
    def weak_from(cls, global_batch: int, base: Degrees, world_size: int) -> BatchRule:
        """Weak scaling whose smallest run (``base``, at ``world_size``) has ``global_batch``."""
        if global_batch % base.dp:
            raise ConfigError(
                "train.global_batch",
                f"{global_batch} does not split over the {base.dp} data-parallel ranks of the "
                f"smallest world size ({world_size}), which weak scaling keeps per rank",
            )
        return cls(rows_per_dp_rank=global_batch // base.dp)

    @classmethod
    def weak_per_device(cls, global_batch: int, world_size: int) -> BatchRule:
        """Weak scaling under parallel=auto: ``global_batch`` at ``world_size`` (the smallest
        run's), the same sequences per device at every other."""
        return cls(global_batch=global_batch, base_world_size=world_size)


def plan_batch(global_batch: int, micro_batch: int, dp: int, world_size: int) -> BatchPlan:
    if global_batch % (micro_batch * dp):
        raise ConfigError(
            "train.global_batch",
            f"{global_batch} (at world size {world_size}) is not divisible by micro_batch "
            f"{micro_batch} x data-parallel size {dp}",
        )
    return BatchPlan(global_batch, micro_batch, dp)


@dataclass(frozen=True)
class LayoutPlan:
    """What a config asks of the layout, known before any rank builds it (summary.json)."""

    name: str
    degrees: Degrees
    sequence_parallel: bool
    checkpointed: list[int]  # block indices under activation checkpointing
    pipeline: PipelinePlan | None = None  # pp, pp_fsdp: stages, schedule, microbatches

    @property
    def row(self) -> Layout:
        return layout(self.name)

    @property
    def splits_gradients(self) -> bool:
        """Each rank holds only part of some gradients (FSDP shards, TP's split matrices, EP's
        experts), so a check over them (fp16's overflow) must be reduced over every rank to
        agree."""
        split = self.row.shards_parameters or self.degrees.tp > 1 or self.degrees.ep > 1
        return self.degrees.world > 1 and split

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "pp": self.degrees.pp,
            "dp_replicate": self.degrees.dp_replicate,
            "dp_shard": self.degrees.dp_shard,
            "tp": self.degrees.tp,
            "ep": self.degrees.ep,
            "sequence_parallel": self.sequence_parallel and self.degrees.tp > 1,
            "checkpointed_layers": len(self.checkpointed),
        }


def layout_record(cfg: RunConfig, plan: LayoutPlan) -> dict:
    """``plan.as_dict()`` and, where the layout shards its parameters outside pipeline stages,
    how FSDP accumulates (parallel.fsdp_reduce_every_micro_step, which parallel=auto chooses):
    summary.json's and the performance model's layout record."""
    record = plan.as_dict()
    if plan.row.shards_parameters and not plan.row.pipeline:
        record["fsdp_reduce_every_micro_step"] = cfg.parallel.fsdp_reduce_every_micro_step
    return record


def plan_layout(cfg: RunConfig, world_size: int, nproc_per_node: int) -> LayoutPlan:
    """The layout ``cfg`` asks for at this world size; ConfigError naming the key if none."""
    p = cfg.parallel
    degrees = resolve_degrees(p, world_size, nproc_per_node)
    row = layout(p.name)
    if p.checkpoint_every < 1:
        raise ConfigError("parallel.checkpoint_every", f"{p.checkpoint_every}: must be >= 1")
    if p.sequence_parallel and not row.tensor_parallel:
        raise ConfigError(
            "parallel.sequence_parallel",
            f"splits tensor-parallel groups; parallel={p.name} has none",
        )
    # On by default under TP (as Megatron-LM and torchtitan run it); false turns it off.
    sequence_parallel = degrees.tp > 1 and p.sequence_parallel is not False
    if degrees.tp > 1:
        check_tensor_parallel(cfg.model, degrees.tp, cfg.train.seq_len, sequence_parallel)
        if row.pipeline and cfg.train.seq_len % degrees.tp:
            raise ConfigError(
                "parallel.tp",
                f"{degrees.tp} does not divide train.seq_len {cfg.train.seq_len}: pipeline "
                "stages send each TP rank's 1/tp of the sequence",
            )
    for key, feature in (
        ("parallel.offload_optimizer", Feature.offload_optimizer),
        ("parallel.offload_params", Feature.offload_params),
    ):
        if getattr(p, feature.value) and row.refusal(feature):
            raise ConfigError(key, row.refusal(feature))
    checkpointed = checkpointed_layers(
        p.activation_checkpoint, cfg.model.n_layers, p.checkpoint_every
    )
    pipeline = None
    if row.pipeline:
        batch = BatchPlan(cfg.train.global_batch, cfg.train.micro_batch, degrees.dp)
        pipeline = plan_pipeline(p, cfg.model, degrees.pp, batch.rows_per_rank, batch.accum_steps)
    return LayoutPlan(str(p.name), degrees, sequence_parallel, checkpointed, pipeline)


def checkpointed_layers(mode: str, n_layers: int, every: int) -> list[int]:
    """Indices of the blocks to checkpoint: all (full), every k-th (selective), or none."""
    if mode == "full":
        return list(range(n_layers))
    if mode == "selective":
        # Blocks k-1, 2k-1, ...: the torchtitan convention for per-layer selective AC.
        return [i for i in range(n_layers) if (i + 1) % every == 0]
    return []


def check_tensor_parallel(model: ModelConfig, tp: int, seq_len: int, sequence_parallel: bool):
    """Tensor parallelism splits heads, kv heads, the MLP width and the vocabulary (the
    embedding's rows, the head's logits); each must split evenly."""
    for key, value in (
        ("n_heads", model.n_heads),
        ("n_kv_heads", model.n_kv_heads),
        ("ffn_hidden", model.ffn_hidden),
        ("vocab_size", model.vocab_size),
    ):
        if value % tp:
            raise ConfigError(
                "parallel.tp", f"{tp} does not divide model.{key} {value} ({model.name})"
            )
    if sequence_parallel and seq_len % tp:
        raise ConfigError(
            "parallel.tp",
            f"sequence parallelism splits the sequence: {tp} does not divide train.seq_len "
            f"{seq_len} (or set parallel.sequence_parallel=false)",
        )
