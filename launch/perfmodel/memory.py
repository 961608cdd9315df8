"""Memory per rank by layout: what it holds (train/measure/held_memory.py's four kinds) and
what it peaks at.

Held bytes follow train/measure/held_memory.py: each tensor once, local shards only, the
busiest rank (rank 0 holds the rounded-up shard of every FSDP tensor), measured at the end of
backward.
Torch layouts (ddp, fsdp, hsdp, tp, tp_fsdp) keep fp32 parameters under autocast and AdamW
steps them in place (no master copy; two fp32 moments and a 4-byte step counter per
parameter tensor). DeepSpeed (zero1-3) runs the model in 16 bits under bf16/fp16 and keeps an
fp32 master partition; stage 1 partitions the optimizer state, 2 also the gradients, 3 also
the parameters (ZeRO paper, Rajbhandari et al. 2020).

Peak adds what lives only during a step: activations saved for backward (counted per tensor
of train/model/transformer.py's block, below), FSDP's gathered units, DDP's gradient buckets, and a
reserve for the CUDA context, NCCL buffers and allocator fragmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

from train.spec import shapes
from train.spec.catalog import GradientSync
from train.spec.config import ModelConfig
from train.spec.degrees import LayoutPlan
from train.spec.precision import SIXTEEN_BIT
from train.spec.traffic import fsdp_units

# Not usable for tensors: CUDA context, cuBLAS workspaces and NCCL buffers (about 1-2 GB on
# a Hopper node) plus allocator fragmentation. Assumed: 2 GiB + 5% of the device memory CUDA
# shows (hardware.VISIBLE_MEMORY_SHARE of the profile's GiB). Checked against a published run
# that fits (docs/performance-model.md: torchtitan's Llama 2 13B, 64 x A100 80GB, FSDP, seq
# 4096, micro batch 2, no recomputation).
RESERVED_BYTES = 2 * 2**30
RESERVED_SHARE = 0.05
ADAM_STEP_BYTES = 4  # torch AdamW's float32 step counter, one per parameter tensor


# What a rank holds, in train/measure/held_memory.py's names (its total_bytes sums them).
HELD_KINDS = ("param_bytes", "grad_bytes", "optimizer_state_bytes", "master_weight_bytes")


@dataclass(frozen=True)
class MemoryEstimate:
    param_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    master_weight_bytes: int
    activation_bytes: int  # saved for backward at the peak (one micro-batch)
    transient_bytes: int  # gathered FSDP units, DDP buckets
    capacity_bytes: float | None  # usable device memory (None: unknown)

    @property
    def held_bytes(self) -> int:
        """The measured summary's total_bytes: the HELD_KINDS summed."""
        return sum(getattr(self, kind) for kind in HELD_KINDS)

    @property
    def peak_bytes(self) -> int:
        return self.held_bytes + self.activation_bytes + self.transient_bytes

    @property
    def fits(self) -> bool:
        return self.capacity_bytes is None or self.peak_bytes <= self.capacity_bytes

    @property
    def headroom_bytes(self) -> float | None:
        return None if self.capacity_bytes is None else self.capacity_bytes - self.peak_bytes

    def as_dict(self) -> dict:
        """The measured summary's names (total_bytes: what the rank holds), then the rest."""
        out = {kind: getattr(self, kind) for kind in HELD_KINDS}
        out["total_bytes"] = self.held_bytes
        for name in ("activation_bytes", "transient_bytes", "peak_bytes", "capacity_bytes", "fits"):
            out[name] = getattr(self, name)
        return out


def usable_bytes(hbm_bytes: float | None) -> float | None:
    if not hbm_bytes:
        return None
    return hbm_bytes * (1 - RESERVED_SHARE) - RESERVED_BYTES


def local_param_shapes(m: ModelConfig, plan: LayoutPlan) -> list[tuple[int, ...]]:
    """Shapes one rank stores: TP splits the block matrices; FSDP splits dim 0 of every
    tensor across dp_shard, rounded up (the busiest rank)."""
    d = plan.degrees
    local = shapes.all_param_shapes(m, d.tp, d.ep)
    if plan.row.shards_parameters and d.dp_shard > 1:
        local = [(-(-s[0] // d.dp_shard), *s[1:]) for s in local]
    return local


def held_memory(m: ModelConfig, plan: LayoutPlan, precision: str) -> tuple[int, int, int, int]:
    """(param, grad, optimizer state, master weight) bytes of the busiest rank. FSDP2 (and
    EP) layouts hold their units' shards (train/spec/traffic.py fsdp_units: each padded to its
    shard group, split over it)."""
    if plan.row.deepspeed:
        return _zero_held(m, plan.row.zero_stage, plan.degrees.dp_shard, precision)
    local = local_param_shapes(m, plan)
    elements = shapes.numel(local)
    if plan.row.shards_parameters or plan.row.expert_parallel:
        d = plan.degrees
        elements = sum(u.elements // d.size(u.shard) * u.count for u in fsdp_units(m, plan))
    params = elements * 4
    optimizer = 2 * params + ADAM_STEP_BYTES * len(local)
    return params, params, optimizer, 0


def _zero_held(m: ModelConfig, stage: int, n: int, precision: str) -> tuple[int, int, int, int]:
    width = 2 if precision in SIXTEEN_BIT else 4
    total = shapes.count_params(m)
    part = -(-total // n)
    params = (part if stage == 3 else total) * width
    grads = (total if stage == 1 else part) * width
    optimizer = 2 * part * 4 + ADAM_STEP_BYTES  # one flat fp32 group per rank
    return params, grads, optimizer, part * 4


# Bytes per vocabulary entry and token at the loss's peak without TP (activation_bytes): its
# saved fp32 log-softmax and the two fp32 gradients its backward allocates. Measured on torch
# 2.13 (CPU, 2026-12-01; tests/unit/test_perfmodel_counts.py tracks the live storages while the
# runtime's cross_entropy_loss runs over bf16 logits): after the forward only the fp32
# log-softmax is held, and the backward peaks at three of its size. Until then 10 for 16-bit
# runs (the logits and the fp32 copy counted as saved, the backward's gradients not).
LOSS_BACKWARD_PEAK_PER_VOCAB = 12
LOSS_SAVED_PER_VOCAB = 4  # the fp32 log-softmax the forward keeps, with and without TP
# Under TP (DTensor's loss_parallel, torch/distributed/tensor/parallel/loss.py, torch 2.13):
# the forward's log-softmax keeps its fp32 result (4); the backward
# (_nll_loss_and_log_softmax_backward: (zeros_like(x) + exp(x)) * grad_output, with x the
# saved log-softmax) holds x, the zeros with the targets scattered in, and the sum, and
# writes the product: 16. Counted from the code; until 2026-12-01 10 for 16-bit runs.
LOSS_BACKWARD_PEAK_PER_VOCAB_TP = 16


def activation_bytes(
    m: ModelConfig,
    plan: LayoutPlan,
    micro_batch: int,
    seq_len: int,
    precision: str,
    *,
    head: bool = True,
    backward_peak: bool = True,
) -> int:
    """Bytes saved for backward by one micro-batch, at the start of backward
    (``backward_peak``: with what backward adds for the one micro-batch it runs, the block a
    checkpointed backward rebuilds and the loss's gradients beyond its saved log-softmax;
    a pipeline's other in-flight microbatches hold neither: pipelined.stage_memory).

    Per token of a block (train/model/transformer.py), with a = the matmul width, r = the residual
    stream's (fp32 under autocast over fp32 parameters; 16 bits where the parameters the
    blocks run on are 16-bit: FSDP2's gathered units, DeepSpeed's 16-bit model): the two
    norm inputs (2r d) and outputs cast for the matmuls (2a d); q, k, v after rope and GQA's
    repeat, and the attention output (4a q); w1 and w3 outputs, silu(w1) and the product
    (4a f). TP splits the head-wise and MLP terms; sequence parallelism also the norm terms.
    A checkpointed block keeps its input only (r d), and backward rebuilds one block at a
    time. The head adds the final norm (r d + a d) and the loss. Without TP, the loss's own
    peak (LOSS_BACKWARD_PEAK_PER_VOCAB): F.cross_entropy over the logits' fp32 copy saves
    only its fp32 log-softmax (4 V; the logits and their copy are freed after the forward),
    and its backward, the first thing backward runs while every saved tensor is still held,
    allocates two fp32 gradients of that size (nll_loss's, then log_softmax's): 12 V. Under
    TP (vocab-parallel head, DTensor's loss_parallel): LOSS_BACKWARD_PEAK_PER_VOCAB_TP, the
    vocabulary split over TP.
    """
    t = plan.degrees.tp
    a = 2 if precision in SIXTEEN_BIT else 4
    sixteen_bit_params = plan.row.deepspeed or plan.row.shards_parameters
    r = a if sixteen_bit_params else 4
    q = m.n_heads * shapes.head_dim(m)
    norm_split = t if plan.sequence_parallel and t > 1 else 1
    kept_input = r * m.d_model / norm_split
    saved = set(range(m.n_layers)) - set(plan.checkpointed)

    def block(layer: int) -> float:
        ffn = 4 * a * _ffn_rows(m, layer) / t
        return (2 * r + 2 * a) * m.d_model / norm_split + 4 * a * q / t + ffn

    per_token = sum(block(i) for i in saved) + (m.n_layers - len(saved)) * kept_input
    if backward_peak and len(saved) < m.n_layers:
        per_token += max(block(i) for i in range(m.n_layers))  # the one being recomputed
    if head:  # a pipeline stage without the head has none of it
        loss = LOSS_BACKWARD_PEAK_PER_VOCAB if t == 1 else LOSS_BACKWARD_PEAK_PER_VOCAB_TP
        loss = loss if backward_peak else LOSS_SAVED_PER_VOCAB
        per_token += (r + a) * m.d_model / norm_split + loss * m.vocab_size / t
    return int(per_token * micro_batch * seq_len)


def _ffn_rows(m: ModelConfig, layer: int) -> float:
    """Width x rows of a token's FFN activations in block ``layer`` (in units of d-wide
    elements: a dense SwiGLU's f; an MoE block's top_k routed experts and shared experts,
    plus its dispatched and combined copies of the token, 2 top_k x d / 4 in these units)."""
    if not shapes.is_moe_layer(m, layer):
        return m.ffn_hidden
    width = shapes.expert_hidden(m)
    return (m.top_k + m.n_shared_experts) * width + m.top_k * m.d_model / 2


def _largest_block(m: ModelConfig, tp: int, ep: int) -> int:
    """Elements of the largest block as one TP / EP rank holds it."""
    return max(shapes.numel(shapes.layer_param_shapes(m, i, tp, ep)) for i in range(m.n_layers))


def transient_bytes(m: ModelConfig, plan: LayoutPlan, precision: str) -> int:
    """Buffers a step allocates besides the held tensors and activations."""
    d = plan.degrees
    row = plan.row
    units = fsdp_units(m, plan) if row.shards_parameters or row.expert_parallel else []
    if units:
        # Two gathered blocks (the running one, the prefetched one) with their experts, the
        # root (kept through the micro-step), and one block's unsharded gradients before its
        # reduce-scatter. FSDP2 gathers in the compute dtype (train/parallel/fsdp.py); a
        # shard dim of one rank copies each unit into its unsharded tensor all the same
        # (torch's world-size-1 path), so ep's units are gathered copies too.
        width = 2 if precision in SIXTEEN_BIT else 4
        gathered = {u.kind: u.elements for u in units}
        block = max((u.elements for u in units if u.kind == "block"), default=0)
        block += gathered.get("experts", 0)
        return (3 * block + gathered.get("root", 0)) * width
    if row.zero_stage == 3 and d.dp_shard > 1:
        width = 2 if precision in SIXTEEN_BIT else 4
        return 3 * _largest_block(m, 1, 1) * width
    if row.gradient_sync is GradientSync.replicate and d.dp_replicate > 1:
        # DDP copies gradients into its bucket buffers (gradient_as_bucket_view=False).
        return shapes.numel(local_param_shapes(m, plan)) * 4
    return 0


def estimate_memory(
    m: ModelConfig,
    plan: LayoutPlan,
    *,
    micro_batch: int,
    seq_len: int,
    precision: str,
    hbm_bytes: float | None,
    unsharded_grads: bool = False,
    reduce_width: int = 4,
) -> MemoryEstimate:
    """``unsharded_grads``: FSDP keeps every micro-step's unsharded gradients, in its reduce
    dtype (``reduce_width`` bytes: FSDP2 upcasts a 16-bit gradient to an fp32 reduce dtype
    and accumulates a bf16 one as it is), until the step's last
    (parallel.fsdp_reduce_every_micro_step=false with accumulation)."""
    params, grads, optimizer, masters = held_memory(m, plan, precision)
    d = plan.degrees  # unsharded: all of the model a TP / EP rank holds
    kept = shapes.numel(shapes.all_param_shapes(m, d.tp, d.ep)) * reduce_width
    # Under TP the embedding's gradient is kept whole (DTensor's embedding backward leaves it
    # Replicate; FSDP2 brings it to the parameter's placement only when it reduces).
    kept += m.vocab_size * m.d_model * (d.tp - 1) // d.tp * reduce_width
    kept = kept if unsharded_grads else 0
    return MemoryEstimate(
        param_bytes=params,
        grad_bytes=grads,
        optimizer_state_bytes=optimizer,
        master_weight_bytes=masters,
        activation_bytes=activation_bytes(m, plan, micro_batch, seq_len, precision),
        transient_bytes=transient_bytes(m, plan, precision)
        + kept
        + reduce_scatter_buffer_bytes(m, plan, reduce_width)
        + divide_copy_bytes(m, plan, reduce_width),
        capacity_bytes=usable_bytes(hbm_bytes),
    )


def reduce_scatter_buffer_bytes(m: ModelConfig, plan: LayoutPlan, reduce_width: int) -> int:
    """FSDP2's reduce-scatter input of one unit, beside the unit's unsharded gradients (which
    transient_bytes counts): torch 2.13's foreach_reduce (_fsdp_collectives.py) allocates
    the whole unit's input in the reduce dtype and copies the gradients in before it frees
    them, and the comm context holds that input until the next unit's post-backward frees it
    (reduce_scatter_states, reduce_scatter_max_input_buffers 1: _fsdp_param_group.py), so
    one unit's input is alive while the next unit's backward runs (one for the whole model:
    the comm context is the root's, _fsdp_state.py _init_shared_state). Its output, 1/shard
    of a unit, becomes the sharded gradient (held) or is added to it and freed: not counted."""
    if not (plan.row.shards_parameters or plan.row.expert_parallel):
        return 0
    # One comm context serves every FSDP state under the root, with a cap of one input: a
    # block's and its experts' inputs are never alive together (the largest unit's is).
    units = [u.elements for u in fsdp_units(m, plan) if u.kind in ("block", "experts")]
    return max(units, default=0) * reduce_width


def divide_copy_bytes(m: ModelConfig, plan: LayoutPlan, reduce_width: int) -> int:
    """The temporary FSDP2 makes reducing the routed experts where their shard dim has one
    rank (ep; ep_fsdp at dp_shard 1) with the gradient divide factor the layout sets
    (train/parallel/expert_parallel.py): torch 2.13's world-size-1 path writes
    ``reduce_scatter_input / gradient_divide_factor`` into its output
    (_fsdp_collectives.py foreach_reduce), a new tensor of one experts unit's gradients in
    the reduce dtype; with more ranks it divides in place."""
    if not plan.row.expert_parallel or plan.degrees.dp_shard > 1:
        return 0
    experts = [u.elements for u in fsdp_units(m, plan) if u.kind == "experts"]
    return max(experts, default=0) * reduce_width
