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


def write_report(dirs: list[Path], out_dir: Path) -> dict[str, Path]:
    """Write report.md, results.json and scaling.png into ``out_dir``; return their paths."""
    runs = load_runs(dirs)
    return write_files(runs, scaling_rows(runs), out_dir)


def write_files(
    runs: list[dict[str, Any]], rows: list[dict[str, Any]], out_dir: Path
) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out_dir / "report.md",
        "json": out_dir / "results.json",
        "plot": out_dir / "scaling.png",
    }
    markdown = markdown_report(runs, rows)
    # Only sweeps that profiled (profile.enabled or profile.twin) have a breakdown to show.
    profiled = [run for run in runs if run.get("breakdown")]
    if profiled:
        section = where_the_time_went(runs)
        markdown = markdown.rstrip("\n") + "\n\n" + "\n".join(section) + "\n"
    paths["markdown"].write_text(markdown)
    series = list(dict.fromkeys(r["series"] for r in rows))
    paths["json"].write_text(json.dumps({"series": series, "rows": rows}, indent=2) + "\n")
    plot_scaling(rows, paths["plot"])
    if profiled:
        breakdown_png = plot_breakdown(breakdown_rows(runs), out_dir / "breakdown.png")
        if breakdown_png:
            paths["breakdown"] = breakdown_png
    return paths
