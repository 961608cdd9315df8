"""``python -m launch.project [overrides]``: projected scaling per GPU type (launch/perfmodel/).

    python -m launch.project model=llama_7b parallel=auto project.gpus=[h100_sxm,h800,a100_80g,a800]
    python -m launch.project project.mode=comm project.nodes=[1,2]
    python -m launch.project project.calibrate=runs/DATE/TIME/ws1   # from a measured run

Writes projection.md, projection.json and projection.png into project.out (or the run dir)
and prints the table; pure arithmetic, no rank starts.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from launch.app import run_app
from launch.bench.comm_job import validate_comm
from launch.errors import ConfigError
from launch.perfmodel.projection import projection_record
from launch.report.projected import projection_table, write_projection
from train.spec.config import RunConfig


def check_inputs(cfg: RunConfig) -> None:
    """What launch/perfmodel/ does not check itself, refused before anything is computed:
    comm mode's sweep by the rules of `python -m launch.comm` (one source: a min_bytes of 0
    would double forever, a negative one fill memory, an empty sweep print an empty table),
    and an output dir that cannot be one."""
    if cfg.project.mode == "comm":
        validate_comm(cfg)
    out = Path(cfg.project.out or cfg.run_dir)
    # The nearest existing path decides: a file there (or above) makes mkdir fail.
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        key = "project.out" if cfg.project.out else "run_dir"
        raise ConfigError(
            key, f"{existing} is a file; expected a directory for projection.md, .json and .png"
        )


def run_projection(cfg: RunConfig, console: Console) -> int:
    """launch/perfmodel/ computes the record, launch/report/ writes and prints it."""
    check_inputs(cfg)
    record = projection_record(cfg)
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
    run_app(
        lambda cfg, overrides, console: run_projection(cfg, console),
        check=lambda cfg, overrides, console: check_inputs(cfg),
    )


if __name__ == "__main__":
    main()
