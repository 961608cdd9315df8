"""The model: the spec's parameter/FLOP counts against hand arithmetic, the built model against
the spec's shapes (train/spec/shapes.py), and the properties training needs."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import model_config
from train.model.transformer import Transformer
from train.spec.config import ModelConfig
from train.spec.shapes import all_param_shapes, count_matmul_params, count_params, flops_per_token

# Tied with GQA (4 query heads share 2 kv heads), and untied multi-head (n_kv == n_heads).
TIED_GQA = model_config(
    name="tied_gqa", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=160,
    vocab_size=256, max_seq_len=64, tie_embeddings=True,
)  # fmt: skip
UNTIED_MHA = model_config(
    name="untied_mha", n_layers=3, d_model=48, n_heads=6, n_kv_heads=6, ffn_hidden=128,
    vocab_size=200, max_seq_len=32, tie_embeddings=False,
)  # fmt: skip
SHAPES = [TIED_GQA, UNTIED_MHA]


def build(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg)


def tokens(cfg: ModelConfig, batch: int = 2, seq: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


def test_count_params_by_hand():
    # TIED_GQA: d=64, head_dim=16, kv=2 -> wk/wv each 64*32; ffn 160; vocab 256; 2 layers.
    per_layer = 64 * 64 + 2 * (64 * 2 * 16) + 64 * 64 + 3 * 64 * 160 + 2 * 64
    assert count_params(TIED_GQA) == 2 * per_layer + 64 + 256 * 64  # tied: one vocab matrix
    # UNTIED_MHA: d=48, head_dim=8, kv=6 -> wk/wv each 48*48; ffn 128; vocab 200; 3 layers.
    per_layer = 48 * 48 + 2 * (48 * 6 * 8) + 48 * 48 + 3 * 48 * 128 + 2 * 48
    assert count_params(UNTIED_MHA) == 3 * per_layer + 48 + 200 * 48 + 200 * 48


@pytest.mark.parametrize("cfg", SHAPES, ids=lambda c: c.name)
def test_count_params_matches_model(cfg):
    model = build(cfg)
    assert count_params(cfg) == sum(p.numel() for p in model.parameters())
    # The one source of shapes is the spec: the model builds exactly those, in order.
    assert [tuple(p.shape) for p in model.parameters()] == all_param_shapes(cfg)
    # Rope tables are derived from the config: neither parameters nor checkpointed.
    assert not any("rope" in k for k in model.state_dict())


def test_flops_per_token_by_hand():
    T = 64
    # Tied: the shared matrix counts once, as the output head, so N = count_params.
    n = count_params(TIED_GQA)
    assert count_matmul_params(TIED_GQA) == n
    assert flops_per_token(TIED_GQA, T) == 6 * n + 12 * 2 * 4 * 16 * T
    # Untied: the input embedding table is a lookup, not a matmul.
    n = count_params(UNTIED_MHA) - 200 * 48
    assert count_matmul_params(UNTIED_MHA) == n
    assert flops_per_token(UNTIED_MHA, T) == 6 * n + 12 * 3 * 6 * 8 * T


@pytest.mark.parametrize("cfg", SHAPES, ids=lambda c: c.name)
def test_forward_backward(cfg):
    model = build(cfg)
    x = tokens(cfg)
    logits = model(x)
    assert logits.shape == (2, 16, cfg.vocab_size)
    assert torch.isfinite(logits).all()
    loss = model(x, tokens(cfg, seed=2))
    assert loss.ndim == 0 and loss.dtype == torch.float32
    # Small init -> near-uniform predictions -> cross-entropy close to ln(vocab).
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_full_length_sequence():
    model = build(TIED_GQA)
    assert model(tokens(TIED_GQA, batch=1, seq=TIED_GQA.max_seq_len)).shape[1] == 64
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(TIED_GQA, batch=1, seq=TIED_GQA.max_seq_len + 1))


def sgd_losses(seed: int, steps: int = 3) -> tuple[dict[str, torch.Tensor], list[float]]:
    model = build(TIED_GQA, seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = tokens(TIED_GQA), tokens(TIED_GQA, seed=2)
    losses = []
    for _ in range(steps):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return init, losses


def test_seed_determinism():
    init_a, losses_a = sgd_losses(seed=0)
    init_b, losses_b = sgd_losses(seed=0)
    assert init_a.keys() == init_b.keys()
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    assert losses_a == losses_b
    assert losses_a[-1] < losses_a[0]  # the steps actually train

    init_c, _ = sgd_losses(seed=1)
    assert not torch.equal(init_a["tok_embeddings.weight"], init_c["tok_embeddings.weight"])
    assert not torch.equal(
        init_a["layers.0.attention.wq.weight"], init_c["layers.0.attention.wq.weight"]
    )


def test_init_scales():
    model = build(UNTIED_MHA)
    big = torch.cat([model.layers[i].attention.wq.weight.flatten() for i in range(3)])
    small = torch.cat([model.layers[i].feed_forward.w2.weight.flatten() for i in range(3)])
    assert big.std().item() == pytest.approx(0.02, rel=0.1)
    assert small.std().item() == pytest.approx(0.02 / math.sqrt(2 * 3), rel=0.1)
    assert torch.equal(model.norm.weight, torch.ones(48))


def test_gqa_shapes():
    model = build(TIED_GQA)
    attn = model.layers[0].attention
    head_dim = 64 // 4
    assert attn.wq.weight.shape == (4 * head_dim, 64)
    assert attn.wk.weight.shape == (2 * head_dim, 64)
    assert attn.wv.weight.shape == (2 * head_dim, 64)
    assert torch.isfinite(model(tokens(TIED_GQA))).all()


@pytest.mark.parametrize("cfg", SHAPES, ids=lambda c: c.name)
def test_causal(cfg):
    model = build(cfg).eval()
    x = tokens(cfg, batch=1, seq=12)
    t = 5
    x2 = x.clone()
    x2[0, t + 1] = (x[0, t + 1] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(x), model(x2)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t + 1], b[:, t + 1])


def test_tied_embeddings():
    tied, untied = build(TIED_GQA), build(UNTIED_MHA)
    assert tied.output.weight is tied.tok_embeddings.weight
    assert untied.output.weight is not untied.tok_embeddings.weight


def test_module_names():
    # Tensor-parallel plans and fp8 filters select modules by these fully-qualified names.
    names = dict(build(TIED_GQA).named_modules())
    for suffix in (
        "attention.wq",
        "attention.wk",
        "attention.wv",
        "attention.wo",
        "feed_forward.w1",
        "feed_forward.w2",
        "feed_forward.w3",
        "attention_norm",
        "ffn_norm",
    ):
        assert isinstance(names[f"layers.1.{suffix}"], torch.nn.Module), suffix
    assert isinstance(names["layers.0.attention_norm"], torch.nn.RMSNorm)
    assert isinstance(names["tok_embeddings"], torch.nn.Embedding)
    assert isinstance(names["norm"], torch.nn.RMSNorm)
    assert isinstance(names["output"], torch.nn.Linear)


def test_column_sharded_heads():
    # Emulate a tensor-parallel rank holding half the heads: slice wq/wk/wv by rows and wo by
    # columns; the attention must read its local head count from the activations.
    model = build(TIED_GQA)
    attn = model.layers[0].attention
    x = torch.randn(1, 8, 64)
    cos, sin = model.rope_cos[:8], model.rope_sin[:8]
    with torch.no_grad():
        full = attn(x, cos, sin)
        halves = []
        for r in range(2):
            local = type(attn)(TIED_GQA)
            q_rows, kv_rows = slice(r * 32, (r + 1) * 32), slice(r * 16, (r + 1) * 16)
            local.wq.weight = torch.nn.Parameter(attn.wq.weight[q_rows])
            local.wk.weight = torch.nn.Parameter(attn.wk.weight[kv_rows])
            local.wv.weight = torch.nn.Parameter(attn.wv.weight[kv_rows])
            local.wo.weight = torch.nn.Parameter(attn.wo.weight[:, q_rows])
            halves.append(local(x, cos, sin))
    torch.testing.assert_close(halves[0] + halves[1], full, rtol=1e-5, atol=1e-6)
