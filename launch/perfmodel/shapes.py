"""Parameters and FLOPs of the reference transformer, as pure arithmetic on ModelConfig.

The same formulas as train/model.py (count_params, count_matmul_params, flops_per_token),
train/parallel/checkpointing.py (recompute_flops_per_token) and train/comm_volume.py (the
parameter shapes per rank), which import torch; unit tests hold them equal.
"""

from __future__ import annotations

from train.config import ModelConfig


def block_param_shapes(m: ModelConfig, tp: int = 1) -> list[tuple[int, ...]]:
    """A block's parameter shapes as one tensor-parallel rank holds them (Linear: out, in)."""
    hd = m.d_model // m.n_heads
    q, kv, f = m.n_heads * hd // tp, m.n_kv_heads * hd // tp, m.ffn_hidden // tp
    d = m.d_model
    return [(d,), (q, d), (kv, d), (kv, d), (d, q), (d,), (f, d), (d, f), (f, d)]


def root_param_shapes(m: ModelConfig) -> list[tuple[int, ...]]:
    """Embedding, final norm and head (one matrix when tied)."""
    head = [] if m.tie_embeddings else [(m.vocab_size, m.d_model)]
    return [(m.vocab_size, m.d_model), (m.d_model,), *head]


def all_param_shapes(m: ModelConfig) -> list[tuple[int, ...]]:
    return block_param_shapes(m) * m.n_layers + root_param_shapes(m)


def numel(shapes: list[tuple[int, ...]], pad_to: int = 1) -> int:
    """Elements of ``shapes``, each dim 0 padded to a multiple of ``pad_to`` (FSDP's shards)."""
    total = 0
    for shape in shapes:
        rows = -(-shape[0] // pad_to) * pad_to
        rest = 1
        for dim in shape[1:]:
            rest *= dim
        total += rows * rest
    return total


def head_dim(m: ModelConfig) -> int:
    return m.d_model // m.n_heads


def count_params(m: ModelConfig) -> int:
    return numel(all_param_shapes(m))


def block_matmul_params(m: ModelConfig, tp: int = 1) -> int:
    """Matmul parameters of one block as one tensor-parallel rank holds them (no norms)."""
    return numel([s for s in block_param_shapes(m, tp) if len(s) == 2])


def head_matmul_params(m: ModelConfig) -> int:
    return m.vocab_size * m.d_model


def count_matmul_params(m: ModelConfig) -> int:
    """count_params less the input embedding (a gather), a tied matrix counted as the head."""
    embedding = 0 if m.tie_embeddings else m.vocab_size * m.d_model
    return count_params(m) - embedding


def attention_flops_per_token(m: ModelConfig, seq_len: int) -> int:
    """Scores and values, forward and backward (PaLM appendix B: 12 L H Q T)."""
    return 12 * m.n_layers * m.n_heads * head_dim(m) * seq_len


def flops_per_token(m: ModelConfig, seq_len: int) -> int:
    """Model FLOPs per token (6N + 12 L H Q T), as train.model.flops_per_token."""
    return 6 * count_matmul_params(m) + attention_flops_per_token(m, seq_len)


def recompute_flops_per_token(m: ModelConfig, seq_len: int, n_checkpointed: int) -> int:
    """A checkpointed block's forward again: 2 x its matmul params + 4 H Q T."""
    block_forward = 2 * block_matmul_params(m) + 4 * m.n_heads * head_dim(m) * seq_len
    return n_checkpointed * block_forward


def param_tensors(m: ModelConfig) -> int:
    """How many parameter tensors the model has (each gets an AdamW step counter)."""
    return len(all_param_shapes(m))
