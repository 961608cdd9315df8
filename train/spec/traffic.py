"""Communication volume per step implied by a layout, computed from the model and the layout.

Accounting convention: bytes per rank per optimizer step (every micro-step of the gradient
accumulation included), summed per collective kind, where each collective call counts

- all_reduce: the size of the tensor each rank reduces (its input, equal to its output);
- all_gather: the size of the gathered result, the whole tensor (group size x each input);
- reduce_scatter: the size of the input, the whole tensor (group size x each output).

These are the buffer sizes nccl-tests calls "size". The bytes a rank actually sends over its
links ("bus bytes") follow from them for a group of n ranks: size x 2(n-1)/n for all-reduce,
size x (n-1)/n for all-gather and reduce-scatter. A collective over a group of one rank is
never issued and counts nothing. Not counted, because they are not part of a step: one-time
setup (DDP's initial broadcast, TP's distribution of weights) and the loss all-reduce that
rank 0 logs.

Exact in fp32 for ddp, fsdp, hsdp, tp (with and without sequence parallelism and activation
checkpointing) and DeepSpeed 0.19.8's zero1-3: tests/integration/test_parallel.py counts the
bytes of every collective during real 2-rank steps and compares them with these (hsdp 2x2,
tp_fsdp 2x2 with and without SP, fsdp and zero3 at 4 ranks matched too, checked by hand).
Exact under bf16 autocast on 2 CPU ranks for fsdp (fp32 and bf16 reduce), hsdp, tp, tp + SP
and tp_fsdp + SP with checkpointing (tests/integration/test_meta_init_and_16bit_bytes.py):
FSDP2 gathers in the compute dtype and reduces in parallel.fsdp_reduce_dtype; TP moves
16-bit matmul outputs but fp32 norm outputs and residual stream, except under tp_fsdp, whose
16-bit parameters make the whole stream 16-bit. fp16 follows the same rules, unchecked.
Models rather than checked counts: above 1e9 parameters ZeRO-3 is assumed to gather
everything twice per micro-step (see _zero); torchao's fp8 all-gather (1 byte for fp8
linears, one amax all-reduce per step) is not counted on CPU ranks; and these dtypes were
counted on CPU, where autocast's op lists differ from CUDA's (train/model/transformer.py's RMSNorm pins
the one difference that would move bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from train.runtime.numerics import fp8_eligible
from train.spec.config import ModelConfig
from train.spec.degrees import ZERO3_MAX_REUSE_DISTANCE, ZERO_STAGES, LayoutPlan
from train.spec.shapes import all_param_shapes as _all_params
from train.spec.shapes import block_param_shapes as _block_params
from train.spec.shapes import numel as _numel
from train.spec.shapes import root_param_shapes as _root_params

GRAD_NORM_BYTES = 4  # the global gradient norm's float32 scalar
GRADIENT_BYTES = 4  # torch layouts keep fp32 parameters, so fp32 gradients, under autocast
FSDP_LAYOUTS = ("fsdp", "hsdp", "tp_fsdp")


@dataclass(frozen=True)
class CommVolume:
    all_reduce: int = 0
    all_gather: int = 0
    reduce_scatter: int = 0
    # Point-to-point (pipeline activations forward, their gradients back): the bytes this
    # rank sends; each transfer is counted once, at its sender (train/spec/stage_traffic.py).
    send_recv: int = 0

    def __add__(self, other: CommVolume) -> CommVolume:
        return CommVolume(
            self.all_reduce + other.all_reduce,
            self.all_gather + other.all_gather,
            self.reduce_scatter + other.reduce_scatter,
            self.send_recv + other.send_recv,
        )

    def __mul__(self, times: int) -> CommVolume:
        return CommVolume(
            self.all_reduce * times,
            self.all_gather * times,
            self.reduce_scatter * times,
            self.send_recv * times,
        )

    @property
    def total(self) -> int:
        return self.all_reduce + self.all_gather + self.reduce_scatter + self.send_recv

    def as_dict(self) -> dict[str, int]:
        return {
            "all_reduce": self.all_reduce,
            "all_gather": self.all_gather,
            "reduce_scatter": self.reduce_scatter,
            "send_recv": self.send_recv,
            "total": self.total,
        }


def comm_bytes_per_step(
    model: ModelConfig,
    layout: LayoutPlan,
    micro_batch: int,
    seq_len: int,
    accum_steps: int,
    grad_clip: bool,
    precision: str = "fp32",
    *,
    fsdp_reduce_dtype: str = "fp32",
    fp8_all_gather_min_dim: int | None = None,
) -> CommVolume:
    """Bytes per rank per optimizer step of ``layout`` (see the module docstring).

    ``precision`` is the resolved one. Under bf16/fp16/fp8 the dtypes that travel are:
    DDP gradients fp32 (fp32 master weights under autocast); DeepSpeed parameters and
    gradients 16-bit (it runs the model itself in 16 bits); FSDP2 all-gathers in the compute
    dtype and reduces in ``fsdp_reduce_dtype`` (train/parallel/fsdp.py). ``fp8_all_gather_min_dim``
    (torchao fp8 with FSDP's float8 all-gather): linears this wide gather in fp8, and their
    scales cost one all-reduce per step. TP's activations: see ``_tp_widths``.
    """
    sixteen_bit = precision in ("bf16", "fp16", "fp8")
    d = layout.degrees
    if layout.pipeline is not None:  # pp, pp_fsdp
        from train.spec.stage_traffic import pipeline_volume  # it imports this module

        return pipeline_volume(
            model,
            layout,
            rows_per_rank=micro_batch * accum_steps,
            seq_len=seq_len,
            sixteen_bit=sixteen_bit,
            grad_clip=grad_clip,
            fsdp_reduce_dtype=fsdp_reduce_dtype,
        )
    if layout.name in ZERO_STAGES:
        width = 2 if sixteen_bit else 4
        return _zero(model, ZERO_STAGES[layout.name], d.dp_shard, accum_steps, width)
    fsdp = layout.name in FSDP_LAYOUTS
    volume = CommVolume()
    if d.tp > 1:
        activation = micro_batch * seq_len * model.d_model
        widths = _tp_widths(sixteen_bit, fsdp_16bit_params=fsdp and sixteen_bit)
        volume += _tensor_parallel(model, layout, GRADIENT_BYTES)
        volume += _tp_per_micro_step(model, layout, activation, widths) * accum_steps
    if fsdp:
        widths = FsdpWidths(
            gather=2 if sixteen_bit else 4,
            reduce=2 if sixteen_bit and fsdp_reduce_dtype == "bf16" else 4,
            fp8_min_dim=fp8_all_gather_min_dim,
        )
        volume += _fsdp(model, d.dp_replicate, d.dp_shard, d.tp, accum_steps, widths)
    elif d.dp_replicate > 1:  # ddp
        volume += CommVolume(all_reduce=_numel(_all_params(model)) * GRADIENT_BYTES)
    if grad_clip and (d.dp_shard > 1 or d.tp > 1):
        volume += CommVolume(all_reduce=GRAD_NORM_BYTES)
    return volume


@dataclass(frozen=True)
class TpWidths:
    """Bytes per element of TP's activation collectives, by what they carry."""

    matmul_out: int  # a row-wise matmul's partial output, and its gradient
    norm_out: int  # a norm's output (the matmuls' input), and its gradient
    stream: int  # the residual stream between blocks, and its gradient


def _tp_widths(sixteen_bit: bool, *, fsdp_16bit_params: bool) -> TpWidths:
    """fp32: everything 4 bytes. Under autocast with fp32 parameters (tp) the residual stream
    and the norms' outputs stay fp32 (DTensor redistributes them before autocast casts the
    matmul inputs, so their backward gradients are fp32 too); only the matmuls' outputs are
    16-bit. Under FSDP2's 16-bit parameters (tp_fsdp) the embedding's output, hence the whole
    stream, is 16-bit, and the norms return their input's dtype (train/model/transformer.py RMSNorm)."""
    if not sixteen_bit:
        return TpWidths(4, 4, 4)
    if fsdp_16bit_params:
        return TpWidths(2, 2, 2)
    return TpWidths(matmul_out=2, norm_out=4, stream=4)


@dataclass(frozen=True)
class FsdpWidths:
    gather: int  # bytes per element of the parameter all-gathers
    reduce: int  # of the gradient reduce-scatters and HSDP all-reduces
    fp8_min_dim: int | None = None  # float8 all-gather of the linears at least this wide


# -- per layout -------------------------------------------------------------------------------


def _fsdp(m: ModelConfig, replicate: int, shard: int, tp: int, accum: int, widths: FsdpWidths):
    """FSDP2 units: one per block (gathered for forward and again for backward), and the root
    (gathered once per micro-step: it is not freed between its forward and backward).
    Gradients are reduce-scattered once per step (no_sync on earlier micro-steps), then, on a
    2-D mesh, each shard is all-reduced across the replicas. With torchao's float8 all-gather
    the fp8 linears gather in 1 byte, and their scales are all-reduced once per step
    (precompute_float8_dynamic_scale_for_fsdp: one float32 amax per fp8 linear)."""
    block_shapes, root_shapes = _block_params(m, tp), _root_params(m)
    block, root = _numel(block_shapes, pad_to=shard), _numel(root_shapes, pad_to=shard)
    volume = CommVolume()
    if shard > 1:
        gathered_block = block * widths.gather
        n_fp8 = 0
        if widths.fp8_min_dim is not None:
            fp8 = [
                s
                for s in block_shapes
                if len(s) == 2 and fp8_eligible(s[1], s[0], widths.fp8_min_dim)
            ]
            n_fp8 = len(fp8) * m.n_layers
            gathered_block -= _numel(fp8, pad_to=shard) * (widths.gather - 1)
        gathered = (2 * m.n_layers * gathered_block + root * widths.gather) * accum
        volume += CommVolume(
            all_reduce=n_fp8 * GRAD_NORM_BYTES,
            all_gather=gathered,
            reduce_scatter=(m.n_layers * block + root) * widths.reduce,
        )
    if replicate > 1:
        volume += CommVolume(all_reduce=(m.n_layers * block + root) // shard * widths.reduce)
    return volume


def _tp_per_micro_step(
    m: ModelConfig, layout: LayoutPlan, activation: int, widths: TpWidths
) -> CommVolume:
    """Activation collectives of one micro-step (each [micro_batch, seq_len, d_model] elements).

    Per block, forward: without SP one all-reduce after wo and one after w2 (of the matmul
    outputs); with SP an all-gather of the norm's output before attention and MLP and a
    reduce-scatter of the matmul output after each. Backward mirrors forward: without SP the
    all-reduces carry the gradients of the norms' outputs, with SP the all-gathers carry the
    matmul outputs' gradients and the reduce-scatters the norm outputs'. With SP two more
    all-gathers of the residual stream: the last block's output before the final norm
    (forward) and the first block's input gradient (backward).

    A checkpointed block replays its forward during backward, but torch's non-reentrant
    checkpoint stops the replay once the last tensor backward needs is recomputed, before
    the block's final collective (after w2, whose output nothing saved depends on): so a
    replay costs one all-reduce (after wo) without SP, and with SP both all-gathers and one
    reduce-scatter.
    """
    n_ckpt = len(layout.checkpointed)
    per_pass = 2 * m.n_layers  # collectives (or pairs, with SP) per forward or backward pass
    if not layout.sequence_parallel:
        all_reduce = (per_pass + n_ckpt) * widths.matmul_out + per_pass * widths.norm_out
        return CommVolume(all_reduce=all_reduce * activation)
    all_gather = (
        (per_pass + 2 * n_ckpt) * widths.norm_out + per_pass * widths.matmul_out + 2 * widths.stream
    )
    reduce_scatter = (per_pass + n_ckpt) * widths.matmul_out + per_pass * widths.norm_out
    return CommVolume(
        all_gather=all_gather * activation, reduce_scatter=reduce_scatter * activation
    )


def _tensor_parallel(m: ModelConfig, layout: LayoutPlan, width: int) -> CommVolume:
    """Once per step: with SP, the two norm weights of every block are replicated but their
    gradients partial, so each is all-reduced (train/parallel/layout.py). The gradients are
    fp32 (FSDP2 returns them in the parameters' own dtype)."""
    if not layout.sequence_parallel:
        return CommVolume()
    return CommVolume(all_reduce=2 * m.n_layers * m.d_model * width)


def _zero(m: ModelConfig, stage: int, n: int, accum: int, width: int) -> CommVolume:
    """DeepSpeed's collectives, as counted with DeepSpeed 0.19.8 (fp32, 2 and 4 ranks).

    Stages 1 and 2 all-reduce the whole gradients (each rank then keeps its partition):
    stage 1 once per step, stage 2 at every micro-step; both all-gather the updated
    parameters once per step. Stage 3 all-gathers the parameters once per micro-step and
    keeps them for backward while the model is within stage3_max_reuse_distance (pinned in
    train/parallel/zero.py; a larger model is gathered again for backward, the ZeRO paper's
    2x, approximated here as all of it), so a checkpointed block's replay gathers nothing;
    it reduce-scatters gradients at every micro-step. DeepSpeed takes the gradient norm
    whether it clips or not: one float32 all-reduce per step (stage 3: two).
    """
    if n == 1:
        return CommVolume()
    numel = _numel(_all_params(m))
    params = numel * width
    if stage in (1, 2):
        reduced = params * (accum if stage == 2 else 1)
        return CommVolume(all_reduce=reduced + GRAD_NORM_BYTES, all_gather=params)
    gathers = 1 if numel <= ZERO3_MAX_REUSE_DISTANCE else 2
    return CommVolume(
        all_reduce=2 * GRAD_NORM_BYTES,
        all_gather=gathers * params * accum,
        reduce_scatter=params * accum,
    )
