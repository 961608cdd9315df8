"""`parallel=auto`: the layout and degrees with the best predicted tokens/s per device.

Candidates (torch layouts: DeepSpeed's zero* need an extra install and are left to explicit
choice): each catalog row with ``auto_degrees`` at the degrees it proposes (ddp; fsdp over all
ranks; hsdp when there are several nodes; tp inside one node and tp_fsdp, TP only on parts
whose NVLink joins the TP group), the pipelines (pp, pp_fsdp) at pp = 2, 4, 8 or the node
count (a stage per node: only activations cross the NIC) with the configured schedule, and for
a mixture-of-experts model expert parallelism (ep, ep_fsdp) inside a node. Each
with and without full activation checkpointing, each checked by every rule a run must pass
(train/spec/rules.py check_run: a refused one is no candidate). Among those that fit the
part's memory, the best predicted tokens/s per device wins. A layout that shards its parameters
(fsdp, hsdp, tp_fsdp, ep_fsdp) under gradient accumulation is also tried reducing once a step
(parallel.fsdp_reduce_every_micro_step=false: fewer reduce-scatters, the model's unsharded fp32
gradients kept on every rank), after the default every-micro-step one; pipelines accumulate
unsharded whatever it says (torch's PipelineStage), so they are tried once. A TP or pipeline
layout must beat the best other one by MODEL_PARALLEL_MARGIN, because it puts communication
(or a bubble) on the critical path where a misprediction costs most. The reason names the
winner, its throughput and the runner-up.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

from launch.errors import ConfigError
from launch.perfmodel.compute import RUNTIME_KERNELS, Kernels
from launch.perfmodel.hardware import PartRates, part_rates
from launch.perfmodel.step import (
    Placement,
    Prediction,
    emulated_link_gbps,
    predict,
    projected_precision,
)
from train.spec.catalog import ROWS, Layout
from train.spec.config import RunConfig
from train.spec.degrees import BatchRule, Degrees, LayoutPlan
from train.spec.rules import check_run

MODEL_PARALLEL_MARGIN = 0.05  # TP / pipelines must predict 5% more tokens/s per device
TP_MARGIN = MODEL_PARALLEL_MARGIN
# Within this share of the best, the simpler layout (candidate order: ddp, fsdp, hsdp, tp,
# tp_fsdp, pp, pp_fsdp; no checkpointing first) wins: the model is not that precise.
SIMPLER_MARGIN = 0.02
TP_DEGREES = (2, 4, 8)
PP_DEGREES = (2, 4, 8)
EP_DEGREES = (2, 4, 8)
CHECKPOINTING = ("none", "full")
DEGREE_NAMES = ("pp", "dp_replicate", "dp_shard", "ep", "tp")


def _degree_values(d: Degrees) -> dict[str, int]:
    return {name: getattr(d, name) for name in DEGREE_NAMES}


@dataclass(frozen=True)
class Candidate:
    name: str
    degrees: Degrees
    activation_checkpoint: str
    prediction: Prediction
    # parallel.fsdp_reduce_every_micro_step: False only where it changes the step (a sharded,
    # non-pipeline layout with several micro-steps a step).
    reduce_every_micro_step: bool = True

    @property
    def tokens_per_s(self) -> float:
        return self.prediction.tokens_per_s_per_device

    @property
    def model_parallel(self) -> bool:
        return self.degrees.tp > 1 or self.degrees.pp > 1

    @property
    def label(self) -> str:
        parts = [f"{k} {v}" for k, v in _degree_values(self.degrees).items() if v > 1]
        once = "" if self.reduce_every_micro_step else ", gradients reduced once a step"
        return f"{self.name} ({', '.join(parts) or 'one rank'}){once}"


@dataclass(frozen=True)
class Choice:
    name: str
    degrees: Degrees
    activation_checkpoint: str
    reason: str
    prediction: Prediction
    fsdp_reduce_every_micro_step: bool = True

    def as_dict(self) -> dict:
        """The layout resolved, its degrees, checkpointing, FSDP's accumulation and why."""
        return {
            "resolved": self.name,
            **_degree_values(self.degrees),
            "activation_checkpoint": self.activation_checkpoint,
            "fsdp_reduce_every_micro_step": self.fsdp_reduce_every_micro_step,
            "reason": self.reason,
        }


def candidate_degrees(
    cfg: RunConfig, where: Placement, rates: PartRates
) -> list[tuple[str, Degrees]]:
    """Each catalog row that parallel=auto considers, at the degrees it proposes; TP degrees
    only over NVLink inside one node; pipelines at PP_DEGREES and the node count."""
    out = []
    for row in ROWS:
        if row.pipeline:
            out += [(row.name.value, d) for d in _pipeline_degrees(row, cfg, where, rates)]
            continue
        if row.expert_parallel:
            out += [(row.name.value, d) for d in _expert_degrees(row, cfg, where)]
            continue
        if row.auto_degrees is None:
            continue
        for tp in _tp_degrees(row, where, rates):
            values = row.auto_degrees(where.world_size, where.nproc_per_node, where.nodes, tp)
            if values is None:
                continue
            degrees = Degrees(**{"dp_replicate": 1, "dp_shard": 1, "tp": 1, **values})
            if degrees.world == where.world_size:
                out.append((row.name.value, degrees))
    return out


def _tp_degrees(row: Layout, where: Placement, rates: PartRates) -> list[int]:
    if not row.tensor_parallel:
        return [1]
    if rates.intra is None or rates.intra.kind != "nvlink":
        return []
    return [tp for tp in TP_DEGREES if tp <= min(where.nproc_per_node, rates.intra_span)]


def _pipeline_degrees(
    row: Layout, cfg: RunConfig, where: Placement, rates: PartRates
) -> list[Degrees]:
    """pp over PP_DEGREES and the node count (stage groups of consecutive ranks), with TP
    inside each stage where NVLink joins a node's GPUs (Megatron-LM's 3-D layout: TP inside
    a node, stages across nodes), the rest of the world on the row's data-parallel degree."""
    sizes = [pp for pp in sorted({*PP_DEGREES, where.nodes}) if pp <= cfg.model.n_layers]
    out = []
    for tp in (1, *(tp for tp in _tp_degrees(row, where, rates) if tp > 1)):
        if where.world_size % tp:
            continue
        inside = Placement(where.world_size // tp, max(1, where.nproc_per_node // tp), where.nodes)
        out += [dataclasses.replace(d, tp=tp) for d in _split_degrees(row, "pp", sizes, inside)]
    return out


def _expert_degrees(row: Layout, cfg: RunConfig, where: Placement) -> list[Degrees]:
    """MoE models: ep over EP_DEGREES inside a node (the all-to-all on NVLink), dividing the
    experts; the rest of the world on the row's data-parallel degree."""
    if not cfg.model.n_experts:
        return []
    sizes = [
        ep for ep in EP_DEGREES if ep <= where.nproc_per_node and cfg.model.n_experts % ep == 0
    ]
    return _split_degrees(row, "ep", sizes, where)


def _split_degrees(row: Layout, dim: str, sizes: list[int], where: Placement) -> list[Degrees]:
    """``dim`` at each of ``sizes`` dividing the world, the rest on the row's data-parallel
    degree (its shards where it has them, else its replicas)."""
    inner = "dp_shard" if "dp_shard" in row.degrees else "dp_replicate"
    out = []
    for size in sizes:
        if size < 2 or where.world_size % size:
            continue
        values = {"dp_replicate": 1, "dp_shard": 1, "tp": 1, dim: size}
        values[inner] = where.world_size // size
        out.append(Degrees(**values))
    return out


def choose_layout(
    cfg: RunConfig,
    where: Placement,
    *,
    precision: str | None = None,
    rates: PartRates | None = None,
    batch: BatchRule | None = None,
    kernels: Kernels = RUNTIME_KERNELS,
) -> Choice:
    """The best layout for ``cfg`` at this shape; ConfigError naming the memory if none fits.
    ``batch``: each candidate's global batch (default: train.global_batch for all); under
    weak scaling it follows the candidate's data-parallel size."""
    if precision is None:
        precision, _ = projected_precision(cfg.precision.name, cfg.gpu.name, cfg.gpu.fp8)
    width = "bf16" if precision == "fp8" else precision
    rates = rates or part_rates(cfg.gpu, precision=width, link_gbps=emulated_link_gbps(cfg))
    batch = batch or BatchRule(global_batch=cfg.train.global_batch)
    candidates, refusals = _candidates(cfg, where, precision, rates, batch, kernels)
    if not candidates:
        # Refused whatever the layout (a sequence too long, fp8 with nothing to run in it):
        # the first rule's own error, naming its key.
        if refusals:
            raise refusals[0]
        raise ConfigError("parallel", "parallel=auto: no layout proposes degrees for this shape")
    fitting = [c for c in candidates if c.prediction.fits]
    if not fitting:
        raise _fits_nowhere(cfg, candidates, rates, where.world_size)
    best = _best(fitting)
    ranked = sorted(fitting, key=lambda c: c.tokens_per_s, reverse=True)
    runner_up = next((c for c in ranked if c is not best), None)
    reason = _reason(best, runner_up, rates, len(fitting))
    return Choice(
        best.name,
        best.degrees,
        best.activation_checkpoint,
        reason,
        best.prediction,
        fsdp_reduce_every_micro_step=best.reduce_every_micro_step,
    )


def _fits_nowhere(
    cfg: RunConfig, candidates: list[Candidate], rates: PartRates, world_size: int
) -> ConfigError:
    """What the closest candidate needs, against the part's usable memory, and the remedy for
    what does not fit: the model states (parameters, gradients, optimizer state) where even
    the most sharded candidate's exceed the memory before any activation, which only more
    ranks can shard thinner (a smaller micro batch saves nothing there); else activations."""
    smallest = min(candidates, key=lambda c: c.prediction.memory.peak_bytes)
    sharded_most = min(candidates, key=lambda c: c.prediction.memory.held_bytes)
    held = sharded_most.prediction.memory.held_bytes
    usable = smallest.prediction.memory.capacity_bytes
    need = (
        f"{smallest.prediction.memory.peak_bytes / 2**30:.1f} GiB per rank "
        f"({smallest.label}, checkpoint {smallest.activation_checkpoint})"
    )
    capacity = rates.hbm_bytes / 2**30 if rates.hbm_bytes else float("nan")
    if usable is not None and held > usable:
        remedy = (
            f"its parameters, gradients and optimizer state alone take {held / 2**30:.1f} GiB "
            f"per rank sharded the most ({sharded_most.label}): more ranks shard them thinner "
            "(a larger world size or more nodes)"
        )
    else:
        smaller = (
            "lower train.micro_batch" if cfg.train.micro_batch > 1 else "a shorter train.seq_len"
        )
        remedy = f"{smaller} or more ranks"
    usable_text = f", {usable / 2**30:.1f} usable" if usable is not None else ""
    return ConfigError(
        "parallel",
        f"no layout of {cfg.model.name} fits {world_size} x {cfg.gpu.name} "
        f"({capacity:.1f} GiB visible each{usable_text}; micro batch {cfg.train.micro_batch}, seq "
        f"{cfg.train.seq_len}): the smallest needs {need}; {remedy}",
    )


def candidate_config(
    cfg: RunConfig,
    name: str,
    degrees: Degrees,
    checkpoint: str,
    global_batch: int,
    reduce_every_micro_step: bool = True,
) -> RunConfig:
    """``cfg`` with this candidate's layout, degrees, checkpointing, FSDP accumulation and
    global batch."""
    out = copy.deepcopy(cfg)
    out.parallel.name = name
    for key in DEGREE_NAMES:
        setattr(out.parallel, key, getattr(degrees, key))
    out.parallel.activation_checkpoint = checkpoint
    out.parallel.fsdp_reduce_every_micro_step = reduce_every_micro_step
    out.train.global_batch = global_batch
    return out


def _candidates(
    cfg: RunConfig,
    where: Placement,
    precision: str,
    rates: PartRates,
    batch: BatchRule,
    kernels: Kernels,
) -> tuple[list[Candidate], list[ConfigError]]:
    """Every candidate layout with and without full checkpointing that passes the run rules,
    predicted (in candidate order; no checkpointing first; a sharded layout's reduction every
    micro-step before its reduction once a step), and why the others were refused. TP
    candidates run sequence parallelism unless parallel.sequence_parallel=false."""
    out, refusals = [], []
    for name, degrees in candidate_degrees(cfg, where, rates):
        global_batch = batch.global_batch_for(degrees)
        for ckpt in CHECKPOINTING:
            for every_micro_step in (True, False):
                work = candidate_config(cfg, name, degrees, ckpt, global_batch, every_micro_step)
                try:
                    plan = check_run(work, where.world_size, where.nproc_per_node).layout
                    if not every_micro_step and not _accumulates_sharded(plan, cfg, global_batch):
                        break  # the same step as the one just predicted
                    pred = predict(
                        work,
                        plan,
                        where,
                        global_batch=global_batch,
                        precision=precision,
                        rates=rates,
                        kernels=kernels,
                    )
                except ConfigError as exc:
                    refusals.append(exc)
                    break
                out.append(Candidate(name, plan.degrees, ckpt, pred, every_micro_step))
    return out, refusals


def _accumulates_sharded(plan: LayoutPlan, cfg: RunConfig, global_batch: int) -> bool:
    """Whether parallel.fsdp_reduce_every_micro_step changes this candidate's step: a layout
    sharding its parameters outside pipeline stages, with more than one micro-step a step."""
    if not plan.row.shards_parameters or plan.row.pipeline:
        return False
    micro_steps = global_batch // (cfg.train.micro_batch * plan.degrees.dp)
    return micro_steps > 1


def _best(fitting: list[Candidate]) -> Candidate:
    """The most tokens/s per device; TP or a pipeline only when it beats the best plain
    layout by MODEL_PARALLEL_MARGIN; then the first (simplest) candidate within
    SIMPLER_MARGIN of that."""
    ranked = sorted(fitting, key=lambda c: c.tokens_per_s, reverse=True)
    best_plain = next((c for c in ranked if not c.model_parallel), None)
    best = ranked[0]
    if best.model_parallel and best_plain is not None:
        if best.tokens_per_s / best_plain.tokens_per_s - 1 < MODEL_PARALLEL_MARGIN:
            best = best_plain
    floor = best.tokens_per_s * (1 - SIMPLER_MARGIN)
    return next(
        c
        for c in fitting
        if c.tokens_per_s >= floor and (not c.model_parallel or best.model_parallel)
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
        if share > 1:  # it lost on _best's margins, not on speed: say which
            why = (
                f"TP or a pipeline must predict {MODEL_PARALLEL_MARGIN:.0%} more than the best "
                "plain layout"
                if runner_up.model_parallel and not best.model_parallel
                else f"within {SIMPLER_MARGIN:.0%}, the simpler layout wins"
            )
            text += f"; next {runner_up.label}{ckpt_note} at {share:.1%} ({why})"
        else:
            text += f"; next {runner_up.label}{ckpt_note} at {share:.0%}"
    if rates.intra is None or rates.intra.kind != "nvlink":
        text += "; no TP (no NVLink)"
    return text
