"""The reference transformer as numbers: parameter shapes per rank, counts and FLOPs.

The one source of these figures for the ranks (MFU, byte counts, memory) and the driver
(validation, the performance model); train/model/transformer.py builds exactly these shapes
(tests/unit/test_model.py checks the built model against them). Pure arithmetic on
ModelConfig, no torch.

Conventions: a Linear's weight is (out, in); ``tp`` is the tensor-parallel degree, and a
shape "as one TP rank holds it" is the rank's shard (column-parallel splits out, row-parallel
splits in). ``ep`` is the expert-parallel degree: a rank holds n_experts / ep of each MoE
block's experts, stored as three (experts, out, in) weights.

Mixture of experts (model.n_experts > 0): the blocks ``moe_layers`` lists replace their FFN
with a router (d_model -> n_experts), the routed experts and the shared experts (one SwiGLU
n_shared_experts x expert_ffn_hidden wide). Counts come in two kinds: total (what is stored,
``count_params``) and active (what one token computes with: attention, router, shared experts
and top_k of the routed ones, ``count_active_params``); FLOPs count the active ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from train.spec.config import ModelConfig


@dataclass(frozen=True)
class Linear:
    """One Linear layer of a block, as one tensor-parallel rank holds it."""

    name: str  # module path inside a block (train/model/transformer.py)
    in_features: int
    out_features: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def params(self) -> int:
        return self.in_features * self.out_features


def head_dim(m: ModelConfig) -> int:
    return m.d_model // m.n_heads


def block_linears(m: ModelConfig, tp: int = 1) -> list[Linear]:
    """The Linear layers of one block in module order: wq/wk/wv/w1/w3 split by output
    (column-parallel), wo/w2 by input (row-parallel)."""
    hd, d = head_dim(m), m.d_model
    q, kv, f = m.n_heads * hd // tp, m.n_kv_heads * hd // tp, m.ffn_hidden // tp
    return [
        Linear("attention.wq", d, q),
        Linear("attention.wk", d, kv),
        Linear("attention.wv", d, kv),
        Linear("attention.wo", q, d),
        Linear("feed_forward.w1", d, f),
        Linear("feed_forward.w2", f, d),
        Linear("feed_forward.w3", d, f),
    ]


def block_param_shapes(m: ModelConfig, tp: int = 1) -> list[tuple[int, ...]]:
    """A dense block's parameter shapes in module order (norms whole; see block_linears)."""
    linears = [lin.shape for lin in block_linears(m, tp)]
    norm = (m.d_model,)
    return [norm, *linears[:4], norm, *linears[4:]]


# -- mixture of experts -----------------------------------------------------------------------


def is_moe(m: ModelConfig) -> bool:
    return m.n_experts > 0


def is_moe_layer(m: ModelConfig, layer: int) -> bool:
    """Whether block ``layer`` routes its FFN to experts (train/spec/config.py ModelConfig)."""
    if not is_moe(m) or layer < m.n_dense_layers:
        return False
    return (layer - m.n_dense_layers + 1) % m.moe_every == 0


def moe_layers(m: ModelConfig) -> list[int]:
    return [i for i in range(m.n_layers) if is_moe_layer(m, i)]


def expert_hidden(m: ModelConfig) -> int:
    """One routed (or shared) expert's SwiGLU width."""
    return m.expert_ffn_hidden or m.ffn_hidden


def moe_linears(m: ModelConfig) -> list[Linear]:
    """The Linear layers of an MoE block in module order: attention, the router's gate, the
    shared experts (as one SwiGLU of n_shared_experts x expert_ffn_hidden). The routed
    experts are not Linear layers (``expert_param_shapes``)."""
    d, shared = m.d_model, m.n_shared_experts * expert_hidden(m)
    out = [*block_linears(m)[:4], Linear("moe.router.gate", d, m.n_experts)]
    if shared:
        out += [
            Linear("moe.shared_experts.w1", d, shared),
            Linear("moe.shared_experts.w2", shared, d),
            Linear("moe.shared_experts.w3", d, shared),
        ]
    return out


def expert_param_shapes(m: ModelConfig, ep: int = 1) -> list[tuple[int, ...]]:
    """The routed experts of one MoE block as one expert-parallel rank holds them: w1, w2, w3
    as (experts, out, in), n_experts / ep experts each."""
    experts, d, h = m.n_experts // ep, m.d_model, expert_hidden(m)
    return [(experts, h, d), (experts, d, h), (experts, h, d)]


def moe_block_param_shapes(
    m: ModelConfig, ep: int = 1, *, experts: bool = True
) -> list[tuple[int, ...]]:
    """An MoE block's parameter shapes in module order: attention_norm, attention, ffn_norm,
    router, routed experts (ep-split; left out when not ``experts``), shared experts."""
    linears = [lin.shape for lin in moe_linears(m)]
    norm = (m.d_model,)
    routed = expert_param_shapes(m, ep) if experts else []
    return [norm, *linears[:4], norm, linears[4], *routed, *linears[5:]]


def expert_capacity(m: ModelConfig, tokens: int) -> int | None:
    """Assignments each expert takes from ``tokens`` routed together (one micro-batch on one
    rank) under model.capacity_factor; None when dropless."""
    if m.capacity_factor is None:
        return None
    return math.ceil(m.capacity_factor * tokens * m.top_k / m.n_experts)


def layer_param_shapes(m: ModelConfig, layer: int, tp: int = 1, ep: int = 1):
    """Block ``layer``'s parameter shapes (dense or MoE) as one TP / EP rank holds them."""
    if is_moe_layer(m, layer):
        return moe_block_param_shapes(m, ep)
    return block_param_shapes(m, tp)


def root_param_shapes(m: ModelConfig, tp: int = 1) -> list[tuple[int, ...]]:
    """Embedding, final norm and head (one matrix when tied), as one tensor-parallel rank
    holds them: TP splits the vocabulary (vocab/tp rows of each)."""
    rows = m.vocab_size // tp
    head = [] if m.tie_embeddings else [(rows, m.d_model)]
    return [(rows, m.d_model), (m.d_model,), *head]


def all_param_shapes(m: ModelConfig, tp: int = 1, ep: int = 1) -> list[tuple[int, ...]]:
    """Every parameter in registration order (embedding, blocks, norm, head), as one
    tensor-parallel (and expert-parallel) rank holds it."""
    embedding, *rest = root_param_shapes(m, tp)
    blocks = [s for i in range(m.n_layers) for s in layer_param_shapes(m, i, tp, ep)]
    return [embedding, *blocks, *rest]


def numel(shapes: list[tuple[int, ...]], pad_to: int = 1, pad_dim: int = 0) -> int:
    """Elements of ``shapes``, each dim ``pad_dim`` padded to a multiple of ``pad_to`` (the
    dim FSDP2 shards on)."""
    total = 0
    for shape in shapes:
        padded = 1
        for i, dim in enumerate(shape):
            padded *= -(-dim // pad_to) * pad_to if i == pad_dim else dim
        total += padded
    return total


def expert_shard_dim(m: ModelConfig, ep: int, dp_shard: int) -> int:
    """The dim FSDP2 shards each routed-expert tensor on (experts, out, in): 0 while every
    dp_shard rank gets a whole expert; else 1, as torchtitan does, because dim 0 would be padded
    to dp_shard rows: one expert over 8 ranks leaves each rank a whole expert's worth. Dim 1
    only where it splits evenly (d_model and the expert width multiples of dp_shard): torch
    2.13's FSDP2 refuses an uneven shard on a dim other than 0 (_fsdp_param.py), so there dim
    0 stays, padded."""
    if m.n_experts // ep >= dp_shard:
        return 0
    return 1 if m.d_model % dp_shard == 0 and expert_hidden(m) % dp_shard == 0 else 0


def count_params(m: ModelConfig) -> int:
    """Trainable parameters, a tied embedding/output matrix counted once (every expert)."""
    return numel(all_param_shapes(m))


def inactive_expert_params(m: ModelConfig) -> int:
    """Parameters of the routed experts a token does not use: n_experts - top_k of them in
    each MoE block (0 for a dense model)."""
    if not is_moe(m):
        return 0
    per_expert = numel(expert_param_shapes(m)) // m.n_experts
    return len(moe_layers(m)) * (m.n_experts - m.top_k) * per_expert


def count_active_params(m: ModelConfig) -> int:
    """Parameters one token computes with: count_params less the experts it is not routed to
    (equal to count_params for a dense model)."""
    return count_params(m) - inactive_expert_params(m)


def param_tensors(m: ModelConfig) -> int:
    """How many parameter tensors the model has (each gets an AdamW step counter)."""
    return len(all_param_shapes(m))


def block_matmul_params(m: ModelConfig, tp: int = 1) -> int:
    """Matmul parameters of one dense block as one tensor-parallel rank holds them (no
    norms)."""
    return sum(lin.params for lin in block_linears(m, tp))


def layer_active_matmul_params(m: ModelConfig, layer: int) -> int:
    """Matmul parameters one token meets in block ``layer``: a dense block's, or an MoE
    block's attention, router, shared experts and top_k routed experts (no norms)."""
    if not is_moe_layer(m, layer):
        return block_matmul_params(m)
    per_expert = numel(expert_param_shapes(m)) // m.n_experts
    return sum(lin.params for lin in moe_linears(m)) + m.top_k * per_expert


def head_matmul_params(m: ModelConfig) -> int:
    return m.vocab_size * m.d_model


def count_matmul_params(m: ModelConfig) -> int:
    """Parameters that take part in matmuls: count_params less the input embedding table.

    An embedding lookup is a gather, not a matmul. When tied, the shared matrix is still
    counted once, as the output head (which is a matmul). Norm weights are included; they are
    negligible. Same convention as torchtitan. Every expert counted (see the active count).
    """
    embedding = 0 if m.tie_embeddings else m.vocab_size * m.d_model
    return count_params(m) - embedding


def count_active_matmul_params(m: ModelConfig) -> int:
    """count_matmul_params with only the top_k routed experts a token uses (MoE): N_active."""
    return count_matmul_params(m) - inactive_expert_params(m)


def attention_flops_per_token(m: ModelConfig, seq_len: int) -> int:
    """Attention scores and values, forward + backward: 12 L H Q T (PaLM, Chowdhery et al.
    2022, appendix B; Q = head_dim, T = seq_len), not halved for the causal mask (as PaLM and
    torchtitan)."""
    return 12 * m.n_layers * m.n_heads * head_dim(m) * seq_len


def flops_per_token(m: ModelConfig, seq_len: int) -> int:
    """Model FLOPs per token for one forward + backward pass, without recomputation: 6 N
    (2 forward, 4 backward per matmul parameter, N = count_active_matmul_params: every one of
    a dense model, the top_k routed experts of an MoE block) plus attention. MFU's numerator;
    activation recomputation is HFU's business."""
    return 6 * count_active_matmul_params(m) + attention_flops_per_token(m, seq_len)


def recompute_flops_per_token(m: ModelConfig, seq_len: int, checkpointed: list[int]) -> int:
    """Extra FLOPs per token from re-running the forward of the ``checkpointed`` blocks: a
    block's forward is 2 FLOPs per (active) matmul parameter plus a third of its attention
    term (4 H Q T of its 12 H Q T)."""
    attention = 4 * m.n_heads * head_dim(m) * seq_len
    return sum(2 * layer_active_matmul_params(m, i) + attention for i in checkpointed)
