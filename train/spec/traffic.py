"""The collectives a layout issues per optimizer step: what, how big, in which group, when.

One function, ``step_collectives``, itemises them; the ranks' byte accounting
(``comm_bytes_per_step``, summary.json's ``comm_bytes_per_step``), the breakdown's achieved
bandwidth and the performance model (launch/perfmodel/) all read it.

Accounting convention: each call's ``nbytes`` is nccl-tests' "size" of one call on one rank:

- all_reduce: the tensor each rank reduces (its input, equal to its output);
- all_gather: the gathered result, the whole tensor (group size x each input);
- reduce_scatter: the input, the whole tensor (group size x each output);
- send_recv (pipeline activations forward, their gradients back): the bytes this rank sends;
  each transfer is counted once, at its sender; a boundary between two stages of one rank
  moves nothing.
- all_to_all (expert parallelism's token dispatch and combine): the bytes this rank sends,
  its input buffer (the rows it keeps for its own experts included), nccl-tests' size for
  alltoall. Dispatch sends each of the rank's tokens top_k times: exact per rank. What a
  rank's experts received, and so sends back in the combine (and in the dispatch's
  backward), is what routing decided: accounted as the EP group's mean, exact summed over
  the group (dropless). Under model.capacity_factor every rank sends n_experts x capacity
  rows each way, padded: exact per rank.

Summed per kind over a step's calls (every micro-step of the gradient accumulation included)
these are summary.json's ``comm_bytes_per_step``. The bytes a rank moves over its links ("bus
bytes") follow for a group of n ranks through train/spec/bus.py. A collective over a group
of one rank is never issued and counts nothing. Not counted, because they are not part of a
step: one-time set-up (DDP's initial broadcast, the distribution of weights) and the loss
all-reduce that rank 0 logs.

Exact in fp32 for ddp, fsdp, hsdp, tp (with and without sequence parallelism and activation
checkpointing), DeepSpeed 0.19.8's zero1-3, the pipelines and expert parallelism (ep, ep_fsdp,
MoE models; all-to-all summed over the EP group): tests/integration count every collective of
real 2- and 4-rank steps and compare them with these. Exact under bf16
autocast on CPU ranks for fsdp (fp32 and bf16 reduce), hsdp, tp, tp + SP and tp_fsdp + SP
with checkpointing: FSDP2 gathers in the compute dtype and reduces in
parallel.fsdp_reduce_dtype; TP moves 16-bit matmul outputs but fp32 norm outputs and residual
stream, except under tp_fsdp, whose 16-bit parameters make the whole stream 16-bit. fp16
follows the same rules, unchecked. Models rather than checked counts: above
ZERO3_MAX_REUSE_DISTANCE parameters ZeRO-3 is taken to gather everything twice per
micro-step; torchao's fp8 all-gather (1 byte for fp8 linears, one amax all-reduce per step)
and Transformer Engine's delayed-scaling amax all-reduces (two per micro-step) run only on
CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum

from train.spec.catalog import GradientSync
from train.spec.config import ModelConfig, RunConfig
from train.spec.degrees import MESH_DIMS, LayoutPlan
from train.spec.precision import SIXTEEN_BIT, fp8_eligible, fp8_linear_count
from train.spec.shapes import (
    all_param_shapes,
    block_linears,
    block_param_shapes,
    expert_capacity,
    expert_param_shapes,
    expert_shard_dim,
    is_moe,
    is_moe_layer,
    layer_param_shapes,
    moe_block_param_shapes,
    moe_layers,
    moe_linears,
    numel,
    root_param_shapes,
)
from train.spec.stages import PipelinePlan

GRAD_NORM_BYTES = 4  # the global gradient norm's float32 scalar
LOSS_BYTES = 4  # a pipeline's loss, float32, from the last stage to the others
GRADIENT_BYTES = 4  # torch layouts keep fp32 parameters, so fp32 gradients, under autocast
FOUND_INF_BYTES = 4  # fp16 loss scaling's float32 overflow flag
# ZeRO-3 keeps a gathered parameter for reuse when it comes back within this many elements
# (DeepSpeed's default, pinned in train/parallel/zero.py because the accounting models it:
# below it the forward's all-gather also serves backward).
ZERO3_MAX_REUSE_DISTANCE = 1_000_000_000
SPLIT_BYTES = 8  # an int64 token count per expert: what EP exchanges before its tokens
LOAD_BYTES = 8  # an int64 token count per expert and MoE block: the router-bias update's
KINDS = ("all_reduce", "all_gather", "reduce_scatter", "send_recv", "all_to_all")
WORLD = MESH_DIMS  # a group spanning every mesh dim: all ranks


class Phase(str, Enum):
    """Where in the step a collective runs, which decides what can hide it."""

    bucketed_backward = "bucketed_backward"  # DDP: buckets all-reduced while backward runs
    unit_forward = "unit_forward"  # FSDP/ZeRO-3 gathers, prefetched one unit ahead
    unit_backward = "unit_backward"  # the same in backward, beside the gradient reductions
    unit_backward_each = "unit_backward_each"  # FSDP2's reduce-scatters, every micro-step
    unit_backward_last = "unit_backward_last"  # gradient reductions, last micro-step only
    pipeline = "pipeline"  # stage-to-stage sends, inside the schedule
    # EP's token all-to-alls, forward and backward of every MoE block: the block waits for
    # its tokens (nothing here computes beside them; shared experts could, not overlapped).
    expert_dispatch = "expert_dispatch"
    # Sequence-parallel activations one matmul produces (a reduce-scatter of its output) or
    # reads as its left operand (an all-gather of its input): what torch's micro-pipelining
    # pass can split with that matmul under async TP (torch/_inductor/fx_passes/
    # micro_pipeline_tp.py, torch 2.13: _find_producer_matmul, _find_consumer_matmuls); on
    # the critical path without it.
    tp_matmul = "tp_matmul"
    exposed = "exposed"  # on the critical path


@dataclass(frozen=True)
class Collective:
    kind: str  # all_reduce | all_gather | reduce_scatter | send_recv | all_to_all
    role: str  # what it moves: gradients, parameters, activations, tokens, ...
    nbytes: int  # nccl-tests size of one call (send_recv, all_to_all: the bytes sent)
    calls: int  # per optimizer step
    group: tuple[str, ...]  # the mesh dims the group spans (train/spec/degrees.py MESH_DIMS)
    phase: Phase

    @property
    def total_bytes(self) -> int:
        return self.nbytes * self.calls


@dataclass(frozen=True)
class CommVolume:
    """Bytes per rank per optimizer step, by collective kind."""

    all_reduce: int = 0  # DDP/HSDP gradients, TP activations without SP, norms and amaxes
    all_gather: int = 0  # FSDP/ZeRO-3 parameters, SP activations into a column-parallel Linear
    reduce_scatter: int = 0  # FSDP/ZeRO gradients, SP activations out of a row-parallel Linear
    send_recv: int = 0  # pipeline activations and their gradients between stages
    all_to_all: int = 0  # MoE token dispatch and combine across expert-parallel ranks

    @classmethod
    def of(cls, collectives: list[Collective]) -> CommVolume:
        sums = dict.fromkeys(KINDS, 0)
        for c in collectives:
            sums[c.kind] += c.total_bytes
        return cls(**sums)

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def as_dict(self) -> dict[str, int]:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "total": self.total}


@dataclass(frozen=True)
class StepShape:
    """What a step moves besides the layout: the batch, the dtypes, clipping."""

    # Sequences per forward and tokens per sequence: the activation collectives scale with both.
    micro_batch: int
    seq_len: int
    # Forwards per optimizer step: activation traffic repeats this often, gradient traffic once.
    accum_steps: int
    # Clipping adds a norm all-reduce per step where gradients are split.
    grad_clip: bool
    precision: str = "fp32"  # the resolved one: the width of activations on the wire
    fsdp_reduce_dtype: str = "fp32"  # FSDP's reduce-scatter dtype (parallel.fsdp_reduce_dtype)
    fsdp_reduce_each: bool = True  # parallel.fsdp_reduce_every_micro_step
    # torchao fp8 with FSDP's float8 all-gather: linears this wide gather in 1 byte.
    fp8_all_gather_min_dim: int | None = None
    # Transformer Engine's delayed scaling: linears this wide all-reduce their amaxes.
    fp8_delayed_min_dim: int | None = None
    # torchao's float8 TP styles: sequence-parallel all-gathers into (forward) or out of
    # (backward) fp8 linears this wide carry 1 byte.
    fp8_tp_min_dim: int | None = None

    @classmethod
    def of_run(
        cls,
        cfg: RunConfig,
        *,
        accum_steps: int,
        precision: str,
        fp8_all_gather_min_dim: int | None = None,
        fp8_delayed_min_dim: int | None = None,
        fp8_tp_min_dim: int | None = None,
    ) -> StepShape:
        """A step of ``cfg``: its micro batch and sequence, clipping and FSDP reduce dtype."""
        train = cfg.train
        return cls(
            micro_batch=train.micro_batch,
            seq_len=train.seq_len,
            accum_steps=accum_steps,
            grad_clip=train.grad_clip > 0,
            precision=precision,
            fsdp_reduce_dtype=cfg.parallel.fsdp_reduce_dtype,
            fsdp_reduce_each=cfg.parallel.fsdp_reduce_every_micro_step,
            fp8_all_gather_min_dim=fp8_all_gather_min_dim,
            fp8_delayed_min_dim=fp8_delayed_min_dim,
            fp8_tp_min_dim=fp8_tp_min_dim,
        )

    @property
    def sixteen_bit(self) -> bool:
        return self.precision in SIXTEEN_BIT

    @property
    def gather_width(self) -> int:
        """FSDP2 gathers in the compute dtype."""
        return 2 if self.sixteen_bit else 4

    @property
    def reduce_width(self) -> int:
        return 2 if self.sixteen_bit and self.fsdp_reduce_dtype == "bf16" else 4


def comm_bytes_per_step(model: ModelConfig, layout: LayoutPlan, shape: StepShape) -> CommVolume:
    """Bytes per rank per optimizer step of ``layout``, per kind (see the module docstring)."""
    return CommVolume.of(step_collectives(model, layout, shape))


def step_collectives(
    model: ModelConfig, layout: LayoutPlan, shape: StepShape, *, pp_rank: int | None = None
) -> list[Collective]:
    """Every collective one rank issues per optimizer step. Pipelines differ by rank:
    ``pp_rank`` picks one, None the busiest (the most bytes)."""
    row, d = layout.row, layout.degrees
    if layout.pipeline is not None:
        per_rank = [_pipeline(model, layout, shape, r) for r in range(layout.pipeline.pp)]
        if pp_rank is not None:
            return per_rank[pp_rank]
        return max(per_rank, key=lambda cs: CommVolume.of(cs).total)
    if row.zero_stage is not None:
        return _zero(model, row.zero_stage, d.dp_shard, shape)
    out: list[Collective] = []
    if d.tp > 1:
        out += _tensor_parallel(model, layout, shape, TpPart.whole(model, layout, shape))
    if d.ep > 1:
        out += expert_all_to_all(model, layout, shape)
    if row.shards_parameters or row.expert_parallel:  # FSDP2 units (ep: a one-rank shard dim)
        out += _fsdp(model, layout, shape)
    elif d.dp_replicate > 1:  # DDP: the whole model's fp32 gradients, bucketed in backward
        size = numel(all_param_shapes(model)) * GRADIENT_BYTES
        out.append(
            Collective(
                "all_reduce", "gradients", size, 1, ("dp_replicate",), Phase.bucketed_backward
            )
        )
    if shape.grad_clip and (d.dp_shard > 1 or d.tp > 1 or d.ep > 1):
        out.append(_grad_norm(GRAD_NORM_BYTES))
    if model.router_bias_update and is_moe(model) and d.world > 1:
        # DeepSeek-V3's bias update: every MoE block's expert loads, summed over the ranks
        # after the optimizer step (train/model/moe.py).
        size = len(moe_layers(model)) * model.n_experts * LOAD_BYTES
        out.append(Collective("all_reduce", "expert load", size, 1, WORLD, Phase.exposed))
    if shape.precision == "fp16" and layout.splits_gradients:
        # fp16's overflow flag, agreed over every rank (train/runtime/rank_setup.py).
        out.append(Collective("all_reduce", "found inf", FOUND_INF_BYTES, 1, WORLD, Phase.exposed))
    if shape.fp8_delayed_min_dim is not None and d.world > 1:
        out += _te_amaxes(model, shape)
    return out


def _grad_norm(nbytes: int) -> Collective:
    return Collective("all_reduce", "grad norm", nbytes, 1, WORLD, Phase.exposed)


def _te_amaxes(m: ModelConfig, shape: StepShape) -> list[Collective]:
    """Transformer Engine's delayed scaling (TE 2.2: FP8GlobalStateManager): each forward under
    its autocast ends with one MAX all-reduce over every rank of the amaxes of each fp8 linear's
    input, weight and output (3 float32 each), and each backward with one of its two gradients'
    (2 each). Current scaling reduces nothing (its scales are per tensor, now). Modelled from
    TE's source, not counted: TE does not run on CPU ranks."""
    linears = fp8_linear_count(m, shape.fp8_delayed_min_dim) * m.n_layers
    return [
        Collective(
            "all_reduce",
            f"fp8 amaxes ({when})",
            n * linears * 4,
            shape.accum_steps,
            WORLD,
            Phase.exposed,
        )
        for when, n in (("forward", 3), ("backward", 2))
    ]


# -- tensor parallel --------------------------------------------------------------------------


@dataclass(frozen=True)
class TpWidths:
    """Bytes per element of TP's activation collectives, by what they carry."""

    matmul_out: int  # a row-wise matmul's partial output, and its gradient
    norm_out: int  # a norm's output (the matmuls' input), and its gradient
    stream: int  # the residual stream between blocks, and its gradient


def tp_widths(sixteen_bit: bool, *, fsdp_16bit_params: bool) -> TpWidths:
    """fp32: everything 4 bytes. Under autocast with fp32 parameters (tp) the residual stream
    and the norms' outputs stay fp32 (DTensor redistributes them before autocast casts the
    matmul inputs, so their backward gradients are fp32 too); only the matmuls' outputs are
    16-bit. Under FSDP2's 16-bit parameters (tp_fsdp) the embedding's output, hence the whole
    stream, is 16-bit, and the norms return their input's dtype (the model's RMSNorm)."""
    if not sixteen_bit:
        return TpWidths(4, 4, 4)
    if fsdp_16bit_params:
        return TpWidths(2, 2, 2)
    return TpWidths(matmul_out=2, norm_out=4, stream=4)


@dataclass(frozen=True)
class TpPart:
    """What of the model one rank's TP collectives run over: the whole model, or a pipeline
    rank's stages (their blocks; the embedding on the first stage's rank, the final norm,
    head and loss on the last's), and its micro-steps of ``rows`` sequences each."""

    blocks: int
    checkpointed: int
    embedding: bool
    head: bool
    rows: int
    micro_steps: int

    @classmethod
    def whole(cls, m: ModelConfig, layout: LayoutPlan, shape: StepShape) -> TpPart:
        n_ckpt = len(layout.checkpointed)
        return cls(m.n_layers, n_ckpt, True, True, shape.micro_batch, shape.accum_steps)


def _tensor_parallel(
    m: ModelConfig, layout: LayoutPlan, shape: StepShape, part: TpPart
) -> list[Collective]:
    """Activation collectives, per micro-step, each of [rows, seq_len, d_model] elements
    unless said otherwise (train/parallel/tensor_parallel.py), over ``part``'s blocks.

    Blocks, forward: without SP one all-reduce after wo and one after w2 (of the matmul
    outputs); with SP an all-gather of the norm's output before attention and MLP and a
    reduce-scatter of the matmul output after each. Backward mirrors forward: without SP the
    all-reduces carry the gradients of the norms' outputs, with SP the all-gathers carry the
    matmul outputs' gradients and the reduce-scatters the norm outputs'.

    Vocabulary: the row-wise embedding reduces its partial lookups (forward: an all-reduce of
    the stream, or with SP a reduce-scatter, whose backward is an all-gather of the stream's
    gradient); the column-wise head takes the final norm's output whole (with SP an
    all-gather of it in forward) and reduces its input gradient (an all-reduce, with SP a
    reduce-scatter); the loss on the sharded logits all-reduces three float32 values per
    token in forward (the max and the sum of exponentials for the log-softmax, and the target
    logit). With SP the norm weights' partial gradients (2 per block and the final norm) are
    all-reduced once per step, in fp32, or under FSDP2 every micro-step in the compute dtype,
    as it reduces the unsharded gradients then.

    A checkpointed block replays its forward during backward, but torch's non-reentrant
    checkpoint stops the replay once the last tensor backward needs is recomputed, before
    the block's final collective (after w2, whose output nothing saved depends on): so a
    replay costs one all-reduce (after wo) without SP, and with SP both all-gathers and one
    reduce-scatter.
    """
    widths = tp_widths(shape.sixteen_bit, fsdp_16bit_params=layout.row.shards_parameters)
    tokens = part.rows * shape.seq_len
    elements = tokens * m.d_model
    accum, n_ckpt, passes = part.micro_steps, part.checkpointed, 2 * part.blocks
    embedding, head = int(part.embedding), int(part.head)

    def activations(kind: str, width: int, calls: int, beside_matmul: bool = False) -> Collective:
        phase = Phase.tp_matmul if beside_matmul else Phase.exposed
        return Collective(kind, "activations", elements * width, calls, ("tp",), phase)

    loss = Collective(
        "all_reduce", "loss (vocab-parallel)", tokens * LOSS_BYTES, 3 * accum * head, ("tp",),
        Phase.exposed,
    )  # fmt: skip
    if not layout.sequence_parallel:
        return [
            activations("all_reduce", widths.matmul_out, (passes + n_ckpt) * accum),
            activations("all_reduce", widths.norm_out, (passes + head) * accum),
            activations("all_reduce", widths.stream, embedding * accum),
            loss,
        ]
    # Per block: the attention's and the MLP's input gathered forward (and per replay), the
    # gradients of wo's and w2's outputs gathered backward; torchao's float8 styles gather
    # those of fp8 linears in 1 byte (an input only when every linear reading it is fp8).
    fp8 = _fp8_tp_linears(m, shape.fp8_tp_min_dim)
    inputs_fp8 = sum(group <= fp8 for group in ({"wq", "wk", "wv"}, {"w1", "w3"}))
    outputs_fp8 = len(fp8 & {"wo", "w2"})
    gathered_inputs = (part.blocks + n_ckpt) * accum  # per input kind (attention, MLP)
    gathered_grads = part.blocks * accum  # per output kind (wo, w2)
    # Beside a matmul (Phase.tp_matmul), inside the compiled blocks (the micro-pipelining
    # pass sees only compiled graphs: train/parallel/build.py compiles block by block, as
    # torchtitan does): the gathers into wq/wk/wv and w1/w3 (their left operand) and of wo's
    # and w2's output gradients (into their input-gradient matmuls), and the reduce-scatters
    # of wo's and w2's outputs (forward, replays), each from one matmul. Not: a block's input
    # gradients, sums of several matmuls (wq + wk + wv, w1 + w3: an add produces them), the
    # embedding's (a lookup) and the head's, which runs eager.
    collectives = [
        activations("all_gather", widths.norm_out, (2 - inputs_fp8) * gathered_inputs, True),
        activations("all_gather", widths.norm_out, head * accum),  # the head's input
        activations("all_gather", 1, inputs_fp8 * gathered_inputs, True),
        activations("all_gather", widths.matmul_out, (2 - outputs_fp8) * gathered_grads, True),
        activations("all_gather", 1, outputs_fp8 * gathered_grads, True),
        activations("all_gather", widths.stream, embedding * accum),
        activations("reduce_scatter", widths.matmul_out, (passes + n_ckpt) * accum, True),
        activations("reduce_scatter", widths.norm_out, (passes + head) * accum),
        activations("reduce_scatter", widths.stream, embedding * accum),
        loss,
        _norm_gradients(m, layout, shape, part),
    ]
    return [c for c in collectives if c.calls]


def _norm_gradients(
    m: ModelConfig, layout: LayoutPlan, shape: StepShape, part: TpPart
) -> Collective:
    """Sequence parallelism's all-reduce of the norm weights' partial gradients (2 per block
    and the final norm's): once per step in fp32, or under FSDP2 every micro-step in the
    compute dtype, as it reduces the unsharded gradients then (train/parallel/fsdp.py
    fsdp_accumulate; counted on tp_fsdp runs in fp32 and bf16: tests/integration). A
    pipeline stage reduces them once a step, in fp32 (counted on pp and pp_fsdp x tp runs in
    fp32 and bf16, 2026-12-01), or under FSDP2 in its reduce dtype, in which the gradients
    accumulated over the microbatches are by then (a bf16 one stays bf16: FSDP2 drops a
    reduce dtype equal to the parameters', _fsdp_param.py)."""
    nbytes, calls = m.d_model * GRADIENT_BYTES, 2 * part.blocks + int(part.head)
    if layout.pipeline is not None:
        if layout.row.shards_parameters:
            nbytes = m.d_model * shape.reduce_width
    elif layout.row.shards_parameters and shape.fsdp_reduce_each:
        nbytes = m.d_model * (2 if shape.sixteen_bit else GRADIENT_BYTES)
        calls *= shape.accum_steps
    return Collective("all_reduce", "norm gradients", nbytes, calls, ("tp",), Phase.exposed)


def _fp8_tp_linears(m: ModelConfig, min_dim: int | None) -> set[str]:
    """The block linears (short names) torchao's float8 TP styles run, if they are in use."""
    if min_dim is None:
        return set()
    return {
        lin.name.split(".")[-1]
        for lin in block_linears(m)
        if fp8_eligible(lin.in_features, lin.out_features, min_dim)
    }


# -- FSDP2 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FsdpUnit:
    """FSDP2 units of one size: ``count`` of them (blocks; 1 for the root), each of
    ``elements`` parameters as gathered (the dim each tensor is sharded on, dim 0 but for
    routed experts on dim 1 (shapes.expert_shard_dim), padded to the shard count), of which
    ``fp8_elements`` in fp8 linears (torchao's float8 all-gather), sharded over the mesh dims
    ``shard`` and replicated over ``replicate``."""

    kind: str  # block | experts | root
    elements: int
    count: int
    shard: tuple[str, ...]
    replicate: tuple[str, ...]
    fp8_elements: int = 0
    fp8_linears: int = 0  # per unit


def fsdp_units(
    m: ModelConfig, layout: LayoutPlan, fp8_min_dim: int | None = None
) -> list[FsdpUnit]:
    """The FSDP2 units of a sharded (or ep) layout: one per block (blocks of equal size
    grouped), the routed experts of each MoE block as their own unit under expert
    parallelism, then the root (train/parallel/fsdp.py, expert_parallel.py).

    Dense parameters are sharded over dp_shard and replicated over dp_replicate; under ep_fsdp
    they are sharded over the EP ranks too (dp_shard x ep), under ep replicated over them.
    Routed experts differ between EP ranks: sharded over dp_shard and replicated over
    dp_replicate only."""
    d, row = layout.degrees, layout.row
    shard, replicate = ("dp_shard",), ("dp_replicate",)
    if row.expert_parallel and row.shards_parameters:
        shard = ("dp_shard", "ep")
    elif row.expert_parallel:
        replicate = ("dp_replicate", "ep")
    pad = d.size(shard)
    sizes: dict[tuple[int, int, int], int] = {}
    for i in range(m.n_layers):
        moe = is_moe_layer(m, i)
        if moe and row.expert_parallel:
            shapes = moe_block_param_shapes(m, experts=False)
            elements = numel(shapes, pad_to=pad)
        elif moe:
            # Without EP the routed experts are in the block's unit, sharded on dim 1 where
            # dp_shard exceeds n_experts (train/parallel/fsdp.py, as torchtitan does).
            dim = expert_shard_dim(m, 1, pad)
            elements = numel(moe_block_param_shapes(m, experts=False), pad_to=pad)
            elements += numel(expert_param_shapes(m), pad_to=pad, pad_dim=dim)
        else:
            elements = numel(layer_param_shapes(m, i, d.tp), pad_to=pad)
        fp8 = []
        if fp8_min_dim is not None:
            linears = moe_linears(m) if moe else block_linears(m, d.tp)
            fp8 = [
                lin.shape
                for lin in linears
                if fp8_eligible(lin.in_features, lin.out_features, fp8_min_dim)
            ]
        key = (elements, numel(fp8, pad_to=pad), len(fp8))
        sizes[key] = sizes.get(key, 0) + 1
    units = [
        FsdpUnit("block", elements, count, shard, replicate, fp8_elements, fp8_linears)
        for (elements, fp8_elements, fp8_linears), count in sizes.items()
    ]
    n_moe = len(moe_layers(m))
    if row.expert_parallel and n_moe:
        dim = expert_shard_dim(m, d.ep, d.dp_shard)
        experts = numel(expert_param_shapes(m, d.ep), pad_to=d.dp_shard, pad_dim=dim)
        units.append(FsdpUnit("experts", experts, n_moe, ("dp_shard",), ("dp_replicate",)))
    root = numel(root_param_shapes(m, d.tp), pad_to=pad)
    return [*units, FsdpUnit("root", root, 1, shard, replicate)]


def _fsdp(m: ModelConfig, layout: LayoutPlan, shape: StepShape) -> list[Collective]:
    """FSDP2 units (``fsdp_units``): each block unit gathered for forward and again for
    backward, the root once per micro-step (it is not freed between its forward and
    backward). Gradients are reduce-scattered every micro-step (train/parallel/fsdp.py
    fsdp_accumulate: no unsharded gradients kept between them), or once per step under
    parallel.fsdp_reduce_every_micro_step=false, and on a 2-D mesh each shard is all-reduced
    across the replicas once per step, on the last. With torchao's float8
    all-gather the fp8 linears gather in 1 byte, and their scales cost one all-reduce of all
    their amaxes per step (precompute_float8_dynamic_scale_for_fsdp)."""
    d, accum = layout.degrees, shape.accum_steps
    reduce_each = shape.fsdp_reduce_each
    scatters = accum if reduce_each else 1
    units = fsdp_units(m, layout, shape.fp8_all_gather_min_dim)
    gathers, reductions, replicas, n_fp8 = [], [], [], 0
    for u in units:
        shard, root = d.size(u.shard), u.kind == "root"
        last = Phase.exposed if root else Phase.unit_backward_last
        each = (Phase.exposed if root else Phase.unit_backward_each) if reduce_each else last
        if shard > 1:
            gathered = u.elements * shape.gather_width
            gathered -= u.fp8_elements * (shape.gather_width - 1)
            phases = (Phase.exposed,) if root else (Phase.unit_forward, Phase.unit_backward)
            gathers += [
                Collective("all_gather", "parameters", gathered, u.count * accum, u.shard, when)
                for when in phases
            ]
            size = u.elements * shape.reduce_width
            reductions.append(
                Collective("reduce_scatter", "gradients", size, u.count * scatters, u.shard, each)
            )
            n_fp8 += u.fp8_linears * u.count
        if d.size(u.replicate) > 1:  # each rank's shard, all-reduced across the replicas
            size = u.elements // shard * shape.reduce_width
            replicas.append(Collective("all_reduce", "gradients", size, u.count, u.replicate, last))
    scales = []
    if n_fp8:
        size, group = n_fp8 * GRAD_NORM_BYTES, units[-1].shard
        scales.append(Collective("all_reduce", "fp8 scales", size, 1, group, Phase.exposed))
    return gathers + reductions + scales + replicas


# -- expert parallelism -----------------------------------------------------------------------


def expert_all_to_all(m: ModelConfig, layout: LayoutPlan, shape: StepShape) -> list[Collective]:
    """EP's all-to-alls over the EP group, per MoE block and micro-step
    (train/parallel/expert_parallel.py):

    - forward: the token counts per expert (n_experts int64), then the tokens to their experts
      (dispatch) and the experts' outputs back (combine), each top_k rows of d_model per token
      (capacity_factor: n_experts x capacity rows, padded);
    - backward: the same two in reverse, carrying their gradients.
    A checkpointed MoE block replays its forward up to the combine (the last tensor its
    backward needs comes after it): counts, dispatch and combine once more. Rows are in the
    residual stream's width: 16-bit under bf16/fp16 (FSDP2's 16-bit parameters), else fp32.
    """
    tokens = shape.micro_batch * shape.seq_len
    capacity = expert_capacity(m, tokens)
    rows = tokens * m.top_k if capacity is None else m.n_experts * capacity
    nbytes = rows * m.d_model * (2 if shape.sixteen_bit else 4)
    blocks = len(moe_layers(m)) * shape.accum_steps
    replays = sum(is_moe_layer(m, i) for i in layout.checkpointed) * shape.accum_steps
    group, phase = ("ep",), Phase.expert_dispatch
    return [
        Collective(
            "all_to_all", "expert splits", m.n_experts * SPLIT_BYTES, blocks + replays, group, phase
        ),
        Collective("all_to_all", "tokens", nbytes, 2 * (blocks + replays), group, phase),
        Collective("all_to_all", "token gradients", nbytes, 2 * blocks, group, phase),
    ]


# -- DeepSpeed ZeRO ---------------------------------------------------------------------------


def _zero(m: ModelConfig, stage: int, n: int, shape: StepShape) -> list[Collective]:
    """DeepSpeed's collectives, as counted with DeepSpeed 0.19.8 (fp32, 2 and 4 ranks), in the
    width it runs the model in (16 bits under bf16/fp16).

    Stages 1 and 2 all-reduce the whole gradients (each rank then keeps its partition):
    stage 1 once per step, stage 2 at every micro-step (both with overlap_comm off, DeepSpeed's
    default for them: on the critical path); both all-gather the updated parameters once per
    step. Stage 3 all-gathers each block's parameters once per micro-step and keeps them for
    backward while the model is within ZERO3_MAX_REUSE_DISTANCE (a larger model is gathered
    again for backward, the ZeRO paper's 2x, approximated here as all of it), so a
    checkpointed block's replay gathers nothing; it reduce-scatters gradients at every
    micro-step. DeepSpeed takes the gradient norm whether it clips or not: one float32
    all-reduce per step (stage 3: two).
    """
    if n == 1:
        return []
    width = 2 if shape.sixteen_bit else 4
    accum, group = shape.accum_steps, ("dp_shard",)
    total = numel(all_param_shapes(m))
    params = total * width
    if stage in (1, 2):
        reduce_calls = accum if stage == 2 else 1
        return [
            Collective("all_reduce", "gradients", params, reduce_calls, group, Phase.exposed),
            Collective("all_reduce", "grad norm", GRAD_NORM_BYTES, 1, group, Phase.exposed),
            Collective("all_gather", "parameters", params, 1, group, Phase.exposed),
        ]
    gathers = 1 if total <= ZERO3_MAX_REUSE_DISTANCE else 2
    block = numel(block_param_shapes(m)) * width
    rest = params - block * m.n_layers
    blocks = m.n_layers * accum
    out = [
        Collective("all_gather", "parameters", block, blocks, group, Phase.unit_forward),
        Collective("all_gather", "parameters", rest, gathers * accum, group, Phase.exposed),
        Collective("reduce_scatter", "gradients", block, blocks, group, Phase.unit_backward),
        Collective("reduce_scatter", "gradients", rest, accum, group, Phase.exposed),
        Collective("all_reduce", "grad norm", 2 * GRAD_NORM_BYTES, 1, group, Phase.exposed),
    ]
    if gathers == 2:
        out.append(
            Collective("all_gather", "parameters", block, blocks, group, Phase.unit_backward)
        )
    return out


# -- pipelines --------------------------------------------------------------------------------


def stage_param_shapes(
    m: ModelConfig, plan: PipelinePlan, stage: int, tp: int = 1
) -> list[tuple[int, ...]]:
    """Parameter shapes of one stage, as one TP rank holds them: its blocks, plus the
    embedding (first) or the final norm and head (last), vocab/tp rows each."""
    shapes = block_param_shapes(m, tp) * plan.layers_per_stage[stage]
    if stage == 0:
        shapes = [(m.vocab_size // tp, m.d_model), *shapes]
    if stage == plan.stages - 1:
        shapes = [*shapes, (m.d_model,), (m.vocab_size // tp, m.d_model)]
    return shapes


def _pipeline(m: ModelConfig, layout: LayoutPlan, shape: StepShape, r: int) -> list[Collective]:
    """Pipeline rank ``r`` (every rank of its stage group moves the same):

    - send_recv: the activations its stages send to the next stage's rank and the gradients
      they send back, each [rows, seq_len, d_model] over a step's microbatches (so independent
      of how many microbatches: they split the same rows); seq_len / tp under TP. Width: the
      residual stream's, fp32 except under pp_fsdp's 16-bit parameters (the embedding's
      output, hence the stream).
    - tp > 1: its stages' TP collectives (_tensor_parallel over TpPart: its blocks, the
      embedding's on the first stage's rank, the head's and the loss's on the last's), per
      microbatch of the schedule; without sequence parallelism also the scatter/gather's
      all-gather of the whole stream at each stage boundary (forward on the receiving stage,
      backward on the sending one: train/parallel/pipeline_stages.py TransformerStage).
    - the loss (float32) from the last stage to the others, every step (the loop logs it from
      rank 0, which may hold no last stage); the gradient norm when clipping.
    - pp with dp_replicate > 1: DDP's all-reduce of the stage's fp32 gradients, once per step
      (PipelineStage reduces on the last microbatch's backward only).
    - pp_fsdp with dp_shard > 1: each stage's units gathered once per step (not resharded after
      forward, nor after backward until the last microbatch) and their gradients
      reduce-scattered once, in fsdp's widths, dims padded to the shard count.
    """
    plan, d = layout.pipeline, layout.degrees
    fsdp = layout.row.gradient_sync is GradientSync.shard
    stream = 2 if fsdp and shape.sixteen_bit else 4
    # A data-parallel rank's rows, split into the schedule's microbatches.
    rows = shape.micro_batch * shape.accum_steps // plan.microbatches
    # Each TP rank sends its 1/tp of the sequence: under sequence parallelism the stream is
    # split already; without it, Megatron's scatter/gather splits it to send, and the next
    # stage all-gathers it over TP (its gradient's parts all-gathered back on the sender).
    activation = rows * shape.seq_len // d.tp * m.d_model * stream
    sends = plan.sends_per_microbatch(r) * plan.microbatches
    out = [Collective("send_recv", "activations", activation, sends, ("pp",), Phase.pipeline)]
    if d.tp > 1:
        mine = plan.stages_of(r)
        blocks = sum(plan.layers_per_stage[s] for s in mine)
        ids = {i for s in mine for i in plan.layer_ids(s)}
        ckpt = sum(1 for i in layout.checkpointed if i in ids)
        last = plan.stages - 1 in mine
        part = TpPart(blocks, ckpt, 0 in mine, last, rows, plan.microbatches)
        out += _tensor_parallel(m, layout, shape, part)
        if not layout.sequence_parallel:  # every stage boundary, on this rank's side of it
            gathers = sum((s > 0) + (s < plan.stages - 1) for s in mine) * plan.microbatches
            whole = rows * shape.seq_len * m.d_model * stream
            out.append(
                Collective("all_gather", "stage boundary", whole, gathers, ("tp",), Phase.exposed)
            )
    if plan.pp > 1:
        out.append(Collective("all_reduce", "loss", LOSS_BYTES, 1, ("pp",), Phase.exposed))
    if shape.grad_clip and d.world > 1:
        out.append(_grad_norm(GRAD_NORM_BYTES))
    shapes = [s for stage in plan.stages_of(r) for s in stage_param_shapes(m, plan, stage, d.tp)]
    if not fsdp and d.dp_replicate > 1:
        size = numel(shapes) * GRADIENT_BYTES
        out.append(Collective("all_reduce", "gradients", size, 1, ("dp_replicate",), Phase.exposed))
    if fsdp and d.dp_shard > 1:
        padded = numel(shapes, pad_to=d.dp_shard)
        group = ("dp_shard",)
        out += [
            Collective(
                "all_gather",
                "parameters",
                padded * shape.gather_width,
                1,
                group,
                Phase.unit_forward,
            ),
            Collective(
                "reduce_scatter",
                "gradients",
                padded * shape.reduce_width,
                1,
                group,
                Phase.unit_backward_last,
            ),
        ]
    return [c for c in out if c.calls]
