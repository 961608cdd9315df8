"""Scaling report for one or more sweeps: ``python -m launch.report DIR [DIR ...] [--out OUT]``.

Reads the ``summary.json`` rank 0 wrote for each run, groups runs into series (same hardware,
model, parallelism and precision) and writes ``report.md``, ``results.json`` and
``scaling.png`` with the scaling efficiency of every world size against the series' smallest.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SUMMARY = "summary.json"
REQUIRED_KEYS = (
    "world_size",
    "nodes",
    "nproc_per_node",
    "gpu",
    "model",
    "parallel",
    "precision",
    "tokens_per_s",
    "tokens_per_s_per_device",
    "step_time_s",
    "mfu",
    "sweep",
)
SWEEP_KINDS = {
    "strong": "strong scaling (fixed global batch)",
    "weak": "weak scaling (fixed per-device batch)",
    "none": "single runs (no sweep)",
}


class ReportError(Exception):
    """Input the report cannot use; printed as one line, exit code 2."""


def _read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: unreadable summary ({exc})") from None
    missing = [key for key in REQUIRED_KEYS if key not in summary]
    if missing:
        raise ReportError(f"{path}: summary lacks {', '.join(missing)}")
    return summary


def _summary_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such directory")
    if (directory / SUMMARY).is_file():
        return [directory / SUMMARY]
    # A sweep dir also holds non-run entries (command.sh, the report itself, failed runs).
    paths = sorted(p / SUMMARY for p in directory.iterdir() if (p / SUMMARY).is_file())
    if not paths:
        raise ReportError(f"{directory}: no {SUMMARY} in it or in its sub-directories")
    return paths


def _series_key(run: dict[str, Any]) -> str:
    parts = [run["gpu"], run["model"]["name"], run["parallel"], run["precision"]["resolved"]]
    # On the emulated cluster the link rate is the variable under study: one curve per rate.
    link = (run.get("cluster") or {}).get("link") or {}
    if link.get("gbps"):
        parts.append(f"link {link['gbps'] * 1000:g} Mbit/s")
    return " · ".join(parts)


def load_runs(dirs: list[Path]) -> list[dict[str, Any]]:
    """Every run under ``dirs`` (run dirs or sweep dirs), each with a ``series`` label."""
    # The same dir named twice (``out`` and ``./out``) would double every row.
    given_by_dir = {}
    for given in map(Path, dirs):
        given_by_dir.setdefault(given.resolve(), given)
    inputs = list(given_by_dir)
    per_dir: list[list[dict[str, Any]]] = []
    for given in given_by_dir.values():
        runs = []
        for path in _summary_paths(given):  # errors name the dir as the user typed it
            run = _read_summary(path)
            run["run_dir"] = str(path.parent)
            runs.append(run)
        per_dir.append(runs)

    # A label found in several input dirs would merge two sweeps into one curve: suffix the
    # dir name, or the whole path where two inputs share a name.
    dirs_per_label: dict[str, set[int]] = defaultdict(set)
    for index, runs in enumerate(per_dir):
        for run in runs:
            dirs_per_label[_series_key(run)].add(index)
    names = [d.name for d in inputs]
    out = []
    for index, runs in enumerate(per_dir):
        suffix = names[index] if names.count(names[index]) == 1 else str(inputs[index])
        for run in runs:
            label = _series_key(run)
            run["series"] = f"{label} ({suffix})" if len(dirs_per_label[label]) > 1 else label
            out.append(run)
    return out


def _group(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        series.setdefault(run["series"], []).append(run)
    return series


def scaling_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run, grouped by series and sorted by world size within each."""
    rows = []
    for label, members in _group(runs).items():
        members = sorted(members, key=lambda r: (r["world_size"], r.get("run_name", "")))
        base = members[0]
        # Strong scaling fixes the global batch, weak scaling the per-device batch; measured
        # in tokens/s both ask the same question, "how much of each added device's throughput
        # survives", so one formula serves both: per-device tokens/s relative to the base's.
        base_per_device = base["tokens_per_s"] / base["world_size"]
        crossed = False
        for run in members:
            per_device = run["tokens_per_s"] / run["world_size"]
            # The first multi-node size is where gradients leave NVLink for the NIC; flag only
            # that one, the later ones pay the same price.
            crosses = not crossed and run["nodes"] > base["nodes"]
            crossed = crossed or crosses
            rows.append(
                {
                    "series": label,
                    "gpu": run["gpu"],
                    "world_size": run["world_size"],
                    "nodes": run["nodes"],
                    "nproc_per_node": run["nproc_per_node"],
                    "tokens_per_s": run["tokens_per_s"],
                    "tokens_per_s_per_device": run["tokens_per_s_per_device"],
                    "step_time_median_s": run["step_time_s"]["median"],
                    "mfu": run["mfu"],
                    "mfu_vs_bf16_peak": run.get("mfu_vs_bf16_peak"),
                    "mfu_vs_measured": run.get("mfu_vs_measured"),
                    "gpu_warning": run.get("gpu_warning"),
                    "scaling_efficiency": per_device / base_per_device if base_per_device else None,
                    # Per rank (the busiest), from the layout; absent in older summaries.
                    "memory": run.get("memory"),
                    "comm_bytes_per_step": run.get("comm_bytes_per_step"),
                    "hfu": run.get("hfu"),
                    "crosses_node_boundary": crosses,
                    "sweep": run["sweep"]["name"],
                    "run_dir": run["run_dir"],
                }
            )
    return rows


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def _layout_cells(row: dict[str, Any]) -> list[str]:
    """Memory per rank (parameters, gradients, optimizer state + master weights, peak) and
    communication per step; n/a for summaries written before layouts reported them."""
    memory, comm = row.get("memory") or {}, row.get("comm_bytes_per_step") or {}
    optimizer = None
    if "optimizer_state_bytes" in memory:
        optimizer = memory["optimizer_state_bytes"] + memory.get("master_weight_bytes", 0)
    return [
        _bytes(memory.get("param_bytes")),
        _bytes(memory.get("grad_bytes")),
        _bytes(optimizer),
        _bytes(memory.get("peak_bytes")),
        _bytes(comm.get("total")),
    ]


def _series_header(label: str, runs: list[dict[str, Any]]) -> list[str]:
    first = runs[0]
    kinds = sorted({r["sweep"]["name"] for r in runs})
    kind = " + ".join(SWEEP_KINDS.get(k, k) for k in kinds)
    lines = [
        f"## {label}",
        "",
        f"{first.get('gpu_display_name') or first['gpu']} (device: "
        f"{first.get('device_name') or 'unknown'}) · model {first['model']['name']} · "
        f"{first['parallel']} · {first['precision']['resolved']} · {kind}",
        "",
        f"MFU is against the dense {first.get('mfu_peak_precision') or 'precision'} peak"
        + (" (the bf16-peak figure is in results.json)" if "mfu_vs_bf16_peak" in first else "")
        + ".",
        "",
    ]
    # A profile that does not describe the device makes MFU meaningless: say so up front.
    warnings = sorted({r["gpu_warning"] for r in runs if r.get("gpu_warning")})
    lines += [f"> **warning:** {w}" for w in warnings] + ([""] if warnings else [])
    return lines


def _markdown(runs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    lines = ["# Scaling report", ""]
    for label, members in _group(runs).items():
        series_rows = [r for r in rows if r["series"] == label]
        base = series_rows[0]
        lines += _series_header(label, members)
        lines += [
            "| world size | nodes | tokens/s | tokens/s/device | step time (s) | MFU "
            "| scaling efficiency | params/rank | grads/rank | optimizer/rank | peak memory "
            "| comm/step |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in series_rows:
            size = f"{row['world_size']} †" if row["crosses_node_boundary"] else row["world_size"]
            eff = row["scaling_efficiency"]
            lines.append(
                f"| {size} | {row['nodes']} | {row['tokens_per_s']:,.0f} "
                f"| {row['tokens_per_s_per_device']:,.0f} | {row['step_time_median_s']:.3f} "
                f"| {_pct(row['mfu'])} | {_pct(eff)} | " + " | ".join(_layout_cells(row)) + " |"
            )
        lines += [
            "",
            "Scaling efficiency = (tokens/s at N ÷ N) ÷ (tokens/s at base ÷ base), base = world "
            f"size {base['world_size']} ({base['nodes']} node(s)); 100% is perfect linear "
            "scaling.",
            "Memory is per rank (the busiest), from the tensors it holds: optimizer = Adam "
            "state + fp32 master weights; peak is the allocator's (GPU) or the process RSS "
            "(CPU). comm/step = bytes all-reduced + all-gathered + reduce-scattered per rank "
            "per step, computed from the model and the layout (train/comm_volume.py).",
        ]
        if any(r["crosses_node_boundary"] for r in series_rows):
            lines.append(
                "† first world size that spans more nodes than the base: from here "
                "gradients cross the network between nodes."
            )
        lines.append("")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    # Imported here so the launcher, which imports this module, starts without matplotlib.
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_eff, ax_tps = fig.subplots(1, 2)
    sizes = sorted({r["world_size"] for r in rows})
    log_x = len(sizes) > 2
    cycle = [c["color"] for c in rcParams["axes.prop_cycle"]]

    boundaries: list[tuple[int, str]] = []
    for i, label in enumerate(dict.fromkeys(r["series"] for r in rows)):
        color = cycle[i % len(cycle)]
        series = [r for r in rows if r["series"] == label]
        xs = [r["world_size"] for r in series]
        ax_eff.plot(
            xs,
            [100 * (r["scaling_efficiency"] or 0) for r in series],
            "o-",
            color=color,
            label=label,
        )
        ax_tps.plot(xs, [r["tokens_per_s"] for r in series], "o-", color=color, label=label)
        base = series[0]
        ax_tps.plot(
            xs,
            [base["tokens_per_s"] * x / base["world_size"] for x in xs],
            "--",
            color=color,
            alpha=0.5,
            linewidth=1,
        )
        boundaries += [(r["world_size"], color) for r in series if r["crosses_node_boundary"]]

    # Drawn after the series so the legend lists the curves first.
    for i, (size, color) in enumerate(boundaries):
        for ax in (ax_eff, ax_tps):
            ax.axvline(
                size,
                linestyle=":",
                color=color,
                linewidth=1.5,
                label=None if i else "first multi-node size",
            )
    ax_eff.axhline(100, linestyle="--", color="grey", linewidth=1, label="ideal (100%)")
    ax_eff.set(
        title="Scaling efficiency", xlabel="devices (world size)", ylabel="efficiency vs. base (%)"
    )
    top = max([100] + [100 * (r["scaling_efficiency"] or 0) for r in rows])
    ax_eff.set_ylim(0, top * 1.1)
    ax_tps.set(
        title="Throughput (dashed: ideal linear from base)",
        xlabel="devices (world size)",
        ylabel="tokens/s",
    )
    for ax in (ax_eff, ax_tps):
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.08)  # keep an end-of-sweep boundary line off the frame
    if log_x:
        # Log-log keeps the ideal line straight, so a sag away from it reads at a glance.
        ax_tps.set_yscale("log")
    ax_eff.legend(fontsize="small", loc="lower left")
    ax_tps.legend(fontsize="small", loc="upper left")
    fig.savefig(path, dpi=120)


def write_report(dirs: list[Path], out_dir: Path) -> dict[str, Path]:
    """Write report.md, results.json and scaling.png into ``out_dir``; return their paths."""
    runs = load_runs(dirs)
    return _write(runs, scaling_rows(runs), out_dir)


def _write(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], out_dir: Path
) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "json": out_dir / "results.json",
        "plot": out_dir / "scaling.png",
    }
    paths["markdown"].write_text(_markdown(runs, rows))
    series = list(dict.fromkeys(r["series"] for r in rows))
    paths["json"].write_text(json.dumps({"series": series, "rows": rows}, indent=2) + "\n")
    _plot(rows, paths["plot"])
    return paths


def print_table(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """One rich table per series: a shared table's series column would wrap at 80 columns."""
    console = console or Console()
    for label in dict.fromkeys(r["series"] for r in rows):
        series = [r for r in rows if r["series"] == label]
        caption = (
            "† first world size across a node boundary"
            if any(r["crosses_node_boundary"] for r in series)
            else None
        )
        table = Table(title=label, caption=caption)
        for name in (
            "world size",
            "nodes",
            "tokens/s",
            "tok/s/device",
            "step (s)",
            "MFU",
            "efficiency",
        ):
            table.add_column(name, justify="right")
        for row in series:
            size = str(row["world_size"]) + (" †" if row["crosses_node_boundary"] else "")
            table.add_row(
                size,
                str(row["nodes"]),
                f"{row['tokens_per_s']:,.0f}",
                f"{row['tokens_per_s_per_device']:,.0f}",
                f"{row['step_time_median_s']:.3f}",
                _pct(row["mfu"]),
                _pct(row["scaling_efficiency"]),
            )
        console.print(table)
        if any(row.get("memory") for row in series):
            # A second table: the first already fills 80 columns.
            layout = Table(title=f"{label}: per rank")
            for name in ("world size", "params", "grads", "optimizer", "peak mem", "comm/step"):
                layout.add_column(name, justify="right")
            for row in series:
                layout.add_row(str(row["world_size"]), *_layout_cells(row))
            console.print(layout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__)
    parser.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="sweep dir (one sub-dir per run) or run dir (with summary.json)",
    )
    parser.add_argument(
        "--out", type=Path, help="where to write the report; defaults to DIR when only one is given"
    )
    args = parser.parse_args(argv)
    if args.out is None and len(args.dirs) > 1:
        print("error: --out is required when several dirs are given", file=sys.stderr)
        return 2
    out = args.out or args.dirs[0]
    try:
        runs = load_runs(args.dirs)
        rows = scaling_rows(runs)
        paths = _write(runs, rows, out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    console = Console()
    print_table(rows, console)
    # soft_wrap: a path broken across lines cannot be copied.
    console.print("report: " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
