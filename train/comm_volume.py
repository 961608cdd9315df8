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
checkpointing) and DeepSpeed 0.19.8's zero1-3: tests/test_parallel.py counts the bytes of
every collective during real 2-rank steps and compares them with these (hsdp 2x2, tp_fsdp
2x2 with and without SP, fsdp and zero3 at 4 ranks matched too, checked by hand). Two parts
are models rather than checked counts: above 1e9 parameters ZeRO-3 is assumed to gather
everything twice per micro-step (see _zero), and under autocast TP's activations are counted
at the compute dtype's width although some backward collectives may run in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

from train.config import ModelConfig
from train.parallel.degrees import ZERO_STAGES, LayoutPlan
from train.parallel.zero import ZERO3_MAX_REUSE_DISTANCE

GRAD_NORM_BYTES = 4  # the global gradient norm's float32 scalar


@dataclass(frozen=True)
class CommVolume:
    all_reduce: int = 0
    all_gather: int = 0
    reduce_scatter: int = 0

    def __add__(self, other: CommVolume) -> CommVolume:
        return CommVolume(
            self.all_reduce + other.all_reduce,
            self.all_gather + other.all_gather,
            self.reduce_scatter + other.reduce_scatter,
        )

    def __mul__(self, times: int) -> CommVolume:
        return CommVolume(
            self.all_reduce * times, self.all_gather * times, self.reduce_scatter * times
        )

    @property
    def total(self) -> int:
        return self.all_reduce + self.all_gather + self.reduce_scatter

    def as_dict(self) -> dict[str, int]:
        return {
            "all_reduce": self.all_reduce,
            "all_gather": self.all_gather,
            "reduce_scatter": self.reduce_scatter,
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
) -> CommVolume:
    """Bytes per rank per optimizer step of ``layout`` (see the module docstring).

    ``precision`` is the resolved one. Parameters and gradients travel as fp32 (the master
    weights torch layouts keep under autocast) except under DeepSpeed bf16/fp16, which runs
    the model itself in 16 bits; TP's activations travel at the compute dtype's width.
    """
    sixteen_bit = precision in ("bf16", "fp16", "fp8")
    param_bytes = 2 if sixteen_bit and layout.name in ZERO_STAGES else 4
    activation_bytes = 2 if sixteen_bit else 4
    d = layout.degrees
    if layout.name in ZERO_STAGES:
        return _zero(model, ZERO_STAGES[layout.name], d.dp_shard, accum_steps, param_bytes)
    volume = CommVolume()
    if d.tp > 1:
        activation = micro_batch * seq_len * model.d_model * activation_bytes
        volume += _tensor_parallel(model, layout, param_bytes)
        volume += _tp_per_micro_step(model, layout, activation) * accum_steps
    if layout.name in ("fsdp", "hsdp", "tp_fsdp"):
        volume += _fsdp(model, d.dp_replicate, d.dp_shard, d.tp, accum_steps, param_bytes)
    elif d.dp_replicate > 1:  # ddp
        volume += CommVolume(all_reduce=_numel(_all_params(model)) * param_bytes)
    if grad_clip and (d.dp_shard > 1 or d.tp > 1):
        volume += CommVolume(all_reduce=GRAD_NORM_BYTES)
    return volume


# -- parameter shapes, as train/model.py builds them ------------------------------------------


def _block_params(m: ModelConfig, tp: int = 1) -> list[tuple[int, ...]]:
    """A block's parameter shapes as one tensor-parallel rank holds them (Linear: out, in)."""
    hd = m.d_model // m.n_heads
    q, kv, f = m.n_heads * hd // tp, m.n_kv_heads * hd // tp, m.ffn_hidden // tp
    d = m.d_model
    return [(d,), (q, d), (kv, d), (kv, d), (d, q), (d,), (f, d), (d, f), (f, d)]


def _root_params(m: ModelConfig) -> list[tuple[int, ...]]:
    """Embedding, final norm and head (one matrix when tied)."""
    head = [] if m.tie_embeddings else [(m.vocab_size, m.d_model)]
    return [(m.vocab_size, m.d_model), (m.d_model,), *head]


def _all_params(m: ModelConfig) -> list[tuple[int, ...]]:
    return _block_params(m) * m.n_layers + _root_params(m)


def _numel(shapes: list[tuple[int, ...]], pad_to: int = 1) -> int:
    """Elements of ``shapes``, each dim 0 padded to a multiple of ``pad_to`` (FSDP's shards)."""
    total = 0
    for shape in shapes:
        rows = -(-shape[0] // pad_to) * pad_to
        rest = 1
        for dim in shape[1:]:
            rest *= dim
        total += rows * rest
    return total


# -- per layout -------------------------------------------------------------------------------


def _fsdp(m: ModelConfig, replicate: int, shard: int, tp: int, accum: int, width: int):
    """FSDP2 units: one per block (gathered for forward and again for backward), and the root
    (gathered once per micro-step: it is not freed between its forward and backward).
    Gradients are reduce-scattered once per step (no_sync on earlier micro-steps), then, on a
    2-D mesh, each shard is all-reduced across the replicas."""
    block = _numel(_block_params(m, tp), pad_to=shard)
    root = _numel(_root_params(m), pad_to=shard)
    volume = CommVolume()
    if shard > 1:
        gathered = (2 * m.n_layers * block + root) * accum
        volume += CommVolume(
            all_gather=gathered * width, reduce_scatter=(m.n_layers * block + root) * width
        )
    if replicate > 1:
        volume += CommVolume(all_reduce=(m.n_layers * block + root) // shard * width)
    return volume


def _tp_per_micro_step(m: ModelConfig, layout: LayoutPlan, activation: int) -> CommVolume:
    """Activation collectives of one micro-step (each [micro_batch, seq_len, d_model]).

    Per block, forward: without SP one all-reduce after wo and one after w2; with SP an
    all-gather before attention and MLP and a reduce-scatter after each. Backward mirrors
    forward. A checkpointed block replays its forward collectives during backward. With SP
    two more all-gathers: the last block's output before the final norm (forward) and the
    first block's input gradient (backward).
    """
    forwards = 2 * m.n_layers + len(layout.checkpointed)  # forward passes' collective pairs
    backwards = 2 * m.n_layers
    if not layout.sequence_parallel:
        return CommVolume(all_reduce=(forwards + backwards) * activation)
    return CommVolume(
        all_gather=(forwards + backwards + 2) * activation,
        reduce_scatter=(forwards + backwards) * activation,
    )


def _tensor_parallel(m: ModelConfig, layout: LayoutPlan, width: int) -> CommVolume:
    """Once per step: with SP, the two norm weights of every block are replicated but their
    gradients partial, so each is all-reduced (train/parallel/layout.py)."""
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
