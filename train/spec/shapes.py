"""The reference transformer as numbers: parameter shapes per rank, counts and FLOPs.

The one source of these figures for the ranks (MFU, byte counts, memory) and the driver
(validation, the performance model); train/model/transformer.py builds exactly these shapes
(tests/unit/test_model.py checks the built model against them). Pure arithmetic on
ModelConfig, no torch.

Conventions: a Linear's weight is (out, in); ``tp`` is the tensor-parallel degree, and a
shape "as one TP rank holds it" is the rank's shard (column-parallel splits out, row-parallel
splits in).
"""

from __future__ import annotations

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
    """A block's parameter shapes in module order (norms whole; see block_linears)."""
    linears = [lin.shape for lin in block_linears(m, tp)]
    norm = (m.d_model,)
    return [norm, *linears[:4], norm, *linears[4:]]


def root_param_shapes(m: ModelConfig, tp: int = 1) -> list[tuple[int, ...]]:
    """Embedding, final norm and head (one matrix when tied), as one tensor-parallel rank
    holds them: TP splits the vocabulary (vocab/tp rows of each)."""
    rows = m.vocab_size // tp
    head = [] if m.tie_embeddings else [(rows, m.d_model)]
    return [(rows, m.d_model), (m.d_model,), *head]


def all_param_shapes(m: ModelConfig, tp: int = 1) -> list[tuple[int, ...]]:
    """Every parameter in registration order (embedding, blocks, norm, head), as one
    tensor-parallel rank holds it."""
    embedding, *rest = root_param_shapes(m, tp)
    return [embedding, *block_param_shapes(m, tp) * m.n_layers, *rest]


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


def count_params(m: ModelConfig) -> int:
    """Trainable parameters, a tied embedding/output matrix counted once."""
    return numel(all_param_shapes(m))


def param_tensors(m: ModelConfig) -> int:
    """How many parameter tensors the model has (each gets an AdamW step counter)."""
    return len(all_param_shapes(m))


def block_matmul_params(m: ModelConfig, tp: int = 1) -> int:
    """Matmul parameters of one block as one tensor-parallel rank holds them (no norms)."""
    return sum(lin.params for lin in block_linears(m, tp))


def head_matmul_params(m: ModelConfig) -> int:
    return m.vocab_size * m.d_model


def count_matmul_params(m: ModelConfig) -> int:
    """Parameters that take part in matmuls: count_params less the input embedding table.

    An embedding lookup is a gather, not a matmul. When tied, the shared matrix is still
    counted once, as the output head (which is a matmul). Norm weights are included; they are
    negligible. Same convention as torchtitan.
    """
    embedding = 0 if m.tie_embeddings else m.vocab_size * m.d_model
    return count_params(m) - embedding


def attention_flops_per_token(m: ModelConfig, seq_len: int) -> int:
    """Attention scores and values, forward + backward: 12 L H Q T (PaLM, Chowdhery et al.
    2022, appendix B; Q = head_dim, T = seq_len), not halved for the causal mask (as PaLM and
    torchtitan)."""
    return 12 * m.n_layers * m.n_heads * head_dim(m) * seq_len


def flops_per_token(m: ModelConfig, seq_len: int) -> int:
    """Model FLOPs per token for one forward + backward pass, without recomputation: 6 N
    (2 forward, 4 backward per matmul parameter, N = count_matmul_params) plus attention.
    MFU's numerator; activation recomputation is HFU's business."""
    return 6 * count_matmul_params(m) + attention_flops_per_token(m, seq_len)


def recompute_flops_per_token(m: ModelConfig, seq_len: int, n_checkpointed: int) -> int:
    """Extra FLOPs per token from re-running the forward of ``n_checkpointed`` blocks: a
    block's forward is 2 FLOPs per matmul parameter plus a third of its attention term
    (4 H Q T of its 12 H Q T)."""
    block_forward = 2 * block_matmul_params(m) + 4 * m.n_heads * head_dim(m) * seq_len
    return n_checkpointed * block_forward
