"""Compute time of one optimizer step on one rank: matmuls, attention, memory-bound work.

- matmuls: 6 FLOPs per matmul parameter per token (2 forward, 4 backward), plus 2 per
  parameter of each checkpointed block's replayed forward, at peak x the matmul fraction;
  TP splits the block matrices and the head (vocab-parallel, train/parallel/tensor_parallel.py);
- attention scores and values: 12 L H Q T per token (+ 4 H Q T per replayed block) at peak x
  the attention fraction (FlashAttention's measured share);
- memory-bound work at the achievable HBM rate: elementwise kernels per token, autocast's
  weight casts and weight-gradient accumulation per micro-step, AdamW per step.
fp8 runs the Linear layers precision.fp8.min_dim wide or wider at the fp8 peak, the rest in
bf16 (train/runtime/numerics.py's rule). The forward is a third of the block work, the backward two
thirds (what overlap.py hides communication behind).
"""

from __future__ import annotations

from dataclasses import dataclass

from launch.perfmodel.hardware import PartRates
from launch.perfmodel.host import OPTIMIZER_KERNELS_PER_TENSOR, host_micro_step
from train.spec import shapes
from train.spec.config import ModelConfig
from train.spec.degrees import LayoutPlan
from train.spec.precision import SIXTEEN_BIT, fp8_eligible

# Bytes per token per block that elementwise kernels stream, counted from
# train/model/transformer.py under bf16 autocast (fp32 residual): forward 56 per d element (two
# norms read 4 + write 4 + cast to 2, rope on q and k, two residual adds) and 10 per f element
# (silu, product); backward about twice the forward. Scaled by width / 2 for fp32 runs.
ELEMENTWISE_D = 168
ELEMENTWISE_F = 30
HEAD_BYTES_PER_VOCAB = 20  # logits, fp32 copy, log-softmax and its gradient
# Autocast casts each fp32 weight to 16 bits every forward (read 4, write 2) and turns its
# 16-bit weight gradient into the fp32 .grad (write 2, read 2, read+write 4): 18 bytes per
# parameter per micro-step; fp32 runs only accumulate (8).
WEIGHT_BYTES_PER_MICRO_STEP = {"sixteen": 18, "fp32": 8}
# AdamW: read param, grad, two moments; write param and moments; read grad for the norm.
OPTIMIZER_BYTES_PER_PARAM = 32


@dataclass(frozen=True)
class ComputeTime:
    """Seconds of one optimizer step on one rank (every micro-step included)."""

    matmul_s: float
    attention_s: float
    memory_s: float  # elementwise, weight casts, optimizer
    forward_s: float  # the forward share of the above (one third of block work)
    model_flops: float  # per rank per step, without recompute (MFU's numerator)
    hardware_flops: float  # with recompute (HFU's)

    @property
    def total_s(self) -> float:
        return self.matmul_s + self.attention_s + self.memory_s

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
    return peak * 1e12 * rates.matmul_fraction


def compute_time(
    m: ModelConfig,
    plan: LayoutPlan,
    *,
    micro_batch: int,
    seq_len: int,
    accum_steps: int,
    precision: str,
    rates: PartRates,
    fp8_min_dim: int = 4096,
    optimizer_split: int | None = None,
) -> ComputeTime:
    """``optimizer_split``: ranks the AdamW step is split over (default: the layout's)."""
    t = plan.degrees.tp
    tokens = micro_batch * seq_len * accum_steps  # every rank of a TP group sees them all
    n_ckpt = len(plan.checkpointed)
    block = shapes.block_matmul_params(m, t)
    head = shapes.head_matmul_params(m)
    block_flops = 6 * m.n_layers * block + 2 * n_ckpt * block  # per token
    head_flops = 6 * head / t  # the head's logits are split over the vocabulary
    hq = m.n_heads * shapes.head_dim(m)
    attention_flops = (12 * m.n_layers + 4 * n_ckpt) * hq * seq_len / t

    width = "bf16" if precision == "fp8" else precision
    bf16_rate = matmul_rate(rates, width)
    if precision == "fp8":
        share = fp8_share(m, fp8_min_dim)
        fp8_rate = matmul_rate(rates, "fp8")
        block_s = block_flops * (share / fp8_rate + (1 - share) / bf16_rate)
    else:
        block_s = block_flops / bf16_rate
    matmul_s = tokens * (block_s + head_flops / bf16_rate)
    attention_rate = (rates.peak_tflops.get(width) or 0) * 1e12 * rates.attention_fraction
    attention_s = tokens * attention_flops / attention_rate if attention_rate else 0.0
    split = optimizer_split or layout_optimizer_split(plan)
    if rates.host is not None:
        return _host_compute_time(m, plan, micro_batch, seq_len, accum_steps, rates, split)
    memory_s = _memory_bound_s(
        m, plan, tokens, accum_steps, precision, split, rates.hbm_gbytes_per_s
    )

    model_flops = tokens * (
        6 * m.n_layers * block + head_flops + 12 * m.n_layers * hq * seq_len / t
    )
    hardware_flops = tokens * (block_flops + head_flops + attention_flops)
    # Forward: a third of each block's work; a replayed forward belongs to backward.
    forward_s = (matmul_s + attention_s + memory_s) * m.n_layers / (3 * m.n_layers + n_ckpt)
    return ComputeTime(matmul_s, attention_s, memory_s, forward_s, model_flops, hardware_flops)


def _memory_bound_s(
    m: ModelConfig,
    plan: LayoutPlan,
    tokens: int,
    accum: int,
    precision: str,
    optimizer_split: int,
    gbytes_per_s: float | None,
) -> float:
    if not gbytes_per_s:
        return 0.0  # no memory bandwidth known: left out, stated in the docs
    t = plan.degrees.tp
    half_width = (2 if precision in SIXTEEN_BIT else 4) / 2
    n_ckpt = len(plan.checkpointed)
    per_block = (ELEMENTWISE_D * m.d_model + ELEMENTWISE_F * m.ffn_hidden / t) * half_width
    replay = per_block / 3 * n_ckpt  # a replayed forward
    per_token = m.n_layers * per_block + replay + HEAD_BYTES_PER_VOCAB * m.vocab_size / t
    local_params = shapes.count_params(m) if t == 1 else _tp_local_params(m, t)
    row = plan.row
    if precision in SIXTEEN_BIT and (row.deepspeed or row.shards_parameters):
        # DeepSpeed runs the model in 16 bits, FSDP2 casts the shard before gathering it:
        # no per-micro-step casts of whole weights.
        weights = 0
    else:
        key = "sixteen" if precision in SIXTEEN_BIT else "fp32"
        weights = WEIGHT_BYTES_PER_MICRO_STEP[key] * local_params * accum
    optimizer = OPTIMIZER_BYTES_PER_PARAM * local_params / max(1, optimizer_split)
    return (tokens * per_token + weights + optimizer) / (gbytes_per_s * 1e9)


def _host_compute_time(
    m: ModelConfig,
    plan: LayoutPlan,
    micro_batch: int,
    seq_len: int,
    accum: int,
    rates: PartRates,
    split: int,
) -> ComputeTime:
    """The cpu profile: kernel times measured at this workload's shapes (perfmodel/host.py)."""
    host = rates.host
    t, n_ckpt = plan.degrees.tp, len(plan.checkpointed)
    micro = host_micro_step(
        m, host, micro_batch=micro_batch, seq_len=seq_len, tp=t, n_checkpointed=n_ckpt
    )
    tokens = micro_batch * seq_len * accum
    streamed = _memory_bound_s(m, plan, tokens, accum, "fp32", split, host.memory_gbytes_per_s)
    optimizer_kernels = OPTIMIZER_KERNELS_PER_TENSOR * shapes.param_tensors(m)
    memory_s = micro.kernels_s * accum + streamed + optimizer_kernels * host.kernel_latency_s
    matmul_s, attention_s = micro.gemm_s * accum, micro.attention_s * accum
    forward_s = (micro.gemm_s + micro.attention_s + micro.kernels_s) * accum * micro.forward_share
    forward_s += streamed * m.n_layers / (3 * m.n_layers + n_ckpt)
    hq = m.n_heads * shapes.head_dim(m)
    block = shapes.block_matmul_params(m, t)
    head_flops = 6 * shapes.head_matmul_params(m) / t
    attention_flops = (12 * m.n_layers + 4 * n_ckpt) * hq * seq_len / t
    model_flops = tokens * (
        6 * m.n_layers * block + head_flops + 12 * m.n_layers * hq * seq_len / t
    )
    hardware_flops = tokens * (6 * m.n_layers * block + 2 * n_ckpt * block + head_flops)
    hardware_flops += tokens * attention_flops
    return ComputeTime(matmul_s, attention_s, memory_s, forward_s, model_flops, hardware_flops)


def _tp_local_params(m: ModelConfig, t: int) -> int:
    return shapes.numel(shapes.all_param_shapes(m, t))


def layout_optimizer_split(plan: LayoutPlan) -> int:
    """Ranks the optimizer step is split over (sharded layouts step their shard)."""
    return plan.row.optimizer_split(plan.degrees.dp_shard)
