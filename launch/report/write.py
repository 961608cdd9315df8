"""Write report.md, results.json and scaling.png for one or more sweeps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launch.report.breakdown import breakdown_rows, plot_breakdown, where_the_time_went
from launch.report.load import load_runs
from launch.report.markdown import markdown_report
from launch.report.plot import plot_scaling
from launch.report.scaling import scaling_rows
from launch.rundir import failed_points
from train.files.safe_files import staged
from train.measure.summary import finite_json


def write_report(dirs: list[Path], out_dir: Path) -> dict[str, Path]:
    """Write report.md, results.json and scaling.png into ``out_dir``; return their paths."""
    runs = load_runs(dirs)
    return write_files(runs, scaling_rows(runs), out_dir, failed_in(dirs))


def failed_in(dirs: list[Path]) -> list[dict[str, Any]]:
    return [point for d in dirs for point in failed_points(Path(d))]


def write_files(
    runs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    out_dir: Path,
    failed: list[dict[str, Any]] = (),
) -> dict[str, Path]:
    """report.md, results.json, scaling.png (and breakdown.png where runs profiled), replacing
    the previous report as a whole or not at all: rendered into a staging dir, then renamed
    into place together (train/files/safe_files.py); a full disk or a stop while rendering
    leaves the previous report as it was, a breakdown.png the new report lacks is removed."""
    out_dir = Path(out_dir)
    names = {"markdown": "report.md", "json": "results.json", "plot": "scaling.png"}
    markdown = markdown_report(runs, rows, list(failed))
    # Only sweeps that profiled (profile.enabled or profile.twin) have a breakdown to show.
    profiled = [run for run in runs if run.get("breakdown")]
    if profiled:
        section = where_the_time_went(runs)
        markdown = markdown.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    # A point the driver was stopped in is no failure of the run: listed on its own.
    stopped = [p for p in failed if p.get("status") == "stopped"]
    failed = [p for p in failed if p.get("status") != "stopped"]
    markdown += failed_section(failed) + stopped_section(stopped)
    series = list(dict.fromkeys(r["series"] for r in rows))
    results = finite_json({"series": series, "rows": rows, "failed": failed, "stopped": stopped})
    with staged(out_dir, replaces=("breakdown.png",)) as stage:
        (stage / names["markdown"]).write_text(markdown)
        # Strict JSON: a NaN (a diverged loss) is null, never an invalid token.
        (stage / names["json"]).write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
        plot_scaling(rows, stage / names["plot"])
        if profiled and plot_breakdown(breakdown_rows(runs), stage / "breakdown.png"):
            names["breakdown"] = "breakdown.png"
    return {key: out_dir / name for key, name in names.items()}


def failed_section(failed: list[dict[str, Any]]) -> str:
    """Points that failed: listed with their exit code and the failing rank's last line."""
    if not failed:
        return ""
    lines = [
        "",
        "## Failed points",
        "",
        "| run | world size | exit code | last line | record |",
        "|---|---:|---:|---|---|",
    ]
    for point in failed:
        last = (point.get("last_lines") or [""])[-1].replace("|", "\\|")
        lines.append(
            f"| {point.get('name')} | {point.get('world_size')} | {point.get('exit_code')} "
            f"| `{last}` | {point['path']} |"
        )
    return "\n".join(lines) + "\n"


def stopped_section(stopped: list[dict[str, Any]]) -> str:
    """Points the driver was stopped in (launch/stops.py): the signal and the last step."""
    if not stopped:
        return ""
    lines = [
        "",
        "## Stopped points",
        "",
        "Stopped by a signal to the driver, not failed: `resume=true` runs them again.",
        "",
        "| run | world size | stopped by | last step | at | record |",
        "|---|---:|---|---:|---|---|",
    ]
    for point in stopped:
        step = "none" if point.get("step") is None else point["step"]
        lines.append(
            f"| {point.get('name')} | {point.get('world_size')} | {point.get('signal')} "
            f"| {step} | {point.get('time')} | {point['path']} |"
        )
    return "\n".join(lines) + "\n"
