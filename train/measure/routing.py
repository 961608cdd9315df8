"""How an MoE model routed, per step and over a run: metrics.jsonl's and summary.json's ``moe``.

Per step (from every MoE block's counts, summed over all ranks: train/model/moe.py
RoutingStats, reduced by train/runtime/rank_step.py): the load imbalance, tokens of the busiest
expert over the mean (1 is perfectly balanced; under EP the busiest expert's rank sets the
pace of every all-to-all and of the expert compute), the share of assignments dropped for
capacity, and the Switch/GShard balancing loss (mean over blocks and micro-batches; 1 at
perfect balance, what aux_loss_weight multiplies).
"""

from __future__ import annotations

import statistics
from typing import Any

from train.spec.config import ModelConfig
from train.spec.shapes import count_active_params, count_params, moe_layers


def routing_record(per_block: list[list[float]]) -> dict[str, Any]:
    """One step's figures from each block's [tokens per expert..., dropped, assignments,
    balancing loss sum, micro-batches] (summed over ranks)."""
    imbalance, dropped, assignments, aux, calls = [], 0.0, 0.0, 0.0, 0.0
    for row in per_block:
        counts, (block_dropped, block_assignments, block_aux, block_calls) = row[:-4], row[-4:]
        mean = block_assignments / len(counts)
        imbalance.append(max(counts) / mean if mean else None)
        dropped, assignments = dropped + block_dropped, assignments + block_assignments
        aux, calls = aux + block_aux, calls + block_calls
    known = [x for x in imbalance if x is not None]
    return {
        "load_max_over_mean": max(known) if known else None,  # the worst block's
        "load_max_over_mean_by_block": imbalance,
        "dropped_share": dropped / assignments if assignments else None,
        # Averaged over ranks too: each rank's micro-batches count once.
        "aux_loss": aux / calls if calls else None,
    }


def routing_summary(
    model: ModelConfig, expert_ranks: int, steps: list[dict]
) -> dict[str, Any] | None:
    """summary.json's ``moe``: the model's routing set-up and, over the timed steps' records,
    the median and worst imbalance, the mean dropped share and the balancing loss (first and
    last step: it falls as the router learns to balance). None for a dense model."""
    if not model.n_experts:
        return None
    out: dict[str, Any] = {
        "n_experts": model.n_experts,
        "top_k": model.top_k,
        "n_shared_experts": model.n_shared_experts,
        "moe_blocks": len(moe_layers(model)),
        "expert_parallel_ranks": expert_ranks,  # parallel.ep as resolved
        "experts_per_rank": model.n_experts // expert_ranks,
        "capacity_factor": model.capacity_factor,
        "params": count_params(model),
        "active_params": count_active_params(model),
    }
    imbalance = [s["load_max_over_mean"] for s in steps if s.get("load_max_over_mean")]
    dropped = [s["dropped_share"] for s in steps if s.get("dropped_share") is not None]
    aux = [s["aux_loss"] for s in steps if s.get("aux_loss") is not None]
    out.update(
        load_max_over_mean_median=statistics.median(imbalance) if imbalance else None,
        load_max_over_mean_max=max(imbalance) if imbalance else None,
        dropped_share_mean=statistics.fmean(dropped) if dropped else None,
        aux_loss_first=aux[0] if aux else None,
        aux_loss_last=aux[-1] if aux else None,
    )
    return out
