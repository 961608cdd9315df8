"""The projection's outputs (``python -m launch.project``): projection.json, projection.md,
projection.png and the console table, all rendered from the record launch/perfmodel/projection.py
computes (mode ``runs``: one row per part and node count; ``comm``: one per collective point).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

RUN_COLUMNS = (
    "gpu",
    "nodes",
    "GPUs",
    "layout",
    "batch",
    "step (s)",
    "tok/s/device",
    "MFU",
    "GiB/rank",
    "efficiency",
    "exposed comm",
    "",
)
COMM_COLUMNS = (
    "gpu",
    "nodes",
    "ranks",
    "op",
    "bytes",
    "algorithm",
    "time (ms)",
    "algbw GB/s",
    "busbw GB/s",
    "",
)


def write_projection(record: dict, out: Path) -> list[Path]:
    """projection.json, projection.md and projection.png of ``record`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "projection.json", out / "projection.md", out / "projection.png"]
    paths[0].write_text(json.dumps(record, indent=2) + "\n")
    comm = record["mode"] == "comm"
    paths[1].write_text(_comm_markdown(record["collectives"]) if comm else _runs_markdown(record))
    _plot(paths[2], record)
    return paths


def projection_table(record: dict) -> Table:
    """The console's table: every run, or the largest size of each collective."""
    return _comm_table(record["collectives"]) if record["mode"] == "comm" else _runs_table(record)


# -- runs -------------------------------------------------------------------------------------


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _layout_text(layout: dict | None) -> str:
    if not layout:
        return "-"
    degrees = "x".join(str(layout[k]) for k in ("dp_replicate", "dp_shard", "tp"))
    for dim in ("ep", "pp"):
        if layout.get(dim, 1) > 1:
            degrees = f"{dim}{layout[dim]} " + degrees
    ckpt = " +ckpt" if layout.get("checkpointed_layers") else ""
    # FSDP keeping its unsharded gradients and reducing once a step: more memory, fewer
    # reduce-scatters (parallel.fsdp_reduce_every_micro_step=false).
    once = " reduce-once" if layout.get("fsdp_reduce_every_micro_step") is False else ""
    return f"{layout['name']} {degrees}{ckpt}{once}"


def _notes(row: dict, first_multi: bool) -> str:
    label = []
    if first_multi:
        label.append("crosses node boundary")
    if row.get("interconnect_bound"):
        label.append("interconnect-bound")
    if not row["fits"]:
        label.append("DOES NOT FIT")
    if "power_limit" in row:
        power = row["power_limit"]
        modelled = "not modelled" not in power["source"]
        slowed = f"x{power['throughput_share']:.3f}" if modelled else "not modelled"
        label.append(f"{power['watts']:g} of {power['tdp_w']:g} W: {slowed}")
    if "dollars_per_billion_tokens" in row:
        label.append(f"${row['dollars_per_billion_tokens']:,.0f}/1B tok")
    if "auto_alternative" in row:
        better = row["auto_alternative"]
        label.append(
            f"parallel=auto: {_layout_text(better['layout'])} "
            f"{better['tokens_per_s_per_device']:,.0f} tok/s/device (x{better['speedup']:.1f})"
        )
    return " ".join(label)


def _run_cells(row: dict, first_multi: bool) -> list[str]:
    where = [row["gpu"], str(row["nodes"]), str(row["world_size"])]
    if row.get("skipped"):
        return where + ["-"] * (len(RUN_COLUMNS) - 4) + [row["skipped"]]
    return where + [
        _layout_text(row["layout"]),
        str(row["global_batch"]),
        f"{row['step_time_s']:.3f}",
        f"{row['tokens_per_s_per_device']:,.0f}",
        _fmt(row["mfu"], ".1%"),
        f"{row['memory_bytes_per_rank'] / 2**30:.1f}",
        f"{row['scaling_efficiency']:.1%}",
        f"{row['exposed_comm_share']:.1%}",
        _notes(row, first_multi),
    ]


def _run_lines(rows: list[dict]) -> list[list[str]]:
    """Each row's cells; "crosses node boundary" only on each part's first multi-node row."""
    seen: set[str] = set()
    lines = []
    for row in rows:
        first_multi = row["nodes"] > 1 and row["gpu"] not in seen
        if first_multi:
            seen.add(row["gpu"])
        lines.append(_run_cells(row, first_multi))
    return lines


def _runs_table(record: dict) -> Table:
    table = Table(
        title=f"Projected: {record['model']}, seq {record['seq_len']}, "
        f"global batch {record['global_batch']} at {_base_nodes(record)} ("
        f"{record['batch_scaling']} scaling; batch: each row's), parallel={record['parallel']}"
    )
    for column in RUN_COLUMNS:
        justify = "left" if column in ("gpu", "layout", "") else "right"
        table.add_column(column, justify=justify, overflow="fold")  # never "…" in a number
    for cells in _run_lines(record["runs"]):
        table.add_row(*cells)
    return table


def _base_nodes(record: dict) -> str:
    """Where train.global_batch holds: the fewest projected node count."""
    nodes = record.get("batch_nodes")
    return f"{nodes} node(s)" if nodes else "the fewest nodes"


BATCH_HELD_PROSE = {
    "global_batch": "the same global batch at every size",
    "sequences_per_dp_rank": "each data-parallel rank keeps the sequences it has there, also "
    "where a layout cannot run there: the global batch then grows with the node count",
    "sequences_per_device": "each device keeps the sequences it has there, whatever layout "
    "parallel=auto picks at each count, and every candidate layout is ranked on that batch: "
    "the global batch grows with the node count",
}


def _old_held(record: dict) -> str:
    """A projection.json from before batch_held was recorded."""
    return "sequences_per_dp_rank" if record["batch_scaling"] == "weak" else "global_batch"


def _runs_markdown(record: dict) -> str:
    rows = record["runs"]
    lines = [
        f"# Projection: {record['model']}, seq {record['seq_len']}, micro batch "
        f"{record['micro_batch']}, global batch {record['global_batch']} at "
        f"{_base_nodes(record)} ({record['batch_scaling']} scaling: "
        + BATCH_HELD_PROSE[record.get("batch_held") or _old_held(record)]
        + f"; the batch column is each row's), parallel={record['parallel']}",
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
    lines += ["| " + " | ".join(cells) + " |" for cells in _run_lines(rows)]
    reasons = [(r["gpu"], r["nodes"], r["layout"].get("reason")) for r in rows if r.get("layout")]
    lines += ["", "Layout per row:", ""]
    lines += [f"- {g} x{n} node(s): {reason}" for g, n, reason in reasons]
    return "\n".join(lines) + "\n"


# -- collectives ------------------------------------------------------------------------------


def _largest(rows: list[dict]) -> list[dict]:
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["gpu"], row["nodes"], row["op"])
        if key not in best or row["bytes"] > best[key]["bytes"]:
            best[key] = row
    return list(best.values())


def _comm_cells(row: dict) -> list[str]:
    """A collective point's cells; a skipped point says why in the last one."""
    algorithm = row.get("algorithm") or "-"
    if row.get("protocol") and row.get("protocol") != "simple":
        algorithm += f" ({row['protocol']})"
    return [
        row["gpu"],
        str(row["nodes"]),
        str(row["ranks"]),
        row["op"],
        f"{row['bytes']:,}",
        algorithm,
        _fmt(row["time_s"] and row["time_s"] * 1e3, ".3f"),
        _fmt(row["algbw_gbytes_per_s"], ".1f"),
        _fmt(row["busbw_gbytes_per_s"], ".1f"),
        row.get("skipped") or "",
    ]


def _comm_table(rows: list[dict]) -> Table:
    table = Table(title="Projected collectives (largest size per op)")
    columns = [c for c in COMM_COLUMNS if c != "algbw GB/s"]  # algbw: in the .md and .json
    for column in columns:
        justify = "left" if column in ("algorithm", "") else "right"
        table.add_column(column, justify=justify, overflow="fold")
    for row in _largest(rows):
        cells = dict(zip(COMM_COLUMNS, _comm_cells(row), strict=True))
        table.add_row(*(cells[c] for c in columns))
    return table


def _comm_markdown(rows: list[dict]) -> str:
    lines = [
        "# Projected collectives",
        "",
        "nccl-tests conventions (bytes: the full buffer; busbw = algbw x bus factor). "
        "Predicted, not measured.",
        "",
        "| " + " | ".join(COMM_COLUMNS[:-1]) + " | notes |",
        "|" + "---|" * len(COMM_COLUMNS),
    ]
    lines += ["| " + " | ".join(_comm_cells(row)) + " |" for row in _largest(rows)]
    return "\n".join(lines) + "\n"


# -- plot -------------------------------------------------------------------------------------


def _plot(path: Path, record: dict) -> None:
    """Runs: projected scaling efficiency per part against GPUs; comm: all_reduce busbw
    against bytes, per part and node count."""
    # Imported here: matplotlib takes a second to import and only this file needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if record["mode"] == "comm":
        _draw_all_reduce(ax, record["collectives"])
    else:
        _draw_efficiency(ax, record["runs"])
        ax.set_title(f"{record.get('model')}: projected (not measured)")
    ax.set_xscale("log", base=2)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # every run skipped: no curve to name
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _draw_efficiency(ax, rows: list[dict]) -> None:
    for gpu in dict.fromkeys(r["gpu"] for r in rows):
        points = [
            (r["world_size"], r["scaling_efficiency"])
            for r in rows
            if r["gpu"] == gpu and r.get("scaling_efficiency") is not None
        ]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=gpu)
    ax.set_xlabel("GPUs")
    ax.set_ylabel("projected scaling efficiency")


def _draw_all_reduce(ax, rows: list[dict]) -> None:
    for gpu, nodes in dict.fromkeys((r["gpu"], r["nodes"]) for r in rows):
        points = [
            (r["bytes"], r["busbw_gbytes_per_s"])
            for r in rows
            if (r["gpu"], r["nodes"], r["op"]) == (gpu, nodes, "all_reduce")
            and r["busbw_gbytes_per_s"]
        ]
        if points:
            ax.plot(*zip(*points, strict=True), label=f"{gpu} x{nodes}")
    ax.set_xlabel("bytes")
    ax.set_ylabel("projected all_reduce busbw (GB/s)")
