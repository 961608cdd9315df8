"""`python -m launch.project`: projected scaling per GPU type, or projected collectives.

For each profile in project.gpus (default: every profile but auto and cpu) and each node
count in project.nodes, predict the step of cfg's model and layout (parallel=auto: the best
layout for that part and shape) under weak scaling: every device gets train.global_batch
sequences per step, as a one-device run would. Writes projection.json (``runs``, or with
project.mode=comm ``collectives``), projection.md and projection.png into project.out (or
run_dir) and prints a table. Pure arithmetic: all profiles x 4 node counts take milliseconds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from launch.conf_tree import group_choices, load_gpu_profile
from launch.errors import ConfigError
from launch.perfmodel.calibrate import Calibration, load_calibration
from launch.perfmodel.choose import choose_layout
from launch.perfmodel.collectives import OPS, bus_factor, collective_time
from launch.perfmodel.hardware import part_rates
from launch.perfmodel.step import plan_for, predict, projected_precision
from train.spec.config import GpuConfig, RunConfig

MODES = ("runs", "comm")
COST_TOKENS = 1e9  # the cost column: dollars per billion tokens


def projected_profiles(names: list[str]) -> list[GpuConfig]:
    available = [n for n in group_choices("gpu") if n not in ("auto", "cpu")]
    names = names or available
    unknown = [n for n in names if n not in group_choices("gpu") or n == "auto"]
    if unknown:
        raise ConfigError(
            "project.gpus", f"unknown profile {unknown[0]!r}; one of: {', '.join(available)}"
        )
    return [load_gpu_profile(n) for n in names]


def check_project(cfg: RunConfig) -> None:
    p = cfg.project
    if p.mode not in MODES:
        raise ConfigError("project.mode", f"{p.mode!r} is not one of: {', '.join(MODES)}")
    if not p.nodes:
        raise ConfigError("project.nodes", "needs at least one node count")
    bad = [n for n in p.nodes if n <= 0]
    if bad:
        raise ConfigError("project.nodes", f"{bad[0]}: node counts must be >= 1")
    for name, price in p.price_per_gpu_hour.items():
        if price <= 0:
            raise ConfigError("project.price_per_gpu_hour", f"{name}: {price} must be > 0")


def run_projection(cfg: RunConfig, console: Console) -> int:
    check_project(cfg)
    profiles = projected_profiles(list(cfg.project.gpus))
    unpriced = set(cfg.project.price_per_gpu_hour) - {g.name for g in profiles}
    if unpriced:
        raise ConfigError(
            "project.price_per_gpu_hour", f"{sorted(unpriced)[0]} is not a projected profile"
        )
    calibration = load_calibration(cfg.project.calibrate, cfg.project.calibrate_comm)
    workload = _workload(cfg, calibration)
    out = Path(cfg.project.out or cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.project.mode == "comm":
        rows = project_collectives(workload, profiles, calibration)
        record = {"mode": "comm", "calibration": calibration.source, "collectives": rows}
        _write(out, record, _comm_markdown(rows), None)
        console.print(_comm_table(rows))
    else:
        rows = project_runs(workload, profiles, calibration)
        record = {
            "mode": "runs",
            "model": workload.model.name,
            "seq_len": workload.train.seq_len,
            "micro_batch": workload.train.micro_batch,
            "sequences_per_device": workload.train.global_batch,
            "parallel": workload.parallel.name,
            "interconnect_bound_share": cfg.project.interconnect_bound_share,
            "calibration": calibration.source,
            "runs": rows,
        }
        _write(out, record, _runs_markdown(record), rows)
        console.print(_runs_table(rows, workload))
    console.print(f"wrote {out / 'projection.md'}, projection.json, projection.png")
    return 0


def _workload(cfg: RunConfig, calibration: Calibration) -> RunConfig:
    """cfg, or the calibration run's model, batch and layout with cfg's project settings.
    A calibration run's per-device batch is its global batch over its world size."""
    if calibration.workload is None:
        return cfg
    work = copy.deepcopy(calibration.workload)
    world = work.cluster.nodes * work.cluster.nproc_per_node
    per_device = max(1, work.train.global_batch // world)
    work.train.global_batch = per_device
    work.project = cfg.project
    work.run_dir = cfg.run_dir
    return work


def project_runs(
    cfg: RunConfig, profiles: list[GpuConfig], calibration: Calibration | None = None
) -> list[dict]:
    calibration = calibration or Calibration()
    rows: list[dict] = []
    smallest: tuple[int, str] | None = None
    for gpu in profiles:
        work = copy.deepcopy(cfg)
        work.gpu = gpu
        precision, precision_reason = projected_precision(cfg.precision.name, gpu.name, gpu.fp8)
        width = "bf16" if precision == "fp8" else precision
        rates = calibration.apply(part_rates(gpu, precision=width))
        for nodes in sorted(cfg.project.nodes):
            per_node = gpu.gpus_per_node
            world = nodes * per_node
            batch = cfg.train.global_batch * world
            try:
                pred, reason = _predict_one(work, world, per_node, nodes, batch, precision, rates)
            except ConfigError as exc:
                rows.append(_skipped(gpu, nodes, world, str(exc)))
                continue
            if not pred.fits and (smallest is None or pred.memory.peak_bytes < smallest[0]):
                smallest = (pred.memory.peak_bytes, f"{gpu.name} at {nodes} node(s)")
            row = pred.as_dict()
            row["layout"]["reason"] = reason
            row["precision_reason"] = precision_reason
            row["interconnect_bound"] = pred.exposed_share >= cfg.project.interconnect_bound_share
            row["crosses_node_boundary"] = nodes > 1
            price = cfg.project.price_per_gpu_hour.get(gpu.name)
            if price:
                tokens_per_dollar = pred.tokens_per_s_per_device * 3600 / price
                row["price_per_gpu_hour"] = price
                row["tokens_per_dollar"] = tokens_per_dollar
                row["dollars_per_billion_tokens"] = COST_TOKENS / tokens_per_dollar
            rows.append(row)
    if rows and not any(r.get("fits") for r in rows) and smallest is not None:
        raise ConfigError(
            "parallel",
            f"{cfg.parallel.name} with {cfg.model.name} (micro batch {cfg.train.micro_batch}, "
            f"seq {cfg.train.seq_len}) fits no projected part: it needs at least "
            f"{smallest[0] / 2**30:.1f} GiB per rank ({smallest[1]}); try parallel=fsdp, "
            "parallel.activation_checkpoint=full or a smaller train.micro_batch",
        )
    return rows


def _predict_one(cfg, world, per_node, nodes, batch, precision, rates):
    shape = {"world_size": world, "nproc_per_node": per_node, "nodes": nodes}
    if cfg.parallel.name == "auto":
        choice = choose_layout(cfg, **shape, precision=precision, rates=rates, global_batch=batch)
        return choice.prediction, choice.reason
    plan = plan_for(cfg, world, per_node)
    pred = predict(cfg, plan, **shape, global_batch=batch, precision=precision, rates=rates)
    return pred, f"parallel={cfg.parallel.name} as configured"


def _skipped(gpu: GpuConfig, nodes: int, world: int, why: str) -> dict:
    return {
        "gpu": gpu.name,
        "nodes": nodes,
        "nproc_per_node": gpu.gpus_per_node,
        "world_size": world,
        "layout": None,
        "step_time_s": None,
        "compute_s": None,
        "comm_s": None,
        "exposed_comm_s": None,
        "tokens_per_s_per_device": None,
        "mfu": None,
        "memory_bytes_per_rank": None,
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
            per_node = gpu.gpus_per_node
            ranks = nodes * per_node
            for op in cfg.comm.ops:
                for nbytes in sizes:
                    point = {
                        "gpu": gpu.name,
                        "op": op,
                        "bytes": nbytes,
                        "ranks": ranks,
                        "nodes": nodes,
                    }
                    try:
                        t = collective_time(op, nbytes, ranks, per_node, rates)
                    except ConfigError as exc:
                        rows.append(
                            {
                                **point,
                                "time_s": None,
                                "algbw_gbytes_per_s": None,
                                "busbw_gbytes_per_s": None,
                                "skipped": str(exc),
                            }
                        )
                        break
                    rows.append(
                        {
                            **point,
                            "time_s": t.time_s,
                            "algorithm": t.algorithm,
                            "algbw_gbytes_per_s": t.algbw_gbytes_per_s,
                            "busbw_gbytes_per_s": t.algbw_gbytes_per_s * bus_factor(op, ranks),
                        }
                    )
    return rows


# -- output -----------------------------------------------------------------------------------


def _write(out: Path, record: dict, markdown: str, rows: list[dict] | None) -> None:
    (out / "projection.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "projection.md").write_text(markdown)
    _plot(out / "projection.png", rows, record)


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _layout_text(layout: dict | None) -> str:
    if not layout:
        return "-"
    degrees = "x".join(str(layout[k]) for k in ("dp_replicate", "dp_shard", "tp"))
    ckpt = " +ckpt" if layout.get("checkpointed_layers") else ""
    return f"{layout['name']} {degrees}{ckpt}"


RUN_COLUMNS = (
    "gpu",
    "nodes",
    "GPUs",
    "layout",
    "step (s)",
    "tok/s/device",
    "MFU",
    "GiB/rank",
    "efficiency",
    "exposed comm",
    "",
)


def _run_cells(row: dict, first_multi: bool) -> list[str]:
    if row.get("skipped"):
        return [
            row["gpu"],
            str(row["nodes"]),
            str(row["world_size"]),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            row["skipped"],
        ]
    label = []
    if first_multi:
        label.append("crosses node boundary")
    if row.get("interconnect_bound"):
        label.append("interconnect-bound")
    if not row["fits"]:
        label.append("DOES NOT FIT")
    if "dollars_per_billion_tokens" in row:
        label.append(f"${row['dollars_per_billion_tokens']:,.0f}/1B tok")
    return [
        row["gpu"],
        str(row["nodes"]),
        str(row["world_size"]),
        _layout_text(row["layout"]),
        f"{row['step_time_s']:.3f}",
        f"{row['tokens_per_s_per_device']:,.0f}",
        _fmt(row["mfu"], ".1%"),
        f"{row['memory_bytes_per_rank'] / 2**30:.1f}",
        f"{row['scaling_efficiency']:.1%}",
        f"{row['exposed_comm_share']:.1%}",
        " ".join(label),
    ]


def _first_multi(rows: list[dict]) -> set[int]:
    marked, seen = set(), set()
    for i, row in enumerate(rows):
        if row["nodes"] > 1 and row["gpu"] not in seen:
            marked.add(i)
            seen.add(row["gpu"])
    return marked


def _runs_table(rows: list[dict], cfg: RunConfig) -> Table:
    table = Table(
        title=f"Projected: {cfg.model.name}, seq {cfg.train.seq_len}, "
        f"{cfg.train.global_batch} seq/device/step, parallel={cfg.parallel.name}"
    )
    for column in RUN_COLUMNS:
        table.add_column(column, justify="left" if column in ("gpu", "layout", "") else "right")
    marked = _first_multi(rows)
    for i, row in enumerate(rows):
        table.add_row(*_run_cells(row, i in marked))
    return table


def _runs_markdown(record: dict) -> str:
    rows = record["runs"]
    lines = [
        f"# Projection: {record['model']}, seq {record['seq_len']}, micro batch "
        f"{record['micro_batch']}, {record['sequences_per_device']} sequences per device per "
        f"step (weak scaling), parallel={record['parallel']}",
        "",
        "Predicted by the performance model (docs/performance-model.md), not measured. "
        "Efficiency: tokens/s per device over one device doing the same per-device work with "
        f"no communication. *interconnect-bound*: exposed comm >= "
        f"{record['interconnect_bound_share']:.0%} of the step.",
    ]
    if record.get("calibration"):
        lines.append(f"Calibration: {record['calibration']}.")
    lines += [
        "",
        "| " + " | ".join(RUN_COLUMNS[:-1]) + " | notes |",
        "|" + "---|" * len(RUN_COLUMNS),
    ]
    marked = _first_multi(rows)
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join(_run_cells(row, i in marked)) + " |")
    reasons = [(r["gpu"], r["nodes"], r["layout"].get("reason")) for r in rows if r.get("layout")]
    lines += ["", "Layout per row:", ""]
    lines += [f"- {g} x{n} node(s): {reason}" for g, n, reason in reasons]
    return "\n".join(lines) + "\n"


def _comm_table(rows: list[dict]) -> Table:
    table = Table(title="Projected collectives (largest size per op)")
    for column in ("gpu", "nodes", "ranks", "op", "bytes", "time (ms)", "busbw GB/s"):
        table.add_column(column, justify="right")
    for row in _largest(rows):
        table.add_row(
            row["gpu"],
            str(row["nodes"]),
            str(row["ranks"]),
            row["op"],
            f"{row['bytes']:,}",
            _fmt(row["time_s"] and row["time_s"] * 1e3, ".3f"),
            _fmt(row["busbw_gbytes_per_s"], ".1f"),
        )
    return table


def _largest(rows: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["gpu"], row["nodes"], row["op"])
        if key not in best or row["bytes"] > best[key]["bytes"]:
            best[key] = row
    return list(best.values())


def _comm_markdown(rows: list[dict]) -> str:
    lines = [
        "# Projected collectives",
        "",
        "nccl-tests conventions (bytes: the full buffer; busbw = algbw x bus factor). "
        "Predicted, not measured.",
        "",
        "| gpu | nodes | ranks | op | bytes | time (ms) | algbw GB/s | busbw GB/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in _largest(rows):
        lines.append(
            f"| {row['gpu']} | {row['nodes']} | {row['ranks']} | {row['op']} | {row['bytes']:,} "
            f"| {_fmt(row['time_s'] and row['time_s'] * 1e3, '.3f')} "
            f"| {_fmt(row['algbw_gbytes_per_s'], '.1f')} "
            f"| {_fmt(row['busbw_gbytes_per_s'], '.1f')} |"
        )
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: list[dict] | None, record: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if rows is not None:
        for gpu in dict.fromkeys(r["gpu"] for r in rows):
            points = [
                (r["world_size"], r["scaling_efficiency"])
                for r in rows
                if r["gpu"] == gpu and r.get("scaling_efficiency") is not None
            ]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=gpu)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel("projected scaling efficiency")
        ax.set_title(f"{record.get('model')}: projected (not measured)")
    else:
        for key in dict.fromkeys((r["gpu"], r["nodes"], r["op"]) for r in record["collectives"]):
            if key[2] != "all_reduce":
                continue
            pts = [
                (r["bytes"], r["busbw_gbytes_per_s"])
                for r in record["collectives"]
                if (r["gpu"], r["nodes"], r["op"]) == key and r["busbw_gbytes_per_s"]
            ]
            if pts:
                ax.plot(*zip(*pts, strict=True), label=f"{key[0]} x{key[1]}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes")
        ax.set_ylabel("projected all_reduce busbw (GB/s)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
