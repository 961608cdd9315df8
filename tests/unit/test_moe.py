"""Mixture of experts on one rank: the spec's shapes and counts (total vs active) against the
built model and hand arithmetic, the routing (dropless, capacity, node-limited, the balancing
loss and bias), the EP accounting by hand. Bad MoE input (one line, exit 2) is
tests/driver/test_moe_inputs.py; the multi-rank runs (EP loss for loss, counted all-to-all
bytes) are tests/integration/test_expert_parallel.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from tests.conftest import compose_run_config, model_config
from train.measure.routing import routing_record
from train.model.moe import LoadBalancingLoss, limit_groups, moe_blocks, take_routing_stats
from train.model.transformer import Transformer
from train.spec.config_error import ConfigError
from train.spec.degrees import Degrees, LayoutPlan, plan_layout, resolve_degrees
from train.spec.shapes import (
    all_param_shapes,
    count_active_params,
    count_params,
    expert_shard_dim,
    flops_per_token,
    moe_layers,
)
from train.spec.traffic import StepShape, comm_bytes_per_step, fsdp_units

# 3 blocks: the first dense (n_dense_layers), then every block an MoE one.
MOE = model_config(
    name="moe", n_layers=3, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128,
    vocab_size=256, max_seq_len=64, n_experts=8, top_k=2, n_shared_experts=1,
    expert_ffn_hidden=32, n_dense_layers=1,
)  # fmt: skip
CPU = torch.device("cpu")


def tokens(cfg, seed: int, batch: int = 2, seq: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)


def loss_and_grads(cfg, *, grouped: bool = False):
    model = Transformer(cfg, seed=0)
    for moe in moe_blocks(model):
        moe.experts.grouped_mm = grouped
    loss = model(tokens(cfg, 1), tokens(cfg, 2))
    loss.backward()
    return model, loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_moe_counts_by_hand_and_the_model_builds_the_spec_shapes():
    d, f, h, experts = 64, 128, 32, 8
    attention = 2 * d * d + 2 * d * 32 + 2 * d  # wq, wo, wk, wv (2 kv heads of 16), norms
    dense = attention + 3 * d * f
    moe = attention + d * experts + experts * 3 * d * h + 3 * d * h  # router, experts, shared
    root = 2 * 256 * d + d
    assert moe_layers(MOE) == [1, 2]
    assert count_params(MOE) == dense + 2 * moe + root
    # A token meets top_k = 2 of the 8 experts.
    assert count_active_params(MOE) == count_params(MOE) - 2 * 6 * 3 * d * h
    assert flops_per_token(MOE, 16) == 6 * (count_active_params(MOE) - 256 * d) + 12 * 3 * 64 * 16
    model = Transformer(MOE, seed=0)
    assert [tuple(p.shape) for p in model.parameters()] == all_param_shapes(MOE)
    every_other = dataclasses.replace(MOE, n_dense_layers=0, moe_every=2)
    assert moe_layers(every_other) == [1]
    built = Transformer(every_other, seed=0)
    assert [tuple(p.shape) for p in built.parameters()] == all_param_shapes(every_other)


@pytest.mark.parametrize(
    "name, total, active",
    [("mixtral_8x7b", 46.7e9, 12.9e9), ("olmoe_1b_7b", 6.9e9, 1.3e9)],
)
def test_realistic_shapes_have_their_published_sizes(name, total, active):
    cfg = compose_run_config([f"model={name}", "run_dir=/unused"]).model
    assert count_params(cfg) == pytest.approx(total, rel=0.01)
    assert count_active_params(cfg) == pytest.approx(active, rel=0.02)


def test_the_balancing_loss_moves_the_gradient_not_the_logged_loss():
    model, loss, grads = loss_and_grads(MOE)
    off = dataclasses.replace(MOE, aux_loss_weight=0.0)
    _, loss_off, grads_off = loss_and_grads(off)
    assert loss == loss_off  # bitwise: the value is the language-model loss
    gate = "layers.1.moe.router.gate.weight"
    assert not torch.allclose(grads[gate], grads_off[gate])
    stats = take_routing_stats(model, CPU)
    assert stats.shape == (2, 8 + 4) and stats[:, :8].sum(1).tolist() == [64.0, 64.0]
    assert stats[:, 9].tolist() == [64.0, 64.0] and stats[:, 11].tolist() == [1.0, 1.0]
    assert 1.0 <= stats[0, 10].item() < 2.0  # 1 at perfect balance, n_experts at worst


def test_grouped_gemm_and_the_loop_compute_the_same():
    _, loss, grads = loss_and_grads(MOE)
    _, grouped_loss, grouped_grads = loss_and_grads(MOE, grouped=True)
    assert grouped_loss == pytest.approx(loss.item(), rel=1e-6)
    for name, grad in grads.items():
        assert torch.allclose(grouped_grads[name], grad, rtol=1e-5, atol=1e-7), name


def test_capacity_drops_past_it_and_equals_dropless_when_ample():
    _, loss, grads = loss_and_grads(MOE)
    _, ample_loss, ample = loss_and_grads(dataclasses.replace(MOE, capacity_factor=8.0))
    assert ample_loss == pytest.approx(loss.item(), rel=1e-6)
    assert all(torch.allclose(ample[n], g, atol=1e-7) for n, g in grads.items())
    tight, tight_loss, _ = loss_and_grads(dataclasses.replace(MOE, capacity_factor=0.5))
    figures = routing_record(take_routing_stats(tight, CPU).tolist())
    # capacity ceil(0.5 x 32 x 2 / 8) = 4 per expert: at most 32 of a block's 64 kept.
    assert figures["dropped_share"] >= 0.5
    assert tight_loss != loss


def test_a_checkpointed_block_counts_its_routing_once_and_trains_alike():
    model, _, grads = loss_and_grads(MOE)
    once = take_routing_stats(model, CPU)
    again = Transformer(MOE, seed=0)
    for i, block in enumerate(again.layers):
        again.layers[i] = CheckpointedBlock(block)
    again(tokens(MOE, 1), tokens(MOE, 2)).backward()
    assert torch.equal(take_routing_stats(again, CPU), once)
    for (name, p), grad in zip(again.named_parameters(), grads.values(), strict=True):
        assert torch.allclose(p.grad, grad, atol=1e-7), name


class CheckpointedBlock(torch.nn.Module):
    def __init__(self, block):
        super().__init__()
        self.block = block

    def forward(self, *args):
        return checkpoint(self.block, *args, use_reentrant=False)


def test_the_balancing_loss_gradient_is_exact():
    scores = torch.rand(5, 4, dtype=torch.float64, requires_grad=True)
    share = torch.rand(4, dtype=torch.float64)
    for normalise in (False, True):

        def loss(s, normalise=normalise):
            return LoadBalancingLoss.apply(s, share, normalise)

        assert torch.autograd.gradcheck(loss, scores)


def test_node_limited_routing_keeps_each_token_inside_its_best_groups():
    choice = torch.tensor([[0.9, 0.8, 0.1, 0.0, 0.5, 0.45, 0.3, 0.2]])
    # Groups of 2: sums of both 1.7, 0.1, 0.95, 0.5; the best 2 groups are 0 and 2.
    limited = limit_groups(choice, groups=4, keep=2)
    assert torch.isinf(limited[0, [2, 3, 6, 7]]).all()
    assert torch.equal(limited[0, [0, 1, 4, 5]], choice[0, [0, 1, 4, 5]])
    cfg = dataclasses.replace(MOE, route_groups=4, route_max_nodes=1, router_score="sigmoid")
    model = Transformer(cfg, seed=0)
    routing = model.layers[1].moe.router(torch.randn(32, 64))
    assert (routing.indices // 2).unique(dim=1).shape[1] == 1  # both experts in one group


def test_the_bias_moves_towards_balance():
    cfg = dataclasses.replace(MOE, router_bias_update=0.001)
    router = Transformer(cfg, seed=0).layers[1].moe.router
    router.nudge_bias(torch.tensor([10, 2, 4, 4, 4, 4, 4, 0]))
    assert router.expert_bias[0] == -0.001 and router.expert_bias[7] == 0.001
    assert router.expert_bias[2] == 0.0  # at the mean


def test_the_ep_accounting_by_hand():
    cfg = compose_run_config(["model=moe_tiny", "parallel=ep_fsdp", "run_dir=/unused"])
    plan = plan_layout(cfg, 4, 4)  # ep 4 in the node's 4 ranks, dp_shard 1
    assert (plan.degrees.ep, plan.degrees.dp_shard, plan.degrees.dp) == (4, 1, 4)
    shape = StepShape(micro_batch=2, seq_len=32, accum_steps=3, grad_clip=True)
    volume = comm_bytes_per_step(cfg.model, plan, shape)
    rows = 2 * 32 * 2  # tokens x top_k, each 64 wide in fp32: 4 all-to-alls per block
    splits = 8 * 8  # 8 experts' int64 counts before each dispatch
    assert volume.all_to_all == 2 * 3 * (4 * rows * 64 * 4 + splits)
    units = {u.kind: u for u in fsdp_units(cfg.model, plan)}
    assert units["block"].shard == ("dp_shard", "ep") and units["experts"].shard == ("dp_shard",)
    assert units["experts"].elements == 3 * 2 * 64 * 64  # 2 of the 8 experts on each rank
    capacity = dataclasses.replace(cfg.model, capacity_factor=1.25)
    padded = comm_bytes_per_step(capacity, plan, shape).all_to_all
    assert padded == 2 * 3 * (4 * 8 * 20 * 64 * 4 + splits)  # 8 experts x ceil(1.25 x 16)


def test_one_expert_per_rank_is_sharded_on_its_width_not_padded_whole():
    # Mixtral's 8 experts over ep 8 leave one per rank; FSDP over 8 more ranks on dim 0 would
    # pad that one row to 8 and give every rank a whole expert (torchtitan shards dim 1 then).
    cfg = compose_run_config(["model=mixtral_8x7b", "parallel=ep_fsdp", "run_dir=/unused"])
    cfg.parallel.ep, cfg.parallel.dp_shard = 8, 8
    plan = plan_layout(cfg, 64, 8)
    experts = {u.kind: u for u in fsdp_units(cfg.model, plan)}["experts"]
    one_expert = 3 * 14336 * 4096
    assert expert_shard_dim(cfg.model, 8, 8) == 1 and experts.elements == one_expert
    assert experts.elements // plan.degrees.dp_shard == one_expert // 8
    assert expert_shard_dim(cfg.model, 2, 4) == 0  # 4 experts a rank: dim 0 splits evenly
    # FSDP2 refuses an uneven shard on dim 1 (torch 2.13): 24 shards divide neither 4096 nor
    # 14336, so dim 0 stays, padded (plain FSDP over 3 nodes of 8).
    assert expert_shard_dim(cfg.model, 1, 24) == 0
    assert expert_shard_dim(cfg.model, 1, 16) == 1


def test_an_ep_group_never_straddles_two_nodes():
    cfg = compose_run_config(["model=moe_tiny", "parallel=ep", "run_dir=/unused"]).parallel
    cfg.ep, cfg.dp_replicate = 4, -1
    with pytest.raises(ConfigError, match="^parallel.ep: 4 neither divides nor is a multiple"):
        resolve_degrees(cfg, 12, 6)
    assert resolve_degrees(cfg, 16, 2).ep == 4  # EP across 2 whole nodes of 2
    cfg.ep = -1  # with dp_replicate -1: EP fills a node, the nodes replicate it
    assert resolve_degrees(cfg, 16, 8) == Degrees(dp_replicate=2, dp_shard=1, tp=1, ep=8)


def test_the_ep_layout_record_names_its_degree():
    plan = LayoutPlan("ep", resolve_degrees(_ep_parallel(2), 2, 2), False, [])
    assert plan.as_dict()["ep"] == 2 and plan.splits_gradients


def _ep_parallel(ep: int):
    cfg = compose_run_config(["model=moe_tiny", "parallel=ep", "run_dir=/unused"]).parallel
    cfg.ep = ep
    return cfg
