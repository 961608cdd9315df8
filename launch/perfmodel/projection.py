"""The projection (``python -m launch.project``): projected scaling per GPU type, or
projected collectives, as one record for launch/report/projected.py to write.

For each profile in project.gpus (default: the part ``gpu=NAME`` names on the command line,
else every profile but auto and cpu) and each node
count in project.nodes, predict the step of cfg's model and layout (parallel=auto: the best
layout for that part and shape). train.global_batch means what it means to `python -m
launch`: sequences per optimizer step, at the fewest projected node count; under weak
scaling (sweep=weak, the default) each data-parallel rank keeps its sequences at the larger
node counts (where the layout is refused at the fewest, what it would have held there: the
global batch times nodes / fewest), under sweep=strong the global batch stays. Each row
states its own global batch. The record holds ``runs`` (or with
project.mode=comm ``collectives``). Pure arithmetic: all profiles x 4 node counts take
seconds (a configured layout's rows also ask parallel=auto, _auto_alternative).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sequence

from omegaconf import OmegaConf

from launch.conf_tree import conf_dir, group_choices, load_gpu_profile, override_keys
from launch.errors import ConfigError
from launch.perfmodel.calibrate import Calibration, load_calibration
from launch.perfmodel.choose import choose_layout
from launch.perfmodel.collectives import OPS, bus_factor, collective_time
from launch.perfmodel.compute import ATTENTION_KERNELS, Kernels
from launch.perfmodel.fp8 import projection_note
from launch.perfmodel.hardware import PartRates, part_rates, power_limit_share
from launch.perfmodel.step import Placement, Prediction, predict, projected_precision
from train.spec.catalog import CATALOG, DEGREE_KEYS, layout
from train.spec.config import GpuConfig, ParallelConfig, RunConfig
from train.spec.degrees import BatchRule, batch_held, plan_layout
from train.spec.rules import (
    check_gpu,
    check_layout_features,
    check_moe_layout,
    check_precision,
    layout_precision_refusal,
)
from train.spec.shapes import is_moe
from train.spec.stages import ZERO_BUBBLE

MODES = ("runs", "comm")
COST_TOKENS = 1e9  # the cost column: dollars per billion tokens
# projection.json's run keys a skipped run holds as null.
UNPREDICTED = (
    "layout global_batch step_time_s compute_s comm_s exposed_comm_s tokens_per_s_per_device mfu "
    "memory_bytes_per_rank"
).split()


def projected_profiles(names: list[str], given: GpuConfig | None = None) -> list[GpuConfig]:
    """The profiles of project.gpus (all but cpu when empty); ``given`` (the run's gpu, with
    its command-line gpu.* keys such as gpu.power_limit_w) stands in for its own name."""
    available = [n for n in group_choices("gpu") if n not in ("auto", "cpu")]
    names = names or available
    unknown = [n for n in names if n not in group_choices("gpu") or n == "auto"]
    if unknown:
        raise ConfigError(
            "project.gpus", f"unknown profile {unknown[0]!r}; one of: {', '.join(available)}"
        )
    return [given if given and given.name == n else load_gpu_profile(n) for n in names]


def projected_names(cfg: RunConfig, overrides: Sequence[str] = ()) -> list[str]:
    """project.gpus; when it is empty and the command line names a part (``gpu=h800``, as
    ``python -m launch`` takes it; gpu=auto, detected by the caller), that part; else []
    (every profile). Projecting every part when a user wrote gpu=h800 printed all twelve
    and left the one asked for in a crowd."""
    if cfg.project.gpus:
        return list(cfg.project.gpus)
    if "gpu" not in override_keys(overrides):
        return []
    name = cfg.gpu.name
    if name == "cpu" and cfg.project.mode == "comm":
        return [name]  # its link rates project collectives as project.gpus=[cpu] does
    if name in group_choices("gpu") and name not in ("auto", "cpu"):
        return [name]
    available = ", ".join(g.name for g in projected_profiles([]))
    if name == "cpu":
        why = (
            f"cpu: launch.project projects GPU profiles ({available}); a CPU run's own "
            "prediction is in python -m launch's report"
        )
    else:  # gpu=auto found a device without a profile (resolve.unknown_profile)
        why = (
            f"gpu=auto found {cfg.gpu.display_name}, which has no profile: name one with "
            f"gpu=NAME or project.gpus=[...] ({available})"
        )
    raise ConfigError("gpu", why)


def check_project(cfg: RunConfig) -> None:
    """Every projection input that cannot be right, refused before anything is computed."""
    p = cfg.project
    for key in ("global_batch", "micro_batch", "seq_len"):
        value = getattr(cfg.train, key)
        if value < 1:
            raise ConfigError(f"train.{key}", f"{value}: must be >= 1")
    if not 0 < p.interconnect_bound_share <= 1:
        raise ConfigError(
            "project.interconnect_bound_share",
            f"{p.interconnect_bound_share}: a share of the step, in (0, 1]",
        )
    if p.attention not in ATTENTION_KERNELS:
        raise ConfigError(
            "project.attention", f"{p.attention!r}: one of {', '.join(ATTENTION_KERNELS)}"
        )
    if p.mode not in MODES:
        raise ConfigError("project.mode", f"{p.mode!r} is not one of: {', '.join(MODES)}")
    if not p.nodes:
        raise ConfigError("project.nodes", "needs at least one node count")
    bad = [n for n in p.nodes if n <= 0]
    if bad:
        raise ConfigError("project.nodes", f"{bad[0]}: node counts must be >= 1")
    # A repeated point would print twice (at another batch, for a node count: the first
    # fixes weak scaling's base), so it is refused rather than silently deduplicated.
    for key, values in (("project.nodes", list(p.nodes)), ("project.gpus", list(p.gpus))):
        repeated = next((v for i, v in enumerate(values) if v in values[:i]), None)
        if repeated is not None:
            raise ConfigError(key, f"{repeated} is listed twice; each may appear once")
    for name, price in p.price_per_gpu_hour.items():
        if not (math.isfinite(price) and price > 0):  # inf divided by zero, nan printed $nan
            raise ConfigError(
                "project.price_per_gpu_hour", f"{name}: {price} must be a finite number > 0"
            )
    # The run rules on precision, as `python -m launch` applies them: an fp8 request whose
    # layout cannot run fp8 is refused, not projected as fp8 (parallel=auto skips such layouts).
    # Every projected part is a GPU (projected_profiles), whatever host composed cfg: a rule
    # of CPU ranks (DeepSpeed's CPU accelerator has no fp16) refused zero3 fp16 projections.
    check_precision(cfg)
    if cfg.parallel.name != "auto":
        refusal = layout_precision_refusal(cfg, on_cpu=False)
        if refusal:
            raise ConfigError("precision.name", f"{cfg.precision.name}: {refusal}")


def projection_record(cfg: RunConfig, overrides: Sequence[str] = ()) -> dict:
    """projection.json's content: the projected runs (or collectives) and what they assume.
    ``overrides``: the command line's (Hydra's task overrides); with project.calibrate they
    apply to the measured run's config (_workload)."""
    check_project(cfg)
    check_gpu(cfg.gpu)
    profiles = projected_profiles(projected_names(cfg, overrides), cfg.gpu)
    unpriced = set(cfg.project.price_per_gpu_hour) - {g.name for g in profiles}
    if unpriced:
        raise ConfigError(
            "project.price_per_gpu_hour", f"{sorted(unpriced)[0]} is not a projected profile"
        )
    calibration = load_calibration(cfg.project.calibrate, cfg.project.calibrate_comm)
    workload = _workload(cfg, calibration, overrides)
    if workload is not cfg:
        check_project(workload)  # the measured run's batch and precision, as overridden
    if cfg.project.mode == "comm":
        rows = project_collectives(workload, profiles, calibration)
        return {"mode": "comm", "calibration": calibration.source, "collectives": rows}
    return {
        "mode": "runs",
        "model": workload.model.name,
        "seq_len": workload.train.seq_len,
        "micro_batch": workload.train.micro_batch,
        "global_batch": workload.train.global_batch,
        "batch_scaling": "strong" if workload.sweep.name == "strong" else "weak",
        "batch_held": batch_held(workload.sweep.name, workload.parallel.name),
        "batch_nodes": min(workload.project.nodes),  # where global_batch holds
        "parallel": workload.parallel.name,
        "interconnect_bound_share": cfg.project.interconnect_bound_share,
        "calibration": calibration.source,
        "runs": project_runs(workload, profiles, calibration),
    }


def _workload(cfg: RunConfig, calibration: Calibration, overrides: Sequence[str] = ()) -> RunConfig:
    """cfg, or the calibration run's model, batch and layout with cfg's project settings
    (its global batch then stands for the fewest projected node count) and the command
    line's other overrides applied to it.

    A run under parallel=auto (resolved.layout_reason set) wrote the layout and degrees the
    model chose for its own world size into config.yaml; taken whole they cannot run at
    another size ("dp_shard 1 x ... = 1, but the world size is 8"), so the projection asks
    parallel=auto again at each projected size, as that run did. Any other run keeps the
    parallel config it asked for (its -1 degrees resolve per size)."""
    if calibration.workload is None:
        return cfg
    work = copy.deepcopy(calibration.workload)
    if work.resolved.layout_reason is not None:
        work.parallel = _auto_parallel(work.parallel)
    work.project = cfg.project
    work.sweep = cfg.sweep
    work.run_dir = cfg.run_dir
    for override in overrides:
        _apply_override(work, cfg, override)
    return work


def _auto_parallel(ran: ParallelConfig) -> ParallelConfig:
    """``ran`` (the layout auto chose) asked as parallel=auto again: conf/parallel/auto.yaml's
    name, degrees, checkpointing and FSDP accumulation (all of which auto chooses), the run's
    other parallel settings (buckets, schedule)."""
    node = OmegaConf.load(conf_dir() / "parallel" / "auto.yaml")
    auto = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ParallelConfig), node))
    out = copy.deepcopy(ran)
    for key in ("name", *DEGREE_KEYS, "activation_checkpoint", "fsdp_reduce_every_micro_step"):
        setattr(out, key, getattr(auto, key))
    return out


# Top-level keys the projection takes from its own command line whatever the workload.
PROJECTION_KEYS = ("project", "sweep", "run_dir", "hydra")


def _apply_override(work: RunConfig, cfg: RunConfig, override: str) -> None:
    """One command-line override applied to the measured run's config: its value as Hydra
    composed it into ``cfg`` (a group choice carries its whole group, dotted keys included).
    Before, every override but project.* and sweep was dropped without a word."""
    key = override.split("=", 1)[0].lstrip("+")
    if re.split(r"[./@]", key.lstrip("~"))[0] in PROJECTION_KEYS:  # hydra/launcher too
        return
    if override.startswith("~"):
        raise ConfigError(
            key.lstrip("~"),
            "cannot be deleted under project.calibrate (the measured run's config.yaml holds "
            "it); set a value instead",
        )
    *parents, leaf = key.split(".")
    source, target = cfg, work
    for part in parents:  # open maps (fabric.nccl_env) are dicts
        source, target = _child(source, part), _child(target, part)
    if isinstance(target, dict):
        target[leaf] = copy.deepcopy(_child(source, leaf))
    else:
        setattr(target, leaf, copy.deepcopy(_child(source, leaf)))


def _child(node, name: str):
    return node[name] if isinstance(node, dict) else getattr(node, name)


def project_runs(
    cfg: RunConfig, profiles: list[GpuConfig], calibration: Calibration | None = None
) -> list[dict]:
    """One row per profile and node count: the prediction, or why it was skipped."""
    calibration = calibration or Calibration()
    rows: list[dict] = []
    unfit: list[tuple[int, str, int]] = []  # (peak bytes per rank, part, nodes) of each unfit
    refused: list[ConfigError] = []  # why each skipped row was
    for gpu in profiles:
        work = copy.deepcopy(cfg)
        work.gpu = gpu
        precision, precision_reason = projected_precision(cfg.precision.name, gpu.name, gpu.fp8)
        if precision == "fp8":
            precision_reason += f"; {projection_note(cfg)}"
        width = "bf16" if precision == "fp8" else precision
        rates = calibration.apply(part_rates(gpu, precision=width))
        if not rates.peak_tflops.get(width):
            # The cpu profile's rate is a host's measured ceiling, which python -m launch
            # uses for its own runs; there is none to project another machine from.
            raise ConfigError(
                "project.gpus",
                f"{gpu.name} has no {width} peak to project compute from; project GPU "
                "profiles (or project.mode=comm)",
            )
        fewest = min(cfg.project.nodes)
        batch = _base_rule(cfg, fewest * gpu.gpus_per_node)
        for nodes in sorted(cfg.project.nodes):
            where = Placement(nodes * gpu.gpus_per_node, gpu.gpus_per_node, nodes)
            try:
                here = _batch_at(cfg, batch, nodes, fewest)
                pred, reason = _predict_one(work, where, precision, rates, here)
                better = _auto_alternative(work, where, precision, rates, pred)
            except ConfigError as exc:
                rows.append(_skipped(gpu, where, str(exc)))
                refused.append(exc)
                continue
            if cfg.sweep.name != "strong" and batch.held == "global_batch":
                # Weak scaling of one layout: the sequences per data-parallel rank of the
                # fewest node count.
                batch = BatchRule.weak_from(here.global_batch, pred.degrees, where.world_size)
            if not pred.fits:
                unfit.append((pred.memory.peak_bytes, gpu.name, nodes))
            rows.append(_run_row(cfg, gpu, pred, reason, precision_reason))
            if better:
                rows[-1]["auto_alternative"] = better
    if refused and len(refused) == len(rows):
        # Nothing could be projected (a batch no projected size divides, a sequence too long
        # for every part): bad input, one line, nothing written, rather than a table of skips.
        first = refused[0]
        hint = ""
        if first.key == "train.global_batch":
            hint = f"; try train.global_batch={runnable_global_batch(cfg, profiles)}"
        raise ConfigError(
            first.key, f"{first.message}; no projected part or node count can run it{hint}"
        )
    if rows and not any(r.get("fits") for r in rows) and unfit:
        need, part, nodes = min(unfit, key=lambda u: u[0])
        raise ConfigError(
            "parallel",
            f"{cfg.parallel.name} with {cfg.model.name} (micro batch {cfg.train.micro_batch}, "
            f"seq {cfg.train.seq_len}) fits no projected part: it needs at least "
            f"{need / 2**30:.1f} GiB per rank ({part} at {nodes} node(s)); try "
            f"{_remedies(cfg, [(n, peak) for peak, name, n in unfit if name == part])}",
        )
    return rows


def runnable_global_batch(cfg: RunConfig, profiles: list[GpuConfig]) -> int:
    """A global batch every projected size divides: one micro batch per GPU where
    train.global_batch holds (weak scaling: the fewest node count; strong: every count, so
    their least common multiple). A layout's data-parallel size divides its GPU count, so
    micro_batch x data-parallel size divides it whatever tp x pp the layout takes."""
    per_node = math.lcm(*(g.gpus_per_node for g in profiles))
    nodes = cfg.project.nodes
    where = math.lcm(*nodes) if cfg.sweep.name == "strong" else min(nodes)
    return cfg.train.micro_batch * per_node * where


def _base_rule(cfg: RunConfig, fewest_gpus: int) -> BatchRule:
    """The batch rule a projection starts from: train.global_batch at the fewest node count;
    under weak scaling with parallel=auto, whose candidates (and chosen layouts from one node
    count to the next) differ in data-parallel size, the same sequences per device at every
    count and for every candidate (BatchRule.weak_per_device), so that the layouts are ranked,
    and the parts compared, on one workload."""
    if batch_held(cfg.sweep.name, cfg.parallel.name) == "sequences_per_device":
        return BatchRule.weak_per_device(cfg.train.global_batch, fewest_gpus)
    return BatchRule(global_batch=cfg.train.global_batch)


def _batch_at(cfg: RunConfig, batch: BatchRule, nodes: int, fewest: int) -> BatchRule:
    """The batch rule at ``nodes``. Weak scaling's base is the fewest node count of
    project.nodes whatever happens there: where the layout was refused at it (hsdp on one node)
    a data-parallel rank keeps what it would have held there, train.global_batch over the
    fewest count's data-parallel ranks, so the global batch grows with the node count (x nodes
    / fewest, taking the row's tp x pp as the same at both). Taking the first node
    count that ran as the base instead made one point's batch depend on the list
    (hsdp at 8 nodes: 1 sequence per GPU with [1,8], 4 with [1,2,8])."""
    if cfg.sweep.name == "strong" or batch.held != "global_batch" or nodes == fewest:
        return batch
    if cfg.train.global_batch * nodes % fewest:
        raise ConfigError(
            "train.global_batch",
            f"{cfg.train.global_batch} at {fewest} node(s) is "
            f"{cfg.train.global_batch * nodes / fewest:g} at {nodes}: weak scaling keeps each "
            "data-parallel rank's sequences, and that is not a whole number",
        )
    return BatchRule(global_batch=cfg.train.global_batch * nodes // fewest)


def _remedies(cfg: RunConfig, peaks_by_nodes: list[tuple[int, int]]) -> str:
    """What could make a run fit, leaving out what it already does. ``peaks_by_nodes``: the
    (node count, peak bytes per rank) of the part that came closest: more nodes are offered
    where it was predicted at the most nodes projected, unless its peak did not fall from its
    fewest to its most (HSDP's replicas across nodes hold what one node's shards do)."""
    out = []
    name = str(cfg.parallel.name)
    row = layout(name) if name in CATALOG else None
    if row and not row.shards_parameters:
        # An EP layout that replicates the dense parameters has its sharded twin.
        out.append(f"parallel={'ep_fsdp' if row.expert_parallel else 'fsdp'} (or parallel=auto)")
    if row and is_moe(cfg.model) and not row.expert_parallel:
        out.append("parallel=ep_fsdp (each rank holds n_experts / ep of the experts)")
    # Zero-bubble schedules refuse checkpointing (train/spec/stages.py).
    zero_bubble = row is not None and row.pipeline and str(cfg.parallel.pp_schedule) in ZERO_BUBBLE
    if cfg.parallel.activation_checkpoint != "full" and not zero_bubble:
        out.append("parallel.activation_checkpoint=full")
    if cfg.train.micro_batch > 1:
        out.append("a smaller train.micro_batch")
    (fewest, first), (most, last) = min(peaks_by_nodes), max(peaks_by_nodes)
    growing = most > fewest and last >= first
    # Where the part was predicted at fewer node counts than projected, the others could not
    # run this layout or batch (parallel=tp stays inside a node): more nodes are no remedy
    # either. From one count alone, only a layout whose shards span the nodes gains from more
    # (ddp, ep and hsdp's replicas across nodes hold what one node does).
    across = row.node_split[0] if row and row.node_split else None
    shards = row is not None and (row.shards_parameters or row.zero_stage == 3)
    spans = shards and across != "dp_replicate"
    if not growing and most == max(cfg.project.nodes) and (most > fewest or spans):
        out.append("more nodes (project.nodes)")
    out = out or ["a part with more memory"]
    text = ", ".join(out[:-1]) + f" or {out[-1]}" if len(out) > 1 else out[0]
    if growing:
        text += (
            " (not more nodes: its peak per rank does not fall with them, "
            f"{first / 2**30:.1f} GiB at {fewest} node(s), {last / 2**30:.1f} at {most})"
        )
    return text


def _predict_one(
    cfg: RunConfig, where: Placement, precision: str, rates: PartRates, batch: BatchRule
) -> tuple[Prediction, str]:
    """The prediction of one placement with ``batch``'s global batch, and why this layout."""
    kernels = Kernels(attention=cfg.project.attention)
    given = {"precision": precision, "rates": rates, "kernels": kernels}
    if cfg.parallel.name == "auto":
        choice = choose_layout(cfg, where, batch=batch, **given)
        return choice.prediction, choice.reason
    plan = plan_layout(cfg, where.world_size, where.nproc_per_node)
    # The rules python -m launch applies to a layout (parallel=auto's candidates pass them
    # through check_run): an MoE model in pipeline stages was projected from dense stage
    # counts (olmoe_1b_7b under pp: 290% efficiency) though no run can take it.
    check_layout_features(cfg, plan)
    check_moe_layout(cfg.model, plan, where.nproc_per_node)
    pred = predict(cfg, plan, where, global_batch=batch.global_batch_for(plan.degrees), **given)
    return pred, f"parallel={cfg.parallel.name} as configured"


# A configured layout's row names parallel=auto's choice where the model puts it this much
# faster: the model's own error on published runs (8-12% mean, docs/performance-model.md) can
# reverse a smaller lead.
AUTO_HINT_SPEEDUP = 1.2


def _auto_alternative(
    cfg: RunConfig, where: Placement, precision: str, rates: PartRates, pred: Prediction
) -> dict | None:
    """parallel=auto's layout for the same part, size and global batch, where it is predicted at
    least AUTO_HINT_SPEEDUP x the configured layout's tokens/s per device (or the configured
    one does not fit): what a user who picked a layout would want to know; else None."""
    if cfg.parallel.name == "auto":
        return None
    asked = copy.copy(cfg)
    asked.parallel = _auto_parallel(cfg.parallel)
    kernels = Kernels(attention=cfg.project.attention)
    # The row's own global batch: under weak scaling ``batch`` keeps the configured layout's
    # sequences per data-parallel rank, which at auto's (another data-parallel size) would be
    # another batch than the row states.
    same = BatchRule(global_batch=pred.tokens_per_step // cfg.train.seq_len)
    try:
        choice = choose_layout(
            asked, where, batch=same, precision=precision, rates=rates, kernels=kernels
        )
    except ConfigError:  # nothing fits, or no layout runs this shape: no alternative to name
        return None
    speedup = choice.prediction.tokens_per_s_per_device / pred.tokens_per_s_per_device
    if pred.fits and speedup < AUTO_HINT_SPEEDUP:
        return None
    return {
        "layout": choice.prediction.layout,
        "tokens_per_s_per_device": choice.prediction.tokens_per_s_per_device,
        "speedup": speedup,
    }


def _run_row(
    cfg: RunConfig, gpu: GpuConfig, pred: Prediction, reason: str, precision_reason: str
) -> dict:
    """projection.json's run: the prediction, why its layout and precision, its labels and,
    where project.price_per_gpu_hour prices the part, its cost."""
    row = pred.as_dict()
    row["global_batch"] = pred.tokens_per_step // cfg.train.seq_len  # this row's own
    row["layout"]["reason"] = reason
    row["precision_reason"] = precision_reason
    share, power_source = power_limit_share(gpu)
    if power_source:  # the part runs below its TDP: how the model took it
        row["power_limit"] = {
            "watts": gpu.power_limit_w,
            "tdp_w": gpu.tdp_w,
            "throughput_share": share,
            "source": power_source,
        }
    row["interconnect_bound"] = pred.exposed_share >= cfg.project.interconnect_bound_share
    row["crosses_node_boundary"] = pred.nodes > 1
    price = cfg.project.price_per_gpu_hour.get(gpu.name)
    if price:
        tokens_per_dollar = pred.tokens_per_s_per_device * 3600 / price
        row["price_per_gpu_hour"] = price
        row["tokens_per_dollar"] = tokens_per_dollar
        row["dollars_per_billion_tokens"] = COST_TOKENS / tokens_per_dollar
    return row


def _skipped(gpu: GpuConfig, where: Placement, why: str) -> dict:
    """A run the model refused: projection.json's keys, null, and why."""
    return {
        "gpu": gpu.name,
        "nodes": where.nodes,
        "nproc_per_node": where.nproc_per_node,
        "world_size": where.world_size,
        **dict.fromkeys(UNPREDICTED),
        "fits": False,
        "scaling_efficiency": None,
        "skipped": why,
    }


def project_collectives(
    cfg: RunConfig, profiles: list[GpuConfig], calibration: Calibration | None = None
) -> list[dict]:
    calibration = calibration or Calibration()
    unknown = [op for op in cfg.comm.ops if op not in OPS]
    if unknown:
        raise ConfigError("comm.ops", f"unknown {unknown[0]!r}; one of: {', '.join(OPS)}")
    sizes = []
    size = cfg.comm.min_bytes
    while size <= cfg.comm.max_bytes:
        sizes.append(size)
        size *= 2
    rows = []
    for gpu in profiles:
        rates = calibration.apply(part_rates(gpu))
        for nodes in sorted(cfg.project.nodes):
            for op in cfg.comm.ops:
                rows += _collective_points(gpu, nodes, op, sizes, rates)
    return rows


def _collective_points(
    gpu: GpuConfig, nodes: int, op: str, sizes: list[int], rates: PartRates
) -> list[dict]:
    """One point per size, nccl-tests style; the first size the model refuses ends the sweep
    with a point saying why."""
    ranks = nodes * gpu.gpus_per_node
    points = []
    for nbytes in sizes:
        point = {"gpu": gpu.name, "op": op, "bytes": nbytes, "ranks": ranks, "nodes": nodes}
        try:
            t = collective_time(op, nbytes, ranks, gpu.gpus_per_node, rates)
        except ConfigError as exc:
            none = dict.fromkeys(("time_s", "algbw_gbytes_per_s", "busbw_gbytes_per_s"))
            return [*points, {**point, **none, "skipped": str(exc)}]
        points.append(
            {
                **point,
                "time_s": t.time_s,
                "algorithm": t.algorithm,
                "protocol": t.protocol,
                "algbw_gbytes_per_s": t.algbw_gbytes_per_s,
                "busbw_gbytes_per_s": t.algbw_gbytes_per_s * bus_factor(op, ranks),
            }
        )
    return points
