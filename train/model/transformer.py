"""A Llama-style decoder: RMSNorm, rotary positions, grouped-query attention, SwiGLU, and
for MoE models routed experts in place of the SwiGLU every model.moe_every blocks
(train/model/moe.py).

Written to be read in one sitting (nanoGPT / torchtitan style). Module names are part of
the interface: tensor-parallel plans and fp8 filters select submodules by fully-qualified
name (``layers.0.attention.wq``, ``layers.0.feed_forward.w2``, ``output``, ...).

Parameter counts and FLOPs come from the config alone (train/spec/shapes.py), which this
model builds exactly (tests/unit/test_model.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.model.moe import MoE, SwiGLU, moe_blocks
from train.model.rope import apply_rope, rope_tables
from train.model.weights import init_weights
from train.spec.config import ModelConfig
from train.spec.rules import check_model
from train.spec.shapes import head_dim, is_moe_layer


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm computed in float32 and returned in the input's dtype (as Llama's).

    The same on every device: CUDA autocast may decompose rms_norm into fp32-listed ops and
    return fp32 where CPU returns bf16. Under FSDP2's bf16 parameters the residual stream is
    bf16, and so is what this returns (and what tensor parallelism then moves); with an fp32
    stream (fp32 parameters, autocast) nothing changes.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        return F.rms_norm(x.float(), self.normalized_shape, weight, self.eps).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.head_dim = head_dim(cfg)
        kv_dim = cfg.n_kv_heads * self.head_dim
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, kv_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, kv_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        # Head counts come from the activations, not the config: under tensor parallelism
        # wq/wk/wv are column-sharded and each rank holds only its own heads.
        q = q.view(B, T, -1, self.head_dim)
        k = k.view(B, T, -1, self.head_dim)
        v = v.view(B, T, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, T, head_dim]
        # GQA: each k/v head serves a contiguous group of query heads. repeat_interleave
        # rather than SDPA's enable_gqa, which not every backend/version supports.
        n_rep = q.shape[1] // k.shape[1]
        if n_rep > 1:
            k = k.repeat_interleave(n_rep, dim=1)
            v = v.repeat_interleave(n_rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class FeedForward(SwiGLU):
    """SwiGLU (Shazeer 2020): w2(silu(w1 x) * w3 x), ffn_hidden wide."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.d_model, cfg.ffn_hidden)


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x)); the FFN is
    ``feed_forward`` (dense) or ``moe`` (an MoE block: train/model/moe.py)."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.is_moe = is_moe_layer(cfg, layer)
        if self.is_moe:
            self.moe = MoE(cfg)
        else:
            self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        ffn = self.moe if self.is_moe else self.feed_forward
        return x + ffn(self.ffn_norm(x))


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy over every token, in float32: a bf16/fp16 log-sum-exp over a 50k
    vocab is visibly inexact. Eager, the upcast is a float32 copy of the logits (3.1 GiB at
    8 x 2048 x 50304) and the log-softmax another; compiled (train/parallel/build.py), it fuses
    into the loss's own kernels and neither exists (docs/gpu-benchmark.md)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class Transformer(nn.Module):
    """The decoder. ``seed`` picks the initial weights (train/model/weights.py: each parameter
    from its own seed, so every layout starts from the same weights); None draws it from the
    global torch RNG. Built under ``torch.device("meta")`` it holds shapes only, to be sharded
    and then materialised (train/model/weights.py materialize). ``init=False`` leaves the
    parameters as constructed, for a caller that initialises them later (ZeRO-3's zero.Init)."""

    # forward's loss; train/parallel/build.py puts a compiled one on the instance.
    loss_fn = staticmethod(cross_entropy_loss)

    def __init__(self, cfg: ModelConfig, *, seed: int | None = None, init: bool = True):
        super().__init__()
        check_model(cfg)  # the driver's rules: a shape it would refuse is refused here too
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Non-persistent: derived from the config, so kept out of checkpoints and the
        # optimizer; buffers still follow .to(device) and DDP/FSDP need not sync them.
        cos, sin = rope_tables(head_dim(cfg), cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if init:
            self.init_weights(seed)

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual projections (wo, w2) by 1/sqrt(2L),
        norms ones, rope tables recomputed (train/model/weights.py). Meta parameters stay unfilled.

        The same ``seed`` gives the same weights whatever wraps or shards the model; None
        draws one from the global torch RNG (deterministic given torch.manual_seed).
        """
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), device="cpu"))
        init_weights(self, self.cfg, seed)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab], or the mean cross-entropy if targets given."""
        T = tokens.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin)
        logits = self.output(self.norm(h))
        if targets is None:
            return logits
        return self._with_balancing_gradient(self.loss_fn(logits, targets))

    def _with_balancing_gradient(self, loss: torch.Tensor) -> torch.Tensor:
        """MoE: ``loss`` plus aux_loss_weight x (the blocks' balancing losses minus their own
        value): the value stays the language-model loss (what the run logs and compares),
        the gradient gets the balancing term, scaled with the loss by accumulation and fp16
        loss scaling like any other part of it (train/model/moe.py)."""
        auxes = [a for m in moe_blocks(self) if (a := m.take_aux_loss()) is not None]
        if not auxes:
            return loss
        aux = self.cfg.aux_loss_weight * torch.stack(auxes).sum()
        return loss + (aux - aux.detach())
