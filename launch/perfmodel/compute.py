"""Compute time of one optimizer step on one rank: matmuls, attention, memory-bound work.

- matmuls: 6 FLOPs per matmul parameter per token (2 forward, 4 backward), plus 2 per
  parameter of each checkpointed block's replayed forward, at peak x the matmul fraction;
  TP splits the block matrices and the head (vocab-parallel, train/parallel/tensor_parallel.py);
- attention, by kernel (``attention``, project.attention): ``flash`` (what SDPA runs on CUDA)
  executes causal FlashAttention-2's FLOPs as its paper counts them (half of 4 H Q T forward,
  2.5 x that backward, the forward again per replayed block) at peak x the attention fraction
  (FA2's measured share); ``math`` (unfused: SDPA's math path, Megatron-LM before FA) runs the
  whole score matrix, 12 H Q T (+4 replayed), as batched GEMMs at the matmul rate and streams
  it through HBM: 22 bytes per score element and block at 16 bits (forward: write scores,
  softmax read + write, read probabilities; backward: read probabilities, write their
  gradient, softmax backward read 2 write 1, read the score gradient twice), 8 more per replay;
  ``flash_triton`` (FlashAttention in Triton, HazyResearch's flash_attn_triton.py, which
  llm-foundry's MPT ran as attn_impl: triton) executes flash's FLOPs, its forward 1.4 and its
  backward 2 times as long as FA2's (the FA2 paper, Dao 2023, section 4.1: FA2 is "around
  1.3-1.5x faster than FlashAttention in Triton in the forward pass and around 2x faster in
  the backward pass", on A100; the flash fraction stands for FA2's, and the ratios are ASSUMED
  to hold on other parts); ``flash_v1`` (FlashAttention's first CUDA kernels, 2022: what
  flash-attn 1.x and the stacks built on it in 2022-23 ran) executes the same FLOPs, both
  passes 2 times as long as FA2's (the FA2 paper's abstract: "around 2x speedup compared to
  FlashAttention"; its section 4.1 gives 1.7-3.0x over its benchmarks; A100, ASSUMED
  elsewhere);
- memory-bound work at the achievable HBM rate: elementwise kernels per token, autocast's
  weight casts and weight-gradient accumulation per micro-step, AdamW per step;
- a gap of hardware.KERNEL_GAP_S between consecutive kernels: per block the elementwise
  kernels counted from train/model/transformer.py (host.py's counts), its 7 GEMMs forward and
  14 backward, attention's one each way; replayed blocks their forward again.
Which kernels run is an input (Kernels): this project's runtime runs the defaults; a
published run the model is checked against names its own attention kernel, block
(``mpt``: llm-foundry's MPT; ``megatron``: Megatron-LM 2021's GPT; OTHER_BLOCKS: their
elementwise work, GEMMs and attention-score traffic differ from this project's block) and loss
(``fused``: flash_attn's cross-entropy kernel).
train.compile=true fuses the elementwise work: fewer bytes and kernels (the *_COMPILED counts).
fp8 runs the Linear layers precision.fp8.min_dim wide or wider at the fp8 peak, the rest in
bf16 (train/runtime/numerics.py's rule), and adds their casts into fp8 to the memory-bound
work and the kernel gaps (fp8.py: bytes and kernels counted from torchao's and TE's code).
The forward is a third of the block work, the backward two thirds (what overlap.py hides
communication behind).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from launch.perfmodel.fp8 import CastWork, Fp8Casts, cast_work
from launch.perfmodel.hardware import KERNEL_GAP_S, PartRates
from launch.perfmodel.host import (
    BACKWARD_KERNELS_PER_BLOCK,
    FORWARD_KERNELS_PER_BLOCK,
    OPTIMIZER_KERNELS_PER_TENSOR,
    host_micro_step,
)
from train.spec import shapes
from train.spec.config import ModelConfig
from train.spec.degrees import LayoutPlan
from train.spec.precision import SIXTEEN_BIT, fp8_eligible
from train.spec.traffic import Collective

# Bytes per token per block that elementwise kernels stream, counted from
# train/model/transformer.py under bf16 autocast (fp32 residual): forward 56 per d element (two
# norms read 4 + write 4 + cast to 2, rope on q and k, two residual adds) and 10 per f element
# (silu, product); backward about twice the forward. Scaled by width / 2 for fp32 runs.
ELEMENTWISE_D = 168
ELEMENTWISE_F = 30
# Of the d-element bytes, rope's (8 of the forward's 56 eager, 8 of 36 compiled) run on the
# rank's own heads (1/tp); the norms' and residual adds' on every token the rank holds: all
# of them under TP, 1/tp under sequence parallelism, which shards the sequence between the
# matmuls (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
# Models"; train/parallel/tensor_parallel.py).
ROPE_SHARE_OF_D = {False: 8 / 56, True: 8 / 36}  # by train.compile
HEAD_BYTES_PER_VOCAB = 20  # logits, fp32 copy, log-softmax and its gradient
# train.compile=true (inductor per block, and the loss; train/parallel/build.py): each chain of
# elementwise ops becomes one kernel that reads its inputs once and writes its outputs once.
# Forward per d element, counted from the same block (fp32 residual, 16-bit activations):
# norm + cast (read 4, write 2) = 6; rope on q and k (read 2, write 2 each) = 8; the attention
# residual add fused with the FFN norm (read 4 + 2, write 4 + 2) = 12; the last residual add
# (read 4 + 2, write 4) = 10: 36 against eager's 56. Per f element silu x product reads 2 + 2
# and writes 2: 6 against 10. The backward keeps eager's ratio to the forward. The compiled
# loss reads the logits and writes their gradient (2 + 2, with the logits' own write 2): no fp32
# copy, no log-softmax tensor. Kernels per block: those 5 forward regions (eager: 34), twice
# that backward (eager: 59). Derived from the block's code, not fitted; HBM_FRACTION (measured
# on eager kernels) is kept for the fused ones, which is conservative.
ELEMENTWISE_D_COMPILED = ELEMENTWISE_D * 36 / 56
ELEMENTWISE_F_COMPILED = ELEMENTWISE_F * 6 / 10
HEAD_BYTES_PER_VOCAB_COMPILED = 6
COMPILED_KERNELS_PER_BLOCK = (5, 10)  # forward, backward
# flash_attn's fused cross-entropy (xentropy, MPT's default loss_fn): the head GEMM writes the
# 16-bit logits (2), the forward kernel reads them (2), the backward kernel reads them again
# and writes their gradient (2 + 2): no fp32 copy, no log-softmax tensor.
HEAD_BYTES_PER_VOCAB_FUSED = 8
BLOCK_KERNELS = ("llama", "mpt", "megatron")
LOSS_KERNELS = ("torch", "fused")
# Autocast casts each fp32 weight to 16 bits once per autocast context (read 4, write 2):
# every micro-step in the runtime's loop (train/runtime/rank_step.py enters one per forward),
# but once per step under a pipeline, whose schedule runs all its microbatches in one context
# (train/parallel/pipeline_stages.py) where torch caches a leaf weight's cast (autocast's
# cached_cast; tests/unit/test_perfmodel_counts.py counts the casts torch runs). Every
# micro-step's backward turns the 16-bit weight gradient into the fp32 .grad (write 2, read 2,
# read + write 4): 12; fp32 runs only accumulate (8).
WEIGHT_CAST_BYTES = 6
WEIGHT_GRAD_BYTES_PER_MICRO_STEP = {"sixteen": 12, "fp32": 8}
# AdamW: read param, grad, two moments; write param and moments; read grad for the norm.
OPTIMIZER_BYTES_PER_PARAM = 32
# Executed attention FLOPs per 12 H Q T (the model FLOPs of forward + backward): FA2 skips the
# masked half and recomputes the scores in backward (backward = 2.5 x forward, its paper's
# count): (4 + 10) / 2 = 7; the math path computes every score: 4 + 8 = 12. A replay adds the
# forward again: 2 (flash) or 4 (math).
EXECUTED_ATTENTION = {
    "flash": (7 / 12, 2 / 4),
    "math": (1.0, 1.0),
    "flash_triton": (7 / 12, 2 / 4),  # the same causal skipping (its IS_CAUSAL loop bounds)
    "flash_v1": (7 / 12, 2 / 4),  # FA1's causal kernels skip the masked blocks too
}
ATTENTION_KERNELS = tuple(EXECUTED_ATTENTION)
# Forward and backward time against FA2's (module docstring): FlashAttention in Triton, the
# middle of the FA2 paper's 1.3-1.5 forward and its 2 backward; FlashAttention 1, its 2x.
FLASH_SLOWDOWN = {"flash_triton": (1.4, 2.0), "flash_v1": (2.0, 2.0)}
MATH_SCORE_BYTES = 22  # per score element and block, forward + backward, 16-bit
MATH_REPLAY_SCORE_BYTES = 8
GEMMS_PER_BLOCK = (7, 14)  # forward, backward (input and weight gradients)


@dataclass(frozen=True)
class BlockCounts:
    """The elementwise work of another stack's block, counted as this project's is: forward
    bytes per d element (x3 with backward) and per hidden MLP element, the hidden width per
    stand-in SwiGLU f (the same parameters, hence the same FLOPs), kernels and GEMMs per
    block (forward, backward), and bytes per attention score element its math path adds."""

    d_bytes: float  # forward + backward, per d element of a token
    hidden_bytes: float  # forward + backward, per hidden MLP element
    hidden_per_ffn: float
    kernels: tuple[int, int]  # elementwise, forward and backward
    gemms: tuple[int, int]
    score_bytes: float = 0.0  # per score element and block (math attention), 16-bit
    replay_score_bytes: float = 0.0


# llm-foundry's MPT as its benchmark yamls build it (scripts/train/yamls/pretrain/mpt-*.yaml,
# llmfoundry/models/mpt/modeling_mpt.py, layers/blocks.py, norm.py, ffn.py; eager, bf16
# autocast). Composer's FSDP mixed precision DEFAULT (the README's "MP Mode") sets param_dtype
# to the autocast dtype, so the embeddings' output, and with it the residual stream, is 16-bit
# (ours is fp32). Forward per d element: low_precision_layernorm's casts are then no-ops and
# it normalises in 16 bits (read 2, write 2), twice: 8; the two residual adds read 2 + 2 and
# write 2: 12; positions are learned and added once, at the embedding (learned_pos_emb; the
# README's parameter counts grow with the sequence by seq x d): no rope. 20 against our 56.
# Its MLP is GELU over 4d hidden elements (read 2, write 2 forward): 4 per hidden element.
# Backward twice the forward, as ours. Kernels per block forward: two layer norms, two adds
# and the GELU (5; backward twice that), and 4 GEMMs (Wqkv, out_proj, up_proj, down_proj; 8
# backward) against our 7 (14).
MPT_BLOCK = BlockCounts(d_bytes=3 * 20, hidden_bytes=3 * 4, hidden_per_ffn=3 / 2,
                        kernels=(5, 10), gemms=(4, 8))  # fmt: skip
# Megatron-LM's GPT of 2021 (megatron/model/transformer.py, fused_bias_gelu.py; fp16 weights
# and activations, fp32_residual_connection off, hidden and attention dropout 0.1 by default,
# bias-dropout-add and bias-GeLU fusion on). Forward per d element: two fused LayerNorms (read
# 2, write 2): 8; two bias-dropout-adds (read 2 + 2, write 2, the dropout mask 1): 14; the
# context's permute().contiguous() before the output projection (read 2, write 2): 4; learned
# positions, no rope: 26. Bias-GeLU over 4d hidden elements: 4 forward. Attention dropout on
# the probabilities, a kernel of its own after the fused softmax: read 2, write 2, mask 1
# forward, read 2 + 1 and write 2 backward: 10 per score element, 5 more per replay.
# Kernels per block forward: two LayerNorms, two bias-dropout-adds, bias-GeLU, the dropout and
# the copy (7; backward twice that); GEMMs: QKV, dense, fc1, fc2 (4; 8 backward).
MEGATRON_BLOCK = BlockCounts(d_bytes=3 * 26, hidden_bytes=3 * 4, hidden_per_ffn=3 / 2,
                             kernels=(7, 14), gemms=(4, 8), score_bytes=10,
                             replay_score_bytes=5)  # fmt: skip
OTHER_BLOCKS = {"mpt": MPT_BLOCK, "megatron": MEGATRON_BLOCK}


@dataclass(frozen=True)
class Kernels:
    """Which kernels a step runs where stacks differ. This project's runtime runs the defaults;
    a published run the model is checked against names its own (bench/published_points.py)."""

    attention: str = "flash"
    """ATTENTION_KERNELS: flash (SDPA on CUDA), math (unfused), flash_triton, flash_v1."""
    block: str = "llama"
    """BLOCK_KERNELS: llama (train/model/transformer.py: fp32 RMSNorm, rope, SwiGLU), mpt
    (llm-foundry's MPT: 16-bit LayerNorm, learned positions, GELU MLP) or megatron (Megatron-LM
    2021's GPT: fused LayerNorm, bias-dropout-add and bias-GeLU, attention dropout):
    OTHER_BLOCKS."""
    loss: str = "torch"
    """LOSS_KERNELS: torch (log-softmax + NLL over fp32 logits) or fused (flash_attn's
    cross-entropy kernel: HEAD_BYTES_PER_VOCAB_FUSED)."""

    def __post_init__(self) -> None:
        for what, value, allowed in (
            ("attention", self.attention, ATTENTION_KERNELS),
            ("block", self.block, BLOCK_KERNELS),
            ("loss", self.loss, LOSS_KERNELS),
        ):
            if value not in allowed:
                raise ValueError(f"{what} kernel {value!r}: one of {', '.join(allowed)}")


RUNTIME_KERNELS = Kernels()  # what this project's runtime runs


@dataclass(frozen=True)
class ComputeTime:
    """Seconds of one optimizer step on one rank (every micro-step included)."""

    matmul_s: float
    attention_s: float
    memory_s: float  # elementwise, weight casts, optimizer
    forward_s: float  # the forward share of the above (one third of block work)
    model_flops: float  # per rank per step, without recompute (MFU's numerator)
    hardware_flops: float  # with recompute (HFU's)
    gaps_s: float = 0.0  # kernel-to-kernel gaps
    fp8_casts_s: float = 0.0  # of memory_s: the casts into fp8 (fp8.py)
    regroup_s: float = 0.0  # of memory_s: sequence-parallel regrouping copies

    @property
    def total_s(self) -> float:
        return self.matmul_s + self.attention_s + self.memory_s + self.gaps_s

    @property
    def backward_s(self) -> float:
        return self.total_s - self.forward_s


def fp8_share(m: ModelConfig, min_dim: int) -> float:
    """Share of a block's matmul parameters in Linear layers fp8 runs (train/spec/precision.py)."""
    linears = shapes.block_linears(m)
    eligible = sum(
        lin.params for lin in linears if fp8_eligible(lin.in_features, lin.out_features, min_dim)
    )
    return eligible / sum(lin.params for lin in linears)


def matmul_rate(rates: PartRates, precision: str) -> float:
    """Achievable matmul FLOP/s in ``precision`` (fp8: of the fp8 layers)."""
    peak = rates.peak_tflops.get(precision) or rates.peak_tflops.get("bf16")
    if not peak:
        raise ValueError(f"{rates.name} has no {precision} peak")
    fraction = rates.matmul_fraction
    if precision == "fp8" and rates.fp8_matmul_fraction is not None:
        fraction = rates.fp8_matmul_fraction
    return peak * 1e12 * fraction


def compute_time(
    m: ModelConfig,
    plan: LayoutPlan,
    *,
    micro_batch: int,
    seq_len: int,
    accum_steps: int,
    precision: str,
    rates: PartRates,
    fp8: Fp8Casts | None = None,
    optimizer_split: int | None = None,
    kernels: Kernels = RUNTIME_KERNELS,
    head: bool = True,
    compiled: bool = False,
    stage_params: int | None = None,
    per_step_split: int = 1,
    fsdp_reduce_each: bool = True,
    fsdp_reduce_width: int = 4,
) -> ComputeTime:
    """``fp8``: how an fp8 run casts (its linears, its casts' bytes and kernels: fp8.py; an
    fp8 step needs it); ``optimizer_split``: ranks the AdamW step is split over (default: the
    layout's); ``kernels``: the attention kernel, block and loss that run; ``head``: whether
    this rank runs the output head (a pipeline stage other than the last does not);
    ``compiled``: train.compile (fused elementwise kernels: the *_COMPILED counts above);
    ``stage_params``: the parameters a pipeline rank casts and steps (its stages' only: the
    embedding on the first, the head on the last), in place of the whole model's;
    ``per_step_split``: what a pipeline's once-a-step weight work is split over (1 on a rank;
    on the efficiency base's one device its stages and TP ranks, as its AdamW step);
    ``fsdp_reduce_each``: parallel.fsdp_reduce_every_micro_step; ``fsdp_reduce_width``: the
    bytes of its reduce dtype (traffic.StepShape.reduce_width)."""
    t = plan.degrees.tp
    tokens = micro_batch * seq_len * accum_steps  # every rank of a TP group sees them all
    n_ckpt = len(plan.checkpointed)
    flops = StepFlops.of(m, plan, seq_len, head)

    width = "bf16" if precision == "fp8" else precision
    bf16_rate = matmul_rate(rates, width)
    if precision == "fp8":
        if fp8 is None:
            raise ValueError("an fp8 step needs its Fp8Casts (fp8.Fp8Casts.of_run)")
        compiled = compiled or fp8.compiled  # torchao's fp8 runs compile their blocks
        share = fp8_share(m, fp8.min_dim)
        fp8_rate = matmul_rate(rates, "fp8")
        block_s = flops.blocks * (share / fp8_rate + (1 - share) / bf16_rate)
    else:
        block_s = flops.blocks / bf16_rate
    matmul_s = tokens * (block_s + flops.head / bf16_rate)
    split = optimizer_split or layout_optimizer_split(plan, m)
    given = dict(fsdp_reduce_each=fsdp_reduce_each, fsdp_reduce_width=fsdp_reduce_width,
                 stage_params=stage_params, per_step_split=per_step_split, head=head)  # fmt: skip
    if rates.host is not None:
        shape = (micro_batch, seq_len, accum_steps)
        return _host_compute_time(m, plan, *shape, rates, split, flops, given)
    attention_s = tokens * _attention_s_per_token(
        m, n_ckpt, seq_len, t, precision, rates, kernels.attention, kernels.block
    )
    nbytes = memory_bound_bytes(
        m, plan, tokens=tokens, accum=accum_steps, precision=precision, optimizer_split=split,
        compiled=compiled, kernels=kernels, **given,
    )  # fmt: skip
    gaps_s = kernel_gaps_s(m.n_layers, n_ckpt, accum_steps, compiled, kernels.block)
    gaps_s = gaps_s if rates.sms else 0.0
    casts = CastWork(0.0, 0)
    if precision == "fp8":
        # FSDP's fp8 pre-gather casts, of each rank's dense shard (a base splits them alike).
        dense = _dense_shard_ranks(plan, split)
        casts = cast_work(fp8, m, plan, tokens=tokens, accum_steps=accum_steps, shard_ranks=dense)
        gaps_s += casts.kernels * KERNEL_GAP_S if rates.sms else 0.0
    # No memory bandwidth known (a profile without one): left out, stated in the docs. The
    # casts are counted exactly and only stream: a device copy's rate (hardware.COPY_FRACTION).
    rate = rates.hbm_gbytes_per_s * 1e9 if rates.hbm_gbytes_per_s else None
    copy_rate = rates.copy_gbytes_per_s * 1e9 if rates.copy_gbytes_per_s else rate
    casts_s = casts.nbytes / copy_rate if copy_rate else 0.0
    memory_s = (nbytes / rate if rate else 0.0) + casts_s
    # Forward: a third of each block's work; a replayed forward belongs to backward.
    work = matmul_s + attention_s + memory_s + gaps_s
    forward_s = work * m.n_layers / (3 * m.n_layers + n_ckpt)
    return ComputeTime(
        matmul_s, attention_s, memory_s, forward_s, *flops.of_step(tokens), gaps_s, casts_s
    )


@dataclass(frozen=True)
class StepFlops:
    """FLOPs per token on one rank: the blocks' matmuls (recompute included), the head's,
    and the model (MFU: no recompute) and hardware (HFU) totals with attention."""

    blocks: float
    head: float
    model: float
    hardware: float

    @classmethod
    def of(cls, m: ModelConfig, plan: LayoutPlan, seq_len: int, head: bool = True) -> StepFlops:
        t, n_ckpt = plan.degrees.tp, len(plan.checkpointed)
        blocks, replayed = block_matmul_params(m, plan)
        head_flops = 6 * shapes.head_matmul_params(m) / t if head else 0.0  # vocab-parallel
        hqt = m.n_heads * shapes.head_dim(m) * seq_len / t
        block_flops = 6 * blocks + 2 * replayed
        model = 6 * blocks + head_flops + 12 * m.n_layers * hqt
        hardware = block_flops + head_flops + (12 * m.n_layers + 4 * n_ckpt) * hqt
        return cls(block_flops, head_flops, model, hardware)

    def of_step(self, tokens: int) -> tuple[float, float]:
        """(model, hardware) FLOPs of ``tokens`` on this rank."""
        return tokens * self.model, tokens * self.hardware


def block_matmul_params(m: ModelConfig, plan: LayoutPlan) -> tuple[int, int]:
    """(matmul parameters a token meets in all blocks, in the checkpointed ones) on one rank:
    a dense block's split over TP; an MoE block's attention, router, shared experts and the
    top_k routed experts it is sent to (train/spec/shapes.py), whatever rank holds them."""
    t = plan.degrees.tp
    if not shapes.is_moe(m):
        block = shapes.block_matmul_params(m, t)
        return m.n_layers * block, len(plan.checkpointed) * block
    per_layer = [shapes.layer_active_matmul_params(m, i) for i in range(m.n_layers)]
    replayed = sum(per_layer[i] for i in plan.checkpointed if i < m.n_layers)
    return sum(per_layer), replayed


def _attention_s_per_token(
    m: ModelConfig,
    n_ckpt: int,
    seq_len: int,
    tp: int,
    precision: str,
    rates: PartRates,
    kernel: str,
    block: str = "llama",
) -> float:
    """Seconds of attention per token of one micro-step (module docstring: flash or math;
    ``block``: another stack's score traffic on the math path, OTHER_BLOCKS)."""
    if kernel not in EXECUTED_ATTENTION:
        raise ValueError(f"attention kernel {kernel!r}: one of {', '.join(ATTENTION_KERNELS)}")
    width = "bf16" if precision == "fp8" else precision
    peak = (rates.peak_tflops.get(width) or 0) * 1e12
    heads_x_positions = m.n_heads * shapes.head_dim(m) * seq_len / tp  # H Q T on this rank
    per_pass, per_replay = EXECUTED_ATTENTION[kernel]
    flops = (12 * per_pass * m.n_layers + 4 * per_replay * n_ckpt) * heads_x_positions
    if kernel == "flash":
        rate = peak * rates.attention_fraction
        return flops / rate if rate else 0.0
    if kernel in FLASH_SLOWDOWN:
        # FA2's count: forward 2 of each block's 7 (backward 2.5 x that), a replay 2 more.
        forward = (12 * per_pass * 2 / 7 * m.n_layers + 4 * per_replay * n_ckpt) * heads_x_positions
        backward = 12 * per_pass * 5 / 7 * m.n_layers * heads_x_positions
        slow_forward, slow_backward = FLASH_SLOWDOWN[kernel]
        rate = peak * rates.attention_fraction
        return (forward * slow_forward + backward * slow_backward) / rate if rate else 0.0
    seconds = flops / (peak * rates.matmul_fraction) if peak else 0.0
    if rates.hbm_gbytes_per_s:
        width_bytes = 2 if precision in SIXTEEN_BIT else 4
        scores = m.n_heads / tp * seq_len  # score elements per token and block
        per_elem = MATH_SCORE_BYTES * m.n_layers + MATH_REPLAY_SCORE_BYTES * n_ckpt
        if block in OTHER_BLOCKS:
            other = OTHER_BLOCKS[block]
            per_elem += other.score_bytes * m.n_layers + other.replay_score_bytes * n_ckpt
        seconds += scores * per_elem * width_bytes / 2 / (rates.hbm_gbytes_per_s * 1e9)
    return seconds


def kernel_gaps_s(
    n_layers: int,
    n_checkpointed: int,
    accum_steps: int,
    compiled: bool = False,
    block: str = "llama",
) -> float:
    """hardware.KERNEL_GAP_S per GPU kernel of the blocks (module docstring)."""
    if block in OTHER_BLOCKS:
        _no_compiled_counts(block, compiled)
        elementwise, gemms = OTHER_BLOCKS[block].kernels, OTHER_BLOCKS[block].gemms
    elif compiled:
        elementwise, gemms = COMPILED_KERNELS_PER_BLOCK, GEMMS_PER_BLOCK
    else:
        elementwise = (FORWARD_KERNELS_PER_BLOCK, BACKWARD_KERNELS_PER_BLOCK)
        gemms = GEMMS_PER_BLOCK
    forward = elementwise[0] + gemms[0] + 1
    backward = elementwise[1] + gemms[1] + 1
    kernels = (forward + backward) * n_layers + forward * n_checkpointed
    return kernels * accum_steps * KERNEL_GAP_S


def memory_bound_bytes(
    m: ModelConfig,
    plan: LayoutPlan,
    *,
    tokens: int,
    accum: int,
    precision: str,
    optimizer_split: int,
    head: bool = True,
    compiled: bool = False,
    kernels: Kernels = RUNTIME_KERNELS,
    stage_params: int | None = None,
    per_step_split: int = 1,
    fsdp_reduce_each: bool = True,
    fsdp_reduce_width: int = 4,
) -> float:
    """Bytes the memory-bound kernels of one step stream on one rank (module docstring;
    ``compiled``: train.compile's fused kernels; ``kernels``: the block and loss that run;
    ``stage_params``: a pipeline rank's own parameters, compute_time's)."""
    t = plan.degrees.tp
    half_width = (2 if precision in SIXTEEN_BIT else 4) / 2
    n_ckpt = len(plan.checkpointed)
    per_d, per_f, per_vocab = (
        (ELEMENTWISE_D_COMPILED, ELEMENTWISE_F_COMPILED, HEAD_BYTES_PER_VOCAB_COMPILED)
        if compiled
        else (ELEMENTWISE_D, ELEMENTWISE_F, HEAD_BYTES_PER_VOCAB)
    )
    rope = ROPE_SHARE_OF_D[compiled]
    if kernels.block in OTHER_BLOCKS:
        _no_compiled_counts(kernels.block, compiled)
        other = OTHER_BLOCKS[kernels.block]
        per_d, rope = other.d_bytes, 0.0  # neither has rope
        per_f = other.hidden_bytes * other.hidden_per_ffn
    if kernels.loss == "fused":
        per_vocab = HEAD_BYTES_PER_VOCAB_FUSED
    token_share = 1 / t if plan.sequence_parallel else 1.0
    per_d *= rope / t + (1 - rope) * token_share
    per_block = (per_d * m.d_model + per_f * m.ffn_hidden / t) * half_width
    replay = per_block / 3 * n_ckpt  # a replayed forward
    per_token = m.n_layers * per_block + replay
    per_token += per_vocab * m.vocab_size / t if head else 0.0
    # A pipeline stage's model (pipelined.stage_model) keeps the root's embedding and head,
    # which only the first and last stages hold: its own count comes from the caller.
    local_params = _local_params(m, plan) if stage_params is None else stage_params
    row = plan.row
    if precision in SIXTEEN_BIT and row.deepspeed:
        weights = 0  # DeepSpeed runs the model in 16 bits: no casts of whole weights
    elif row.shards_parameters or row.expert_parallel:
        weights = _fsdp2_weight_bytes(
            m, plan, local_params, accum=accum, precision=precision,
            shard_split=max(1, optimizer_split), per_step_split=per_step_split,
            reduce_each=fsdp_reduce_each and not row.pipeline, reduce_width=fsdp_reduce_width,
        )  # fmt: skip
    else:
        sixteen = precision in SIXTEEN_BIT
        # Once a step (a pipeline) the casts are per-step work on each parameter, like AdamW:
        # the efficiency base's one device splits it over the stages (per_step_split), so
        # fewer parameters per rank is not counted as a scaling gain.
        per_step = 1 / per_step_split if row.pipeline else accum
        casts = per_step * WEIGHT_CAST_BYTES if sixteen else 0
        grads = WEIGHT_GRAD_BYTES_PER_MICRO_STEP["sixteen" if sixteen else "fp32"] * accum
        weights = (casts + grads) * local_params
    optimizer = OPTIMIZER_BYTES_PER_PARAM * local_params / max(1, optimizer_split)
    return tokens * per_token + weights + optimizer


def _dense_shard_ranks(plan: LayoutPlan, split: float) -> float:
    """The ranks a dense weight's FSDP shard is 1/n of: ``split`` (the optimizer's), but
    dp_shard x ep under EP's meshes (fsdp2_groups)."""
    d = plan.degrees
    return d.dp_shard * d.ep if plan.row.expert_parallel else split


def _no_compiled_counts(block: str, compiled: bool) -> None:
    if compiled:
        raise ValueError(f"the {block} block has no compiled counts (train.compile=false)")


def _host_compute_time(
    m: ModelConfig,
    plan: LayoutPlan,
    micro_batch: int,
    seq_len: int,
    accum: int,
    rates: PartRates,
    split: int,
    flops: StepFlops,
    given: dict,
) -> ComputeTime:
    """The cpu profile: kernel times measured at this workload's shapes (perfmodel/host.py);
    ``given``: compute_time's FSDP accumulation and pipeline-stage arguments, for
    memory_bound_bytes (a stage without the head runs neither its GEMMs nor the loss)."""
    host = rates.host
    t, n_ckpt, head = plan.degrees.tp, len(plan.checkpointed), given.get("head", True)
    micro = host_micro_step(
        m, host, micro_batch=micro_batch, seq_len=seq_len, tp=t, n_checkpointed=n_ckpt,
        head=head,
    )  # fmt: skip
    tokens = micro_batch * seq_len * accum
    # A measured loss replaces the head's streamed bytes (logits, log-softmax, its gradient).
    given = {**given, "head": head and micro.loss_s is None}
    nbytes = memory_bound_bytes(
        m, plan, tokens=tokens, accum=accum, precision="fp32", optimizer_split=split, **given
    )
    streamed = nbytes / (host.memory_gbytes_per_s * 1e9)
    optimizer_kernels = OPTIMIZER_KERNELS_PER_TENSOR * shapes.param_tensors(m)
    loss_s = micro.loss_s or 0.0
    memory_s = (micro.kernels_s + loss_s) * accum + streamed
    memory_s += optimizer_kernels * host.kernel_latency_s
    matmul_s, attention_s = micro.gemm_s * accum, micro.attention_s * accum
    micro_s = micro.gemm_s + micro.attention_s + micro.kernels_s + loss_s
    forward_s = micro_s * accum * micro.forward_share
    forward_s += streamed * m.n_layers / (3 * m.n_layers + n_ckpt)
    return ComputeTime(matmul_s, attention_s, memory_s, forward_s, *flops.of_step(tokens))


def _local_params(m: ModelConfig, plan: LayoutPlan) -> int:
    """Parameters one rank steps and casts: TP's shards and EP's experts split."""
    return shapes.numel(shapes.all_param_shapes(m, plan.degrees.tp, plan.degrees.ep))


# FSDP2 (torch 2.13, torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py and
# _fsdp_param.py) copies on the device around each collective. Per gather of a unit: the
# shard cast to the gather dtype (read 4, write w; fp32 gathers skip it) and copied into the
# flat all-gather input (read w, write w), per shard element; then split_with_sizes_copy out
# of the flat output into the unsharded parameters (read w, write w per element of the
# whole unit), on the compute stream. Blocks are gathered twice a micro-step (forward, and
# again for backward after resharding), the root once (it stays gathered: train/parallel/
# fsdp.py). Gradients, with reduce dtype r (parallel.fsdp_reduce_dtype: traffic.StepShape
# reduce_width) and compute width g: the weight-gradient GEMM writes g every micro-step. The
# runtime's loop reduce-scatters every micro-step (train/parallel/fsdp.py fsdp_accumulate):
# chunk_cat copies the gradient into the reduce-scatter input (read g, write r). Per shard
# element of each result (foreach_reduce): a reduce dtype other than the fp32 master's is
# cast to it (_to_dtype_if_needed: read r, write 4), and the result becomes .grad, a view
# on the step's first micro-step (zero_grad sets .grad to None) and added to it on each
# later one (read 4 twice, write 4). HSDP's non-final micro-steps (all-reduce off) add each
# result to the partial one in the reduce dtype instead (read r twice, write r), and the last
# adds the partial, all-reduces and casts once. A pipeline stage (torch's PipelineStage turns
# gradient sync off until its last microbatch) accumulates instead: the first micro-step
# upcasts the gradient to r (read g, write r; none where g = r), each later one adds to it
# (read r + g, write r), the last one's chunk_cat reads and writes r, and the one result per
# shard element is cast as above and becomes .grad.
MASTER_BYTES = 4  # fp32 master weights and their gradients: what AdamW steps


def _fsdp2_weight_bytes(
    m: ModelConfig,
    plan: LayoutPlan,
    local_params: int,
    *,
    accum: int,
    precision: str,
    shard_split: int,
    per_step_split: int,
    reduce_each: bool,
    reduce_width: int,
) -> float:
    """FSDP2's copies of weights and gradients in one step on one rank, per mesh its units
    are on (fsdp2_groups: ep's dense ones on a shard dim of 1, cast and copied per gather
    all the same)."""
    weights = 0.0
    for group in fsdp2_groups(m, plan, local_params):
        fsdp = fsdp2_bytes_per_param(
            accum=accum,
            precision=precision,
            # EP's meshes shard each group over its own ranks (the caller's split, their
            # blend, totals the optimizer step); a single-device base has one group.
            shard_split=group.gather_world if plan.row.expert_parallel else shard_split,
            reduce_each=reduce_each,
            reduce_width=reduce_width,
            replicated=group.replicated,
            gather_world=group.gather_world,
            custom_divide=group.custom_divide,
        )
        if plan.row.pipeline:
            # A stage's units stay gathered from the first microbatch to the step's last
            # (reshard_after_forward=False, and torch's PipelineStage turns resharding after
            # backward off until its final reduce): one gather a step, per-step work split as
            # AdamW's (per_step_split).
            # The one reduction's copy is per-step work too, as the copy-out it replaces.
            per_step = (fsdp.copy_out + fsdp.reduce_copy * fsdp.reductions) / per_step_split
            weights += (per_step + fsdp.shard_in + fsdp.grads) * group.params
            continue
        root = _root_params(m, plan) if group.holds_root else 0
        per_gather = fsdp.copy_out + fsdp.shard_in
        gathers = 2 * accum * (group.params - root) + accum * root  # the root stays gathered
        reduced = fsdp.grads + fsdp.reduce_copy * fsdp.reductions
        weights += per_gather * gathers + reduced * group.params
    return weights


@dataclass(frozen=True)
class Fsdp2Group:
    """Parameters one rank holds on one FSDP2 mesh."""

    params: int
    # Ranks of the mesh's shard dim: each all-gather's and reduce-scatter's group. At 1,
    # torch's world-size-1 path runs instead of the collectives (Fsdp2Bytes).
    gather_world: int
    # A replicate dim above 1: the gradients are all-reduced across it too (HSDP's path).
    replicated: bool
    # The root unit's parameters (embedding, final norm, head) are in this group.
    holds_root: bool = True
    # A gradient divide factor set on the units (the routed experts: by every data-parallel
    # rank, train/parallel/expert_parallel.py): at gather_world 1 torch divides out of place
    # before its copy (foreach_reduce: reduce_output.copy_(input / factor)); above it the
    # runtime forces a sum and torch divides each result in place.
    custom_divide: bool = False


def fsdp2_groups(m: ModelConfig, plan: LayoutPlan, local_params: int) -> list[Fsdp2Group]:
    """One rank's FSDP2 parameters by mesh (train/parallel/expert_parallel.py fsdp_meshes):
    every unit on (dp_replicate, dp_shard), except under EP, where the routed experts are and
    the dense parameters go on (dp_replicate, dp_shard x ep) under ep_fsdp or on
    (dp_replicate x ep, a shard dim of 1) under ep."""
    d = plan.degrees
    if not plan.row.expert_parallel:
        return [Fsdp2Group(local_params, d.dp_shard, d.dp_replicate > 1)]
    experts = shapes.numel(shapes.expert_param_shapes(m, d.ep)) * len(shapes.moe_layers(m))
    if plan.row.shards_parameters:
        dense = Fsdp2Group(local_params - experts, d.dp_shard * d.ep, d.dp_replicate > 1)
    else:
        # Always a 2-D mesh (train/parallel/expert_parallel.py fsdp_meshes), so torch takes
        # HSDP's path, partial results kept between micro-steps, even at one rank.
        dense = Fsdp2Group(local_params - experts, 1, True)
    routed = Fsdp2Group(
        experts, d.dp_shard, d.dp_replicate > 1, holds_root=False, custom_divide=True
    )
    return [dense, routed]


@dataclass(frozen=True)
class Fsdp2Bytes:
    copy_out: float  # per parameter of the unit and gather
    shard_in: float  # per parameter of the unit and gather, already split over the shard
    grads: float  # per parameter of the unit and step
    # gather_world 1: the copy each reduction makes in place of the collective, per
    # parameter of the unit (the shard is the whole unit), and the reductions a step.
    reduce_copy: float = 0.0
    reductions: int = 0


def fsdp2_bytes_per_param(
    *,
    accum: int,
    precision: str,
    shard_split: int,
    reduce_each: bool,
    reduce_width: int = 4,
    replicated: bool = False,
    gather_world: int,
    custom_divide: bool = False,
) -> Fsdp2Bytes:
    """FSDP2's device copies per parameter (the comment above). ``shard_split``: the ranks a
    shard is 1/n of (the optimizer's split: a single-device base splits it as its layout
    does, as it does the AdamW step); ``reduce_each``: a reduce-scatter every micro-step
    (the runtime's loop, train/parallel/fsdp.py fsdp_accumulate), else one after
    accumulating unsharded gradients (a pipeline stage: torch's PipelineStage);
    ``reduce_width``: bytes of the reduce dtype (traffic.StepShape.reduce_width);
    ``replicated``: HSDP, whose non-final micro-steps keep each result in the reduce dtype
    for the replicas' all-reduce on the last (train/parallel/fsdp.py fsdp_accumulate);
    ``gather_world``: the ranks of the mesh's shard dim (Fsdp2Group). At 1, torch's
    world-size-1 path (_fsdp_param_group.py unshard, wait_for_unshard; _fsdp_collectives.py
    foreach_reduce) copies the cast shard straight into the unsharded parameter, with no
    flat buffer to copy out of, and copies each reduce-scatter input into its output (read r,
    write r) where a collective would have written it."""
    w = 2 if precision in SIXTEEN_BIT else 4
    g, r, o = w, reduce_width, MASTER_BYTES
    shard_in = ((o + w if w != o else 0) + 2 * w) / shard_split
    copy_out = 2 * w if gather_world > 1 else 0
    # Per parameter, like the copy-out it replaces: a one-device base (gather_world 1) pays
    # it whole, as a one-GPU run does.
    reduce_copy = (4 if custom_divide else 2) * r if gather_world == 1 else 0
    to_master = r + o if r != o else 0  # per shard element of each reduce-scatter's result
    # Above one rank with a custom factor: each result divided in place (read r, write r per
    # shard element and reduction; _div_if_needed), counted with the cast to the master's.
    to_master += 2 * r if custom_divide and gather_world > 1 else 0
    if reduce_each or accum == 1:
        # Each micro-step: the GEMM's gradient and its chunk_cat into the reduce-scatter
        # input; per shard element the result's cast, and its addition to .grad after the
        # first micro-step.
        per_shard = accum * to_master + (accum - 1) * 3 * o
        if replicated:
            # foreach_reduce with the all-reduce off adds each result to the partial one in
            # the reduce dtype; the last micro-step adds the partial, all-reduces, casts once.
            per_shard = (accum - 1) * 3 * r + to_master
        grads = accum * (g + g + r) + per_shard / shard_split
        return Fsdp2Bytes(copy_out, shard_in, grads, reduce_copy, accum)
    upcast = g + r if g != r else 0
    grads = accum * g + upcast + (accum - 1) * (2 * r + g) + 2 * r
    return Fsdp2Bytes(copy_out, shard_in, grads + to_master / shard_split, reduce_copy, 1)


def optimizer_step_s(params: int, optimizer_split: int, rates: PartRates) -> float:
    """The AdamW step's streaming time on one rank (OPTIMIZER_BYTES_PER_PARAM per parameter
    it steps), of the memory-bound time compute_time counts."""
    gbytes = rates.host.memory_gbytes_per_s if rates.host else rates.hbm_gbytes_per_s
    if not gbytes:
        return 0.0
    return OPTIMIZER_BYTES_PER_PARAM * params / max(1, optimizer_split) / (gbytes * 1e9)


def _root_params(m: ModelConfig, plan: LayoutPlan) -> int:
    """The root unit's parameters on one rank (embedding, final norm, head; TP splits them)."""
    return shapes.numel(shapes.root_param_shapes(m, plan.degrees.tp))


def layout_optimizer_split(plan: LayoutPlan, m: ModelConfig | None = None) -> float:
    """Ranks the optimizer step is split over (sharded layouts step their shard). Under
    ep_fsdp the dense parameters are sharded over dp_shard x ep and the routed experts over
    dp_shard (fsdp2_groups): the split of the rank's parameters as a whole, so that the
    AdamW step and the per-shard copies add up over the two (``m`` needed)."""
    d, row = plan.degrees, plan.row
    split = row.optimizer_split(d.dp_shard)
    if m is None or not (row.expert_parallel and row.shards_parameters) or d.ep == 1:
        return split
    local = _local_params(m, plan)
    experts = shapes.numel(shapes.expert_param_shapes(m, d.ep)) * len(shapes.moe_layers(m))
    stepped = (local - experts) / (d.dp_shard * d.ep) + experts / d.dp_shard
    return local / stepped


def sequence_regroup_bytes(collectives: list[Collective], micro_batch: int) -> float:
    """Bytes of the copies DTensor's sequence-parallel collectives make: they gather and
    scatter along the sequence (dim 1) while NCCL works along dim 0, so torch reorders every
    tensor it reduce-scatters (torch/_utils.py _chunk_or_narrow_cat: torch.cat of the chunks,
    always a copy) and every gathered one unless a micro-step holds one sequence
    (_maybe_view_chunk_cat: a view only when every dimension crossed has size 1); each copy
    reads and writes the whole tensor. torch 2.13's code; compiled or not, the copy stays
    (a GEMM, an extern kernel, reads its input whole)."""
    total = 0.0
    for c in collectives:
        dims = c.group  # mesh dimensions: the TP group's activations alone
        if dims != ("tp",) or c.role != "activations":
            continue
        if c.kind == "reduce_scatter" or (c.kind == "all_gather" and micro_batch > 1):
            total += 2 * c.nbytes * c.calls
    return total


def with_sequence_regroups(
    compute: ComputeTime, collectives: list[Collective], micro_batch: int, rates: PartRates
) -> ComputeTime:
    """``compute`` with the sequence-parallel regrouping copies (sequence_regroup_bytes), at a
    device copy's rate (hardware.COPY_FRACTION), added to its memory-bound work, shared
    between forward and backward as the rest is."""
    rate = rates.copy_gbytes_per_s or (rates.host.memory_gbytes_per_s if rates.host else None)
    nbytes = sequence_regroup_bytes(collectives, micro_batch)
    if not nbytes or not rate:
        return compute
    seconds = nbytes / (rate * 1e9)
    forward_share = compute.forward_s / compute.total_s if compute.total_s else 0.0
    return dataclasses.replace(
        compute,
        memory_s=compute.memory_s + seconds,
        forward_s=compute.forward_s + seconds * forward_share,
        regroup_s=seconds,
    )
