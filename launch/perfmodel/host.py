"""The CPU host as the model sees it: measured kernel times at the model's own shapes.

On a GPU the model takes datasheet peaks times published achievable fractions. The host CPU
has no datasheet the model could trust (clock, vector width and cache all vary), and at this
project's CPU sizes (tiny model, one core per rank) a step is not one big matmul: GEMMs of a
few hundred rows run far from the square-matrix ceiling, attention is a separate kernel, and
hundreds of small elementwise kernels each pay a dispatch latency. So for the cpu profile the
compute time is itemised over what was measured on this machine (``python -m launch.mamf
--host-shapes``, cached beside the ceiling; launch/bench/host_kernels.py):

- each GEMM the step runs, by shape and operand layout: forward (tokens, in, out) against the
  weight's transposed view, input gradient (tokens, out, in) on contiguous operands, weight
  gradient (out, tokens, in) from the output gradient's transposed view, per Linear of a
  block (TP: its shard) and the head (TP: its vocabulary shard). A layout changes the
  kernel the CPU BLAS runs: +9% over the tiny model's GEMMs on the Xeon of
  docs/performance-model.md, against timing them all on contiguous operands;
- scaled-dot-product attention forward + backward at (micro batch, heads, seq, head dim);
- the loss (log-softmax and its gradient over the vocabulary: exp and log, which one core
  computes at 1-3 ns an element, far below its streaming rate) forward + backward at
  (tokens, vocab);
- the model's fixed cost per micro-step: the forward + backward at one token of a narrow
  copy with the same op graph (narrow_model), where every op runs and none has work to do
  (dispatch, autograd's nodes, allocation, view ops), timed at two block counts for a root
  part and a part per block (a pipeline stage runs its own blocks); where it is not measured,
  the counted elementwise kernels at `c = a + b`'s latency stand;
- memory-bound work as bytes / a measured streaming bandwidth (an alpha-beta model of
  elementwise kernels).

Kernel counts are counted, not fitted: torch.profiler over train/model/transformer.py on
torch 2.13 CPU (fp32) runs 136 forward and 237 backward elementwise / reduction kernels for the
tiny model's 4 blocks and head (view-like ops and no-op ``to`` excluded), i.e. about 32 and 57
per block with the head's few folded in, and AdamW (foreach falls back to per-tensor kernels on
CPU) 9 per parameter tensor. docs/performance-model.md has the command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from train.spec import shapes
from train.spec.config import ModelConfig, RunConfig
from train.spec.degrees import LayoutPlan, plan_layout

FORWARD_KERNELS_PER_BLOCK = 34  # 136 / 4 blocks: norms, rope, residual adds, silu, head's few
BACKWARD_KERNELS_PER_BLOCK = 59  # 237 / 4
OPTIMIZER_KERNELS_PER_TENSOR = 9  # 351 / 39 parameter tensors


# Which operand of A @ B is a transposed view: y = x W^T ("nt"), dx = dy W ("nn"),
# dW = dy^T x ("tn"), as torch's Linear and its backward run them.
GEMM_LAYOUTS = ("nt", "nn", "tn")


def gemm_key(m: int, k: int, n: int, layout: str) -> str:
    return f"{m}x{k}x{n}:{layout}"


def sdpa_key(batch: int, heads: int, seq: int, head_dim: int) -> str:
    return f"{batch}x{heads}x{seq}x{head_dim}"


def loss_key(tokens: int, vocab: int) -> str:
    return f"{tokens}x{vocab}"


def narrow_model(m: ModelConfig, n_layers: int) -> ModelConfig:
    """``m``'s op graph where no op has work to do: the same heads, KV heads, experts,
    routing and kinds of block, at 8 dims a head, SwiGLU widths of 16 and 64 words, with
    ``n_layers`` blocks (its first n_dense_layers dense, as ``m``'s). Its one-token forward +
    backward is the per-op cost a micro-step pays whatever its size (at ``m``'s own widths
    the weights' reads and the gradients' writes, counted elsewhere, would be in it too)."""
    return dataclasses.replace(
        m,
        name=f"{m.name}-narrow",
        n_layers=n_layers,
        d_model=8 * m.n_heads,
        ffn_hidden=16,
        expert_ffn_hidden=16 if m.expert_ffn_hidden else None,
        vocab_size=64,
        n_dense_layers=min(m.n_dense_layers, n_layers),
    )


def fixed_cost_points(m: ModelConfig) -> tuple[int, int]:
    """Block counts the narrow model is timed at: the fixed cost is fitted as a root part
    (embedding, final norm, head, loss) plus a part per block."""
    low = max(1, m.n_layers // 2)
    return low, m.n_layers if m.n_layers > low else low + 1


def overhead_key(m: ModelConfig) -> str:
    """``m``'s op graph, its block count and widths aside (narrow_model): what names its
    fixed cost, the same for a pipeline stage's blocks as for the whole model's."""
    fields = dataclasses.asdict(narrow_model(m, 1))
    fields = {k: v for k, v in fields.items() if k not in ("name", "source", "n_dense_layers")}
    fields["n_dense_layers"] = m.n_dense_layers
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    return f"{m.name}:{digest[:12]}"


def gemms_of_linear(tokens: int, fan_in: int, fan_out: int) -> list[tuple[int, int, int, str]]:
    """(M, K, N, layout) of the three GEMMs of one Linear per micro-step: y = x W^T,
    dx = dy W, dW = dy^T x (GEMM_LAYOUTS)."""
    shapes_ = [(tokens, fan_in, fan_out), (tokens, fan_out, fan_in), (fan_out, tokens, fan_in)]
    return [(*shape, layout) for shape, layout in zip(shapes_, GEMM_LAYOUTS, strict=True)]


def step_gemms(m: ModelConfig, tokens: int, tp: int) -> list[tuple[int, int, int, str]]:
    """Every distinct GEMM shape of one micro-step (blocks and head), for measurement."""
    out = []
    linears = [(lin.in_features, lin.out_features) for lin in shapes.block_linears(m, tp)]
    # The head is column-parallel over the vocabulary (train/parallel/tensor_parallel.py).
    for fan_in, fan_out in [*linears, (m.d_model, m.vocab_size // tp)]:
        out += gemms_of_linear(tokens, fan_in, fan_out)
    return sorted(set(out))


def attention_shape(m: ModelConfig, micro_batch: int, seq_len: int, tp: int) -> tuple:
    return (micro_batch, m.n_heads // tp, seq_len, shapes.head_dim(m))


@dataclass(frozen=True)
class HostWorkload:
    """What a cpu run's compute is itemised over: every GEMM and attention shape of its
    micro-step at each TP degree in ``tps``, timed with ``cpu_threads`` threads."""

    model: ModelConfig
    micro_batch: int
    seq_len: int
    tps: tuple[int, ...]
    cpu_threads: int
    # A pipeline's microbatch where its schedule re-splits a rank's rows into another size
    # than train.micro_batch (parallel.pp_microbatches): its stages run at that size, the
    # single-device base at train.micro_batch (pipeline_rows).
    pipeline_rows: int | None = None

    def _micro_batches(self) -> list[int]:
        return sorted({self.micro_batch, self.pipeline_rows or self.micro_batch})

    def gemms(self) -> list[tuple[int, int, int, str]]:
        return sorted(
            {
                g
                for micro in self._micro_batches()
                for tp in self.tps
                for g in step_gemms(self.model, micro * self.seq_len, tp)
            }
        )

    def attention(self) -> list[tuple]:
        m, seq = self.model, self.seq_len
        return sorted(
            {
                attention_shape(m, micro, seq, tp)
                for micro in self._micro_batches()
                for tp in self.tps
            }
        )

    def losses(self) -> list[tuple[int, int]]:
        """(tokens, vocabulary) of the loss at each TP degree (vocab-parallel: its shard)."""
        return sorted(
            {
                (micro * self.seq_len, self.model.vocab_size // tp)
                for micro in self._micro_batches()
                for tp in self.tps
            }
        )

    def missing(self, record: dict | None) -> list[str]:
        """The keys of the shapes ``record`` (launch/bench/cache.py load_host) has no time for."""
        record = record or {}
        measured = {
            key: None
            for part in ("gemm_s", "sdpa_s", "loss_s", "overhead_s")
            for key in record.get(part, {})
        }
        keys = [gemm_key(*g) for g in self.gemms()] + [sdpa_key(*a) for a in self.attention()]
        keys += [loss_key(*shape) for shape in self.losses()]
        keys.append(overhead_key(self.model))
        return [key for key in keys if key not in measured]


def host_workload(cfg: RunConfig, ran: Mapping[str, Any]) -> HostWorkload | None:
    """The kernel shapes a run's predicted compute is itemised over, or None where it is not:
    a GPU profile, a cpu profile without a measured fp32 ceiling (launch.mamf), a run not in
    fp32. ``ran``: its summary.json (world_size, nproc_per_node, precision.resolved). Its TP
    degree and 1: the single-device base of its scaling efficiency runs without TP."""
    if cfg.gpu.name != "cpu" or not cfg.gpu.measured_peak_tflops.fp32:
        return None
    if ran["precision"]["resolved"] != "fp32":
        return None
    plan = plan_layout(cfg, ran["world_size"], ran["nproc_per_node"])
    return HostWorkload(
        model=cfg.model,
        micro_batch=cfg.train.micro_batch,
        seq_len=cfg.train.seq_len,
        tps=tuple(sorted({1, plan.degrees.tp})),
        cpu_threads=cfg.cluster.cpu_threads_per_rank,
        pipeline_rows=pipeline_rows(cfg, plan),
    )


def pipeline_rows(cfg: RunConfig, plan: LayoutPlan) -> int | None:
    """Rows of a pipeline's microbatch (a data-parallel rank's share of the global batch over
    the schedule's microbatches: pipelined.stage_steps), or None for other layouts."""
    if plan.pipeline is None:
        return None
    return cfg.train.global_batch // plan.degrees.dp // plan.pipeline.microbatches


@dataclass(frozen=True)
class HostRates:
    """Measured on this host, one rank's threads (launch.mamf --host-shapes)."""

    gemm_s: dict[str, float]  # gemm_key -> seconds of one fp32 GEMM in its layout
    sdpa_s: dict[str, float]  # sdpa_key -> seconds of forward + backward
    kernel_latency_s: float  # one small elementwise kernel, dispatch included
    memory_gbytes_per_s: float  # streaming bandwidth of one core
    matmul_flops: float  # the launch.mamf ceiling: for a shape not measured
    source: str
    loss_s: dict[str, float] = dataclasses.field(default_factory=dict)  # loss_key -> fwd + bwd
    # overhead_key -> {"root_s", "per_block_s"}: the fixed cost (narrow_model at one token)
    overhead_s: dict[str, dict] = dataclasses.field(default_factory=dict)

    def gemm_time(self, m: int, k: int, n: int, layout: str) -> float:
        measured = self.gemm_s.get(gemm_key(m, k, n, layout))
        return measured if measured is not None else 2 * m * k * n / self.matmul_flops

    def sdpa_time(self, shape: tuple, attention_flops: float) -> float:
        measured = self.sdpa_s.get(sdpa_key(*shape))
        return measured if measured is not None else attention_flops / self.matmul_flops

    def loss_time(self, tokens: int, vocab: int) -> float | None:
        return self.loss_s.get(loss_key(tokens, vocab))

    def fixed_cost(self, m: ModelConfig, *, head: bool, n_checkpointed: int) -> float | None:
        """A micro-step's fixed cost on ``m``'s blocks (a pipeline stage's own), the root's
        part where this rank runs the head; a replayed block adds its forward's share."""
        measured = self.overhead_s.get(overhead_key(m))
        if not isinstance(measured, dict):  # not measured (or an older record's float)
            return None
        ops = FORWARD_KERNELS_PER_BLOCK + BACKWARD_KERNELS_PER_BLOCK
        blocks = m.n_layers + FORWARD_KERNELS_PER_BLOCK / ops * n_checkpointed
        return measured["per_block_s"] * blocks + (measured["root_s"] if head else 0.0)

    @classmethod
    def from_record(cls, record: dict, matmul_flops: float) -> HostRates:
        return cls(
            loss_s=dict(record.get("loss_s") or {}),
            overhead_s=dict(record.get("overhead_s") or {}),
            gemm_s=dict(record.get("gemm_s") or {}),
            sdpa_s=dict(record.get("sdpa_s") or {}),
            kernel_latency_s=record["memory"]["kernel_latency_s"],
            memory_gbytes_per_s=streaming_gbytes_per_s(record["memory"]),
            matmul_flops=matmul_flops,
            source=f"launch.mamf --host-shapes on {record.get('device_name', '?')}, "
            f"{record.get('measured_at', '?')}",
        )


def streaming_gbytes_per_s(memory: dict) -> float:
    """The rate a step's elementwise bytes stream at: that of the largest measured copy (its
    arrays, tens of MB, are past the caches, as a step's activations and weights are), less
    the kernel latency. The record's fitted rate weighs every size alike, so the small,
    cache-resident ones lift it (measured here: 89 GB/s fitted against 22 GB/s at 50 MB,
    where the step's elementwise ops ran at ~25 GB/s in torch.profiler); a record without
    its points keeps the fit."""
    points = memory.get("points") or []
    if not points:
        return memory["gbytes_per_s"]
    largest = max(points, key=lambda p: p["bytes"])
    seconds = largest["time_s"] - memory["kernel_latency_s"]
    return largest["bytes"] / seconds / 1e9 if seconds > 0 else memory["gbytes_per_s"]


@dataclass(frozen=True)
class HostMicroStep:
    """Seconds of one micro-step's forward + backward on one rank, itemised."""

    gemm_s: float
    attention_s: float
    kernels_s: float  # the fixed cost (measured), else the elementwise kernels' latency
    forward_share: float  # of gemm + attention + kernels + loss
    loss_s: float | None = None  # the loss forward + backward, where measured


def host_micro_step(
    m: ModelConfig,
    host: HostRates,
    *,
    micro_batch: int,
    seq_len: int,
    tp: int,
    n_checkpointed: int,
    head: bool = True,
) -> HostMicroStep:
    """GEMMs and attention at their measured times; a replayed (checkpointed) block runs its
    forward GEMMs, attention forward (a third of forward + backward) and kernels again.
    ``head``: this rank runs the output head and the loss (a pipeline's last stage)."""
    tokens = micro_batch * seq_len
    forward = backward = 0.0
    for lin in shapes.block_linears(m, tp):
        fwd, dx, dw = gemms_of_linear(tokens, lin.in_features, lin.out_features)
        forward += host.gemm_time(*fwd) * (m.n_layers + n_checkpointed) / m.n_layers
        backward += host.gemm_time(*dx) + host.gemm_time(*dw)
    forward, backward = forward * m.n_layers, backward * m.n_layers
    fwd, dx, dw = gemms_of_linear(tokens, m.d_model, m.vocab_size // tp)  # vocab-parallel
    head_forward, head_backward = host.gemm_time(*fwd), host.gemm_time(*dx) + host.gemm_time(*dw)
    if not head:
        head_forward = head_backward = 0.0
    shape = attention_shape(m, micro_batch, seq_len, tp)
    flops = 12 * m.n_heads // tp * shapes.head_dim(m) * seq_len * tokens  # one block, fwd+bwd
    attention = host.sdpa_time(shape, flops) * (m.n_layers + n_checkpointed / 3)
    kernels = host.fixed_cost(m, head=head, n_checkpointed=n_checkpointed)
    if kernels is None:
        per_block = FORWARD_KERNELS_PER_BLOCK + BACKWARD_KERNELS_PER_BLOCK
        replayed = FORWARD_KERNELS_PER_BLOCK * n_checkpointed  # a replayed block's forward ops
        kernels = host.kernel_latency_s * (per_block * m.n_layers + replayed)
    loss = host.loss_time(tokens, m.vocab_size // tp) if head else None
    gemm = forward + backward + head_forward + head_backward
    total = gemm + attention + kernels + (loss or 0.0)
    # The loss's forward: about a third of its time (the log-softmax; its backward recomputes
    # the exponentials), measured 1.5 of 4.3 ms at the tiny model's shape.
    forward_part = forward + head_forward + attention / 3 + kernels / 3 + (loss or 0.0) / 3
    share = forward_part / total if total else 0.0
    return HostMicroStep(gemm, attention, kernels, share, loss)
