"""Parameters and FLOPs of the reference transformer, as pure arithmetic on ModelConfig.

The same formulas as train/model/transformer.py (count_params, count_matmul_params, flops_per_token),
train/parallel/activation_checkpoint.py (recompute_flops_per_token), which import torch; unit tests
hold them equal. The parameter shapes per rank are train/spec/shapes.py's (torch-free).
"""

from __future__ import annotations

from train.spec.config import ModelConfig
from train.spec.shapes import (  # noqa: F401 - re-exported: the model reads shapes.* here
    all_param_shapes,
    block_param_shapes,
    numel,
    root_param_shapes,
)


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
    """Model FLOPs per token (6N + 12 L H Q T), as train.model.transformer.flops_per_token."""
    return 6 * count_matmul_params(m) + attention_flops_per_token(m, seq_len)


def recompute_flops_per_token(m: ModelConfig, seq_len: int, n_checkpointed: int) -> int:
    """A checkpointed block's forward again: 2 x its matmul params + 4 H Q T."""
    block_forward = 2 * block_matmul_params(m) + 4 * m.n_heads * head_dim(m) * seq_len
    return n_checkpointed * block_forward


def param_tensors(m: ModelConfig) -> int:
    """How many parameter tensors the model has (each gets an AdamW step counter)."""
    return len(all_param_shapes(m))
