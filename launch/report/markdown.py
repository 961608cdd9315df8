"""report.md: one table per series with the scaling vocabulary spelt out under it."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from launch.report.predicted import predicted_section
from launch.report.scaling import group_series

SWEEP_KINDS = {
    "strong": "strong scaling (fixed global batch)",
    "weak": "weak scaling (fixed batch per data-parallel rank)",
    "none": "single runs (no sweep)",
}


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value} B"


def layout_cells(row: dict[str, Any]) -> list[str]:
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


def _power_limit(run: dict[str, Any]) -> str:
    """ " at 500 of 700 W" for a part run below its TDP (summary gpu_power_limit_w)."""
    limit, tdp = run.get("gpu_power_limit_w"), run.get("gpu_tdp_w")
    if limit is None:
        return ""
    return f" at {limit:g} of {tdp:g} W" if tdp else f" at {limit:g} W"


def _series_header(label: str, runs: list[dict[str, Any]]) -> list[str]:
    first = runs[0]
    kinds = sorted({r["sweep"]["name"] for r in runs})
    kind = " + ".join(SWEEP_KINDS.get(k, k) for k in kinds)
    lines = [
        f"## {label}",
        "",
        f"{first.get('gpu_display_name') or first['gpu']}{_power_limit(first)} (device: "
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
    if any((r.get("cluster") or {}).get("oversubscribed") for r in runs):
        warnings.append(
            "oversubscribed: CPU rank threads outnumbered the cores, so these figures measure "
            "contention as well as communication"
        )
    # MFU above 100% is not a true figure: which runs, and the likely cause.
    warnings += [f"{mfu_label(r)}: {r['mfu_warning']}" for r in runs if r.get("mfu_warning")]
    lines += [f"> **warning:** {w}" for w in warnings] + ([""] if warnings else [])
    return lines


def mfu_label(run: dict[str, Any]) -> str:
    return f"world size {run['world_size']} ({run.get('run_name') or 'run'})"


def missing_below_base(
    members: list[dict[str, Any]], base_world_size: int, failed: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Failed, stopped or unfinished points of this series' sweep dir smaller than its base:
    the base they would have been, so the efficiencies must say they are relative to another
    one."""
    sweep_dirs = {str(Path(r["run_dir"]).resolve().parent) for r in members if r.get("run_dir")}
    return [
        point
        for point in failed
        if str(Path(point["path"]).resolve().parent.parent) in sweep_dirs
        and (point.get("world_size") or 0) < base_world_size
    ]


def _base_note(base: dict[str, Any], missing: list[dict[str, Any]]) -> str:
    names = ", ".join(f"{p.get('name')} (world size {p.get('world_size')})" for p in missing)
    return (
        f"**the base is not the sweep's smallest point:** {names} failed or did not finish "
        f"(see Failed or Stopped points), so every efficiency here is relative to world size "
        f"{base['world_size']}."
    )


def _where_line(run: dict[str, Any]) -> list[str]:
    """Where the runs ran: cluster and launcher, the link, the fabric profile."""
    cluster = run.get("cluster") or {}
    if not cluster.get("name"):
        return []
    parts = [f"cluster {cluster['name']} (launcher {cluster.get('launcher', 'n/a')})"]
    link = cluster.get("link") or {}
    if link.get("gbps"):
        how = "declared" if link.get("declared") else "tc tbf"
        if link.get("tcp_congestion_control"):
            how += f", TCP {link['tcp_congestion_control']}"
        parts.append(f"link {link['gbps'] * 1000:g} Mbit/s per node ({how})")
    parts.append(f"fabric {(run.get('fabric') or {}).get('name') or 'none'}")
    return [" · ".join(parts), ""]


def markdown_report(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], failed: list[dict[str, Any]] = ()
) -> str:
    lines = ["# Scaling report", ""]
    for label, members in group_series(runs).items():
        series_rows = [r for r in rows if r["series"] == label]
        base = series_rows[0]
        missing = missing_below_base(members, base["world_size"], list(failed))
        lines += _series_header(label, members)
        lines += _where_line(members[0])
        if missing:
            lines += [f"> **warning:** {_base_note(base, missing)}", ""]
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
                f"| {pct(row['mfu'])} | {pct(eff)} | " + " | ".join(layout_cells(row)) + " |"
            )
        if any(r.get("predicted") for r in series_rows):
            lines += predicted_section(series_rows)
        lines += checkpoint_section(members)
        lines += [
            "",
            "Scaling efficiency = (tokens/s at N ÷ N) ÷ (tokens/s at base ÷ base), base = world "
            f"size {base['world_size']} ({base['nodes']} node(s)); 100% is perfect linear "
            "scaling.",
            "Memory is per rank (the busiest), from the tensors it holds: optimizer = Adam "
            "state + fp32 master weights; peak is the allocator's (GPU) or the process RSS "
            "(CPU). comm/step = bytes all-reduced + all-gathered + reduce-scattered per rank "
            "per step, computed from the model and the layout (train/spec/traffic.py).",
        ]
        if any(r["crosses_node_boundary"] for r in series_rows):
            lines.append(
                "† first world size that spans more nodes than the base: from here "
                "gradients cross the network between nodes."
            )
        lines.append("")
    return "\n".join(lines)


def checkpoint_section(runs: list[dict[str, Any]]) -> list[str]:
    """Checkpoint bandwidth per world size: writing state scales (or not) like training."""
    rows = []
    for run in sorted(runs, key=lambda r: r["world_size"]):
        saves = ((run.get("checkpoint") or {}).get("saves")) or []
        if not saves:
            continue
        job = [s["gbytes_per_s_job"] for s in saves if s.get("gbytes_per_s_job")]
        per_rank = [r for s in saves for r in s.get("gbytes_per_s_per_rank") or [] if r]
        rows.append(
            f"| {run['world_size']} | {len(saves)} | {_bytes(saves[-1].get('bytes'))} "
            f"| {_median(per_rank)} | {_median(job)} |"
        )
    if not rows:
        return []
    return [
        "",
        "Checkpoint saves (torch.distributed.checkpoint or DeepSpeed; median over the saves):",
        "",
        "| world size | saves | bytes per save | GB/s per rank | GB/s job |",
        "|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "n/a"
