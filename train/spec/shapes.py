"""The reference transformer's parameter shapes per rank, as pure arithmetic on ModelConfig
(no torch): what train/model/transformer.py builds, for the byte counts (train/spec/traffic.py) and the
performance model (launch/perfmodel/), which must agree."""

from __future__ import annotations

from train.spec.config import ModelConfig


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
