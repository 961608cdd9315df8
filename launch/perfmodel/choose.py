"""`parallel=auto`: the layout and degrees with the best predicted tokens/s per device.

Candidates (torch layouts: DeepSpeed's zero* need an extra install and are left to explicit
choice): ddp; fsdp over all ranks; hsdp (shard in a node, replicate across nodes) when there
are several nodes; tp inside one node and tp_fsdp (TP inside a node, FSDP across the rest),
each only on parts whose NVLink joins the TP group, with tp dividing the heads, kv heads and
MLP width. Each with and without full activation checkpointing. Among those that fit the
part's memory, the best predicted tokens/s per device wins; a TP layout must beat the best
layout without TP by TP_MARGIN, because TP puts communication on the critical path where a
misprediction costs most. The reason names the winner, its throughput and the runner-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from launch.errors import ConfigError
from launch.perfmodel.hardware import PartRates, part_rates
from launch.perfmodel.step import Prediction, predict, projected_precision
from train.spec.catalog import ROWS
from train.spec.config import RunConfig
from train.spec.degrees import Degrees, LayoutPlan, check_tensor_parallel, checkpointed_layers

TP_MARGIN = 0.05  # TP must predict at least 5% more tokens/s per device to be chosen
# Within this share of the best, the simpler layout (candidate order: ddp, fsdp, hsdp, tp,
# tp_fsdp; no checkpointing first) wins: the model is not that precise.
SIMPLER_MARGIN = 0.02
TP_DEGREES = (2, 4, 8)
CHECKPOINTING = ("none", "full")


@dataclass(frozen=True)
class Choice:
    name: str
    degrees: Degrees
    activation_checkpoint: str
    reason: str
    prediction: Prediction

    def as_dict(self) -> dict:
        return {
            "resolved": self.name,
            "dp_replicate": self.degrees.dp_replicate,
            "dp_shard": self.degrees.dp_shard,
            "tp": self.degrees.tp,
            "activation_checkpoint": self.activation_checkpoint,
            "reason": self.reason,
        }


def candidate_degrees(
    cfg: RunConfig, world: int, per_node: int, nodes: int, rates: PartRates
) -> list[tuple[str, Degrees]]:
    """Each catalog row that parallel=auto considers, at the degrees its row proposes; TP
    degrees only over NVLink inside one node, dividing heads, kv heads and MLP width."""
    nvlink = rates.intra is not None and rates.intra.kind == "nvlink"
    out = []
    for row in ROWS:
        if row.auto_degrees is None:
            continue
        tps = [1]
        if row.tensor_parallel:
            tps = [tp for tp in TP_DEGREES if nvlink and tp <= min(per_node, rates.intra_span)]
        for tp in tps:
            values = row.auto_degrees(world, per_node, nodes, tp)
            if values is None:
                continue
            degrees = Degrees(**{"dp_replicate": 1, "dp_shard": 1, "tp": 1, **values})
            if degrees.world != world:
                continue
            if degrees.tp > 1:
                try:
                    check_tensor_parallel(cfg.model, degrees.tp, cfg.train.seq_len, False)
                except ConfigError:
                    continue
            out.append((row.name.value, degrees))
    return out


def choose_layout(
    cfg: RunConfig,
    *,
    world_size: int,
    nproc_per_node: int,
    nodes: int,
    precision: str | None = None,
    rates: PartRates | None = None,
    global_batch: int | None = None,
) -> Choice:
    """The best layout for ``cfg`` at this shape; ConfigError naming the memory if none fits."""
    if precision is None:
        precision, _ = projected_precision(cfg.precision.name, cfg.gpu.name, cfg.gpu.fp8)
    width = "bf16" if precision == "fp8" else precision
    rates = rates or part_rates(cfg.gpu, precision=width)
    global_batch = global_batch or cfg.train.global_batch
    fitting: list[tuple[str, Degrees, str, Prediction]] = []
    smallest: tuple[int, str] | None = None
    for name, degrees in candidate_degrees(cfg, world_size, nproc_per_node, nodes, rates):
        for ckpt in CHECKPOINTING:
            plan = LayoutPlan(
                name,
                degrees,
                False,
                checkpointed_layers(ckpt, cfg.model.n_layers, cfg.parallel.checkpoint_every),
            )
            if global_batch % (cfg.train.micro_batch * degrees.dp):
                continue
            pred = predict(
                cfg,
                plan,
                world_size=world_size,
                nproc_per_node=nproc_per_node,
                nodes=nodes,
                global_batch=global_batch,
                precision=precision,
                rates=rates,
            )
            if pred.fits:
                fitting.append((name, degrees, ckpt, pred))
            elif smallest is None or pred.memory.peak_bytes < smallest[0]:
                smallest = (pred.memory.peak_bytes, f"{_label(name, degrees)}, checkpoint {ckpt}")
    if not fitting:
        need = f"{smallest[0] / 2**30:.1f} GiB per rank ({smallest[1]})" if smallest else "?"
        capacity = rates.hbm_bytes / 1e9 if rates.hbm_bytes else float("nan")
        raise ConfigError(
            "parallel",
            f"no layout of {cfg.model.name} fits {world_size} x {cfg.gpu.name} "
            f"({capacity:.0f} GB each, micro batch {cfg.train.micro_batch}, seq "
            f"{cfg.train.seq_len}): the smallest needs {need}; lower train.micro_batch or "
            "add nodes",
        )
    ranked = sorted(fitting, key=lambda c: c[3].tokens_per_s_per_device, reverse=True)
    best_plain = next((c for c in ranked if c[1].tp == 1), None)
    best = ranked[0]
    if best[1].tp > 1 and best_plain is not None:
        gain = best[3].tokens_per_s_per_device / best_plain[3].tokens_per_s_per_device - 1
        if gain < TP_MARGIN:
            best = best_plain
    floor = best[3].tokens_per_s_per_device * (1 - SIMPLER_MARGIN)
    best = next(
        c
        for c in fitting
        if c[3].tokens_per_s_per_device >= floor and (c[1].tp == 1 or best[1].tp > 1)
    )
    runner_up = next((c for c in ranked if c is not best), None)
    return Choice(best[0], best[1], best[2], _reason(best, runner_up, rates, len(fitting)), best[3])


def _label(name: str, d: Degrees) -> str:
    parts = [
        f"{k} {v}"
        for k, v in (("dp_replicate", d.dp_replicate), ("dp_shard", d.dp_shard), ("tp", d.tp))
        if v > 1
    ]
    return f"{name} ({', '.join(parts) or 'one rank'})"


def _reason(best, runner_up, rates: PartRates, n_fit: int) -> str:
    name, degrees, ckpt, pred = best
    text = (
        f"{_label(name, degrees)}{', full checkpointing' if ckpt == 'full' else ''}: "
        f"{pred.tokens_per_s_per_device:,.0f} tok/s/device predicted, "
        f"{pred.memory.peak_bytes / 2**30:.0f} GiB/rank, best of {n_fit} that fit"
    )
    if runner_up is not None:
        r_name, r_deg, r_ckpt, r_pred = runner_up
        share = r_pred.tokens_per_s_per_device / pred.tokens_per_s_per_device
        ckpt_note = " +ckpt" if r_ckpt == "full" else ""
        text += f"; next {_label(r_name, r_deg)}{ckpt_note} at {share:.0%}"
    if rates.intra is None or rates.intra.kind != "nvlink":
        text += "; no TP (no NVLink)"
    return text
