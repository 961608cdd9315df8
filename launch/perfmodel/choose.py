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
from launch.perfmodel.step import Placement, Prediction, predict, projected_precision
from train.spec.catalog import ROWS
from train.spec.config import RunConfig
from train.spec.degrees import (
    BatchRule,
    Degrees,
    LayoutPlan,
    check_tensor_parallel,
    checkpointed_layers,
)

TP_MARGIN = 0.05  # TP must predict at least 5% more tokens/s per device to be chosen
# Within this share of the best, the simpler layout (candidate order: ddp, fsdp, hsdp, tp,
# tp_fsdp; no checkpointing first) wins: the model is not that precise.
SIMPLER_MARGIN = 0.02
TP_DEGREES = (2, 4, 8)
CHECKPOINTING = ("none", "full")


DEGREE_NAMES = ("dp_replicate", "dp_shard", "tp")


def _degree_values(d: Degrees) -> dict[str, int]:
    return {name: getattr(d, name) for name in DEGREE_NAMES}


@dataclass(frozen=True)
class Choice:
    name: str
    degrees: Degrees
    activation_checkpoint: str
    reason: str
    prediction: Prediction

    def as_dict(self) -> dict:
        """The layout resolved, its degrees, checkpointing and why."""
        return {
            "resolved": self.name,
            **_degree_values(self.degrees),
            "activation_checkpoint": self.activation_checkpoint,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Candidate:
    name: str
    degrees: Degrees
    activation_checkpoint: str
    prediction: Prediction

    @property
    def tokens_per_s(self) -> float:
        return self.prediction.tokens_per_s_per_device

    @property
    def label(self) -> str:
        parts = [f"{k} {v}" for k, v in _degree_values(self.degrees).items() if v > 1]
        return f"{self.name} ({', '.join(parts) or 'one rank'})"


def candidate_degrees(
    cfg: RunConfig, where: Placement, rates: PartRates
) -> list[tuple[str, Degrees]]:
    """Each catalog row that parallel=auto considers, at the degrees its row proposes; TP
    degrees only over NVLink inside one node, dividing heads, kv heads and MLP width."""
    nvlink = rates.intra is not None and rates.intra.kind == "nvlink"
    per_node = where.nproc_per_node
    out = []
    for row in ROWS:
        if row.auto_degrees is None:
            continue
        tps = [1]
        if row.tensor_parallel:
            tps = [tp for tp in TP_DEGREES if nvlink and tp <= min(per_node, rates.intra_span)]
        for tp in tps:
            values = row.auto_degrees(where.world_size, per_node, where.nodes, tp)
            if values is None:
                continue
            degrees = Degrees(**{"dp_replicate": 1, "dp_shard": 1, "tp": 1, **values})
            if degrees.world != where.world_size:
                continue
            if degrees.tp > 1:
                try:
                    sp = cfg.parallel.sequence_parallel is not False
                    check_tensor_parallel(cfg.model, degrees.tp, cfg.train.seq_len, sp)
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
    batch: BatchRule | None = None,
) -> Choice:
    """The best layout for ``cfg`` at this shape; ConfigError naming the memory if none fits.
    ``batch``: each candidate's global batch (default: train.global_batch for all); under
    weak scaling it follows the candidate's data-parallel size."""
    if precision is None:
        precision, _ = projected_precision(cfg.precision.name, cfg.gpu.name, cfg.gpu.fp8)
    width = "bf16" if precision == "fp8" else precision
    rates = rates or part_rates(cfg.gpu, precision=width)
    where = Placement(world_size, nproc_per_node, nodes)
    batch = batch or BatchRule(global_batch=cfg.train.global_batch)
    candidates = _candidates(cfg, where, precision, rates, batch)
    fitting = [c for c in candidates if c.prediction.fits]
    if not fitting:
        smallest = min(candidates, key=lambda c: c.prediction.memory.peak_bytes, default=None)
        need = "?"
        if smallest is not None:
            need = (
                f"{smallest.prediction.memory.peak_bytes / 2**30:.1f} GiB per rank "
                f"({smallest.label}, checkpoint {smallest.activation_checkpoint})"
            )
        capacity = rates.hbm_bytes / 1e9 if rates.hbm_bytes else float("nan")
        raise ConfigError(
            "parallel",
            f"no layout of {cfg.model.name} fits {world_size} x {cfg.gpu.name} "
            f"({capacity:.0f} GB each, micro batch {cfg.train.micro_batch}, seq "
            f"{cfg.train.seq_len}): the smallest needs {need}; lower train.micro_batch or "
            "add nodes",
        )
    best = _best(fitting)
    ranked = sorted(fitting, key=lambda c: c.tokens_per_s, reverse=True)
    runner_up = next((c for c in ranked if c is not best), None)
    reason = _reason(best, runner_up, rates, len(fitting))
    return Choice(best.name, best.degrees, best.activation_checkpoint, reason, best.prediction)


def _candidates(
    cfg: RunConfig, where: Placement, precision: str, rates: PartRates, batch: BatchRule
) -> list[Candidate]:
    """Every candidate layout with and without full checkpointing that splits the batch,
    predicted (in candidate order: ddp, fsdp, hsdp, tp, tp_fsdp; no checkpointing first).
    TP candidates run sequence parallelism unless parallel.sequence_parallel=false."""
    out = []
    for name, degrees in candidate_degrees(cfg, where, rates):
        global_batch = batch.global_batch_for(degrees)
        if global_batch % (cfg.train.micro_batch * degrees.dp):
            continue
        sequence_parallel = degrees.tp > 1 and cfg.parallel.sequence_parallel is not False
        for ckpt in CHECKPOINTING:
            layers = checkpointed_layers(ckpt, cfg.model.n_layers, cfg.parallel.checkpoint_every)
            plan = LayoutPlan(name, degrees, sequence_parallel, layers)
            pred = predict(
                cfg, plan, where, global_batch=global_batch, precision=precision, rates=rates
            )
            out.append(Candidate(name, degrees, ckpt, pred))
    return out


def _best(fitting: list[Candidate]) -> Candidate:
    """The most tokens/s per device; TP only when it beats the best without TP by
    TP_MARGIN; then the first (simplest) candidate within SIMPLER_MARGIN of that."""
    ranked = sorted(fitting, key=lambda c: c.tokens_per_s, reverse=True)
    best_plain = next((c for c in ranked if c.degrees.tp == 1), None)
    best = ranked[0]
    if best.degrees.tp > 1 and best_plain is not None:
        if best.tokens_per_s / best_plain.tokens_per_s - 1 < TP_MARGIN:
            best = best_plain
    floor = best.tokens_per_s * (1 - SIMPLER_MARGIN)
    return next(
        c for c in fitting if c.tokens_per_s >= floor and (c.degrees.tp == 1 or best.degrees.tp > 1)
    )


def _reason(best: Candidate, runner_up: Candidate | None, rates: PartRates, n_fit: int) -> str:
    text = (
        f"{best.label}{', full checkpointing' if best.activation_checkpoint == 'full' else ''}: "
        f"{best.tokens_per_s:,.0f} tok/s/device predicted, "
        f"{best.prediction.memory.peak_bytes / 2**30:.0f} GiB/rank, best of {n_fit} that fit"
    )
    if runner_up is not None:
        share = runner_up.tokens_per_s / best.tokens_per_s
        ckpt_note = " +ckpt" if runner_up.activation_checkpoint == "full" else ""
        text += f"; next {runner_up.label}{ckpt_note} at {share:.0%}"
    if rates.intra is None or rates.intra.kind != "nvlink":
        text += "; no TP (no NVLink)"
    return text
