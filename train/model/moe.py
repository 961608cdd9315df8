"""Mixture of experts: the FFN of an MoE block (train/model/transformer.py), after Switch,
GShard, Mixtral and DeepSeek (torchtitan's MoE, written to be read in one sitting).

Per token: a router scores every expert (softmax or sigmoid of a d_model -> n_experts
Linear), the top_k are chosen (on the scores plus DeepSeek-V3's balancing bias when it is on,
from at most route_max_nodes expert groups when set), and the token's output is the sum of
their SwiGLU outputs weighted by their scores (route_norm: rescaled to sum to 1; times
route_scale), plus the shared experts' output when there are any.

Tokens reach their experts sorted by expert: ``experts(rows, counts)`` computes expert e on
its ``counts[e]`` consecutive rows. On one rank that is the whole story; under expert
parallelism hooks around ``experts`` (train/parallel/expert_parallel.py) send each rank's
rows to the ranks holding their experts and the results back (all-to-all), so this module
is the same for every layout, and the rows an expert sees do not depend on it.

Dropless by default: every assignment is computed. With model.capacity_factor each expert
takes at most ``expert_capacity`` assignments of a micro-batch (first choices first, then by
position, GShard's priority), the rest are dropped (the token keeps its residual), and every
expert's rows are padded to that capacity (zero rows, zero outputs, zero gradients).

Load balancing: the Switch/GShard loss n_experts x sum_i f_i P_i per micro-batch, added to
the gradient but not to the loss's value (train/model/transformer.py), and DeepSeek-V3's
per-expert bias, nudged after each optimizer step (``Router.nudge_bias``). Each block also
counts what it routed (tokens per expert, dropped assignments, the balancing loss) for the
run's metrics (``take_routing_stats``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor

from train.spec.config import ModelConfig
from train.spec.shapes import expert_capacity, expert_hidden


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a weight (EP splits the experts: a DTensor sharded over them)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def recomputing() -> bool:
    """Inside backward: a checkpointed block running its forward again. What it routes then
    was counted the first time."""
    return torch._C._current_graph_task_id() != -1


class ExpertWeights(nn.Module):
    """One projection of every expert, (experts, out, in). Named ``<...>.weight`` like a
    Linear's, so initialisation treats it as one (train/model/weights.py)."""

    def __init__(self, experts: int, out_features: int, in_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, out_features, in_features))


class GroupedExperts(nn.Module):
    """n_experts SwiGLU experts: w2(silu(w1 x) * w3 x) on each expert's own rows.

    ``grouped_mm``: one torch._grouped_mm per projection for all of a rank's experts (set by
    the layout: train/parallel/expert_parallel.py grouped_mm_for); else one matmul per
    expert."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        experts, d, h = cfg.n_experts, cfg.d_model, expert_hidden(cfg)
        self.w1 = ExpertWeights(experts, h, d)
        self.w2 = ExpertWeights(experts, d, h)
        self.w3 = ExpertWeights(experts, h, d)
        self.grouped_mm = False

    def forward(self, rows: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``rows`` [sum(counts), d] sorted by expert; ``counts`` [experts] int64."""
        w1, w2, w3 = (local(p.weight) for p in (self.w1, self.w2, self.w3))
        if self.grouped_mm:
            return _grouped_swiglu(rows, w1, w2, w3, counts)
        outputs = [
            F.linear(F.silu(F.linear(x, a)) * F.linear(x, c), b)
            for x, a, b, c in zip(rows.split(counts.tolist()), w1, w2, w3, strict=True)
        ]
        return torch.cat(outputs)


def _grouped_swiglu(rows, w1, w2, w3, counts) -> torch.Tensor:
    """The experts as three grouped GEMMs: expert e's rows end at offsets[e]. Inputs in the
    autocast dtype when autocast is on (the kernel takes one dtype; autocast does not cast
    for it)."""
    device = rows.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else rows.dtype
    rows, w1, w2, w3 = (t.to(dtype) for t in (rows, w1, w2, w3))
    offsets = counts.cumsum(0).to(torch.int32)
    gate = torch._grouped_mm(rows, w1.transpose(-2, -1), offs=offsets)
    up = torch._grouped_mm(rows, w3.transpose(-2, -1), offs=offsets)
    return torch._grouped_mm(F.silu(gate) * up, w2.transpose(-2, -1), offs=offsets)


@dataclass(frozen=True)
class Routing:
    scores: torch.Tensor  # [tokens, experts] float32, softmax or sigmoid
    indices: torch.Tensor  # [tokens, top_k] the chosen experts, best first
    weights: torch.Tensor  # [tokens, top_k] float32, what each chosen output is scaled by


class Router(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.cfg = cfg
        if cfg.router_bias_update:
            # DeepSeek-V3's balancing bias: state, so a buffer (checkpointed with the model).
            self.register_buffer("expert_bias", torch.zeros(cfg.n_experts))

    def forward(self, x: torch.Tensor) -> Routing:
        cfg = self.cfg
        logits = self.gate(x).float()
        scores = logits.softmax(-1) if cfg.router_score == "softmax" else logits.sigmoid()
        choice = scores.detach()
        if cfg.router_bias_update:
            choice = choice + self.expert_bias  # the choice only: weights stay the scores
        if cfg.route_max_nodes is not None:
            choice = limit_groups(choice, cfg.route_groups, cfg.route_max_nodes)
        indices = choice.topk(cfg.top_k, dim=-1).indices
        weights = scores.gather(-1, indices)
        if cfg.route_norm:
            weights = weights / weights.sum(-1, keepdim=True)
        return Routing(scores, indices, weights * cfg.route_scale)

    @torch.no_grad()
    def nudge_bias(self, load: torch.Tensor) -> None:
        """DeepSeek-V3: each expert's bias moves router_bias_update towards balance, up when
        it took fewer than the mean of ``load`` (tokens per expert), down when more."""
        load = load.float()
        self.expert_bias += self.cfg.router_bias_update * torch.sign(load.mean() - load)


def limit_groups(choice: torch.Tensor, groups: int, keep: int) -> torch.Tensor:
    """Node-limited routing (DeepSeek-V3): ``choice`` [tokens, experts] with every expert
    outside each token's ``keep`` best groups set to -inf; a group's score is the sum of its
    two best experts' (one where a group holds one)."""
    tokens, experts = choice.shape
    grouped = choice.view(tokens, groups, experts // groups)
    best = grouped.topk(min(2, experts // groups), dim=-1).values.sum(-1)
    chosen = best.topk(keep, dim=-1).indices
    allowed = torch.zeros_like(best, dtype=torch.bool).scatter_(1, chosen, True)
    return grouped.masked_fill(~allowed.unsqueeze(-1), float("-inf")).view(tokens, experts)


class LoadBalancingLoss(torch.autograd.Function):
    """Switch/GShard: n_experts x sum_i f_i P_i, f_i the share of the micro-batch's
    assignments routed to expert i (a count: no gradient), P_i the mean over tokens of each
    token's score distribution (sigmoid scores normalised per token first).

    Its inputs are kept as attributes, not saved tensors: this backward hangs off the loss and
    runs before the block's own, and a checkpointed block recomputes its saved tensors on
    first use, when FSDP2 may not have gathered the block's parameters yet."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, load_share: torch.Tensor, normalise: bool):
        tokens, experts = scores.shape
        total = scores.sum(-1, keepdim=True) if normalise else None
        probs = scores / total if normalise else scores
        ctx.shape, ctx.probs, ctx.total = scores.shape, probs, total
        ctx.grad_probs = load_share * (experts / tokens)  # d loss / d probs[n], every n
        return experts * (probs.mean(0) * load_share).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = (ctx.grad_probs * grad).expand(ctx.shape)
        if ctx.total is not None:  # through probs = scores / their sum
            g = (g - (ctx.probs * g).sum(-1, keepdim=True)) / ctx.total
        return g, None, None


class RoutingStats:
    """What one MoE block routed since it was last asked (all on its device): tokens per
    expert (before any drop), dropped and all assignments, the balancing loss's sum and how
    many micro-batches it covers."""

    def __init__(self, n_experts: int):
        self.n_experts = n_experts
        self.values: torch.Tensor | None = None

    def add(self, counts: torch.Tensor, dropped: torch.Tensor, aux: torch.Tensor | None):
        extra = torch.stack(
            [
                dropped.to(torch.float64),
                counts.sum().to(torch.float64),
                (aux.detach() if aux is not None else counts.new_zeros(())).to(torch.float64),
                counts.new_ones((), dtype=torch.float64),
            ]
        )
        values = torch.cat([counts.to(torch.float64), extra])
        self.values = values if self.values is None else self.values + values

    def take(self, device: torch.device) -> torch.Tensor:
        values = self.values
        self.values = None
        return values if values is not None else torch.zeros(self.n_experts + 4, device=device)


class MoE(nn.Module):
    """The FFN of an MoE block: router, routed experts, shared experts."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.router = Router(cfg)
        self.experts = GroupedExperts(cfg)
        shared = cfg.n_shared_experts * expert_hidden(cfg)
        self.shared_experts = SwiGLU(cfg.d_model, shared) if shared else None
        self.stats = RoutingStats(cfg.n_experts)
        self._load: torch.Tensor | None = None  # tokens per expert since the bias last moved
        self._aux_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg, shape = self.cfg, x.shape
        tokens = x.reshape(-1, shape[-1])
        routing = self.router(tokens)
        counts = torch.bincount(routing.indices.flatten(), minlength=cfg.n_experts)
        capacity = expert_capacity(cfg, tokens.shape[0])
        if capacity is None:
            outputs, dropped = self._dropless(tokens, routing, counts), counts.new_zeros(())
        else:
            outputs, dropped = self._with_capacity(tokens, routing, capacity)
        # Each token's top_k outputs, weighted, in float32 (as torchtitan), back in its dtype.
        routed = (outputs.float() * routing.weights.unsqueeze(-1)).sum(1).type_as(tokens)
        if self.shared_experts is not None:
            routed = routed + self.shared_experts(tokens)
        aux = None
        if cfg.aux_loss_weight:
            share = counts.to(torch.float32) / routing.indices.numel()
            aux = LoadBalancingLoss.apply(routing.scores, share, cfg.router_score == "sigmoid")
        if not recomputing():
            self._aux_loss = aux
            self.stats.add(counts, dropped, aux)
            if cfg.router_bias_update:
                self._load = counts if self._load is None else self._load + counts
        return routed.view(shape)

    def _dropless(self, tokens, routing: Routing, counts) -> torch.Tensor:
        """[tokens, top_k, d]: every assignment computed, rows sorted by expert."""
        k = self.cfg.top_k
        order = routing.indices.flatten().argsort(stable=True)  # assignment n*k+j, by expert
        outputs = self.experts(tokens[order // k], counts)
        return outputs[order.argsort()].view(-1, k, tokens.shape[-1])

    def _with_capacity(self, tokens, routing: Routing, capacity: int):
        """[tokens, top_k, d] with dropped assignments zero, and how many were dropped. Each
        expert's rows are its first ``capacity`` assignments in priority order (every
        token's first choice, then every token's second, ...), padded with zero rows."""
        cfg, (n, d) = self.cfg, tokens.shape
        expert = routing.indices.t().flatten()  # assignment j*n + token, in priority order
        position = F.one_hot(expert, cfg.n_experts).cumsum(0).gather(1, expert[:, None])[:, 0]
        kept = position <= capacity
        slot = (expert * capacity + position - 1).clamp(max=cfg.n_experts * capacity - 1)
        token = torch.arange(n, device=tokens.device).repeat(cfg.top_k)
        rows = tokens.new_zeros(cfg.n_experts * capacity, d)
        rows = rows.index_put((slot[kept],), tokens[token[kept]])
        full = torch.full((cfg.n_experts,), capacity, dtype=torch.int64, device=tokens.device)
        outputs = self.experts(rows, full)[slot] * kept.unsqueeze(-1)
        dropped = (~kept).sum()
        return outputs.view(cfg.top_k, n, d).transpose(0, 1), dropped

    def take_aux_loss(self) -> torch.Tensor | None:
        """The balancing loss of the last forward (once; None when off)."""
        aux, self._aux_loss = self._aux_loss, None
        return aux

    def take_load(self) -> torch.Tensor:
        """Tokens per expert routed since the last call (the bias update's input)."""
        load, self._load = self._load, None
        device = self.router.gate.weight.device
        if load is None:
            return torch.zeros(self.cfg.n_experts, dtype=torch.int64, device=device)
        return load


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), ``hidden`` wide: the dense blocks' FFN (transformer.py
    FeedForward) and an MoE block's shared experts (one SwiGLU as wide as all of them)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def moe_blocks(model: nn.Module) -> list[MoE]:
    """Every MoE block's FFN in ``model``, whatever wraps it."""
    return [m for m in model.modules() if isinstance(m, MoE)]


def take_routing_stats(model: nn.Module, device: torch.device) -> torch.Tensor | None:
    """[blocks, n_experts + 4] float64: each MoE block's RoutingStats since the last call
    (tokens per expert, dropped, assignments, balancing loss sum, micro-batches); None for a
    dense model."""
    blocks = moe_blocks(model)
    if not blocks:
        return None
    return torch.stack([b.stats.take(device) for b in blocks])
