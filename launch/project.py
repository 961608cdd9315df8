"""``python -m launch.project [overrides]``: projected scaling per GPU type (launch/perfmodel/).

    python -m launch.project model=llama_7b parallel=auto project.gpus=[h100_sxm,h800,a100_80g,a800]
    python -m launch.project project.mode=comm project.nodes=[1,2]
    python -m launch.project project.calibrate=runs/DATE/TIME/ws1   # from a measured run

Writes projection.md, projection.json and projection.png into project.out (or the run dir)
and prints the table; pure arithmetic, no rank starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from launch.app import run_app
from launch.perfmodel.projection import projection_record
from launch.report.projected import projection_table, write_projection
from train.spec.config import RunConfig


def run_projection(cfg: RunConfig, console: Console, overrides: Sequence[str] = ()) -> int:
    """launch/perfmodel/ computes the record, launch/report/ writes and prints it."""
    record = projection_record(cfg, overrides)
    out = Path(cfg.project.out or cfg.run_dir)
    write_projection(record, out)
    table = projection_table(record)
    # A file or a pipe gets the width the table needs: rich's default there is 80 columns,
    # which folds its numbers ("10,9 / 72"). A terminal keeps its own width.
    width = console.width
    if not console.is_terminal:
        unbounded = console.options.update_width(10_000)
        console.width = max(width, console.measure(table, options=unbounded).maximum)
    console.print(table)
    console.width = width
    console.print(f"wrote {out / 'projection.md'}, projection.json, projection.png")
    return 0


def main() -> None:
    run_app(lambda cfg, overrides, console: run_projection(cfg, console, overrides))


if __name__ == "__main__":
    main()
