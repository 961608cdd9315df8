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
from launch.bench.comm_job import comm_keys, validate_comm
from launch.command_help import help_page
from launch.conf_tree import override_keys
from launch.errors import ConfigError
from launch.perfmodel.compute import ATTENTION_KERNELS
from launch.perfmodel.projection import (
    MODES,
    projected_names,
    projected_profiles,
    projection_record,
)
from launch.report.projected import projection_table, write_projection
from launch.resolve import resolve_gpu
from launch.terminal import plain_console
from train.files.safe_files import unwritable_reason
from train.spec.config import ProjectConfig, RunConfig

EXAMPLES = [
    "python -m launch.project model=llama_7b parallel=auto "
    "project.gpus=[h100_sxm,h800,a100_80g,a800]",
    "python -m launch.project project.mode=comm project.gpus=[h100_sxm,h800] project.nodes=[1,2]",
    "python -m launch.project project.calibrate=runs/DATE/TIME/ws1   # from a measured run",
]


def check_inputs(
    cfg: RunConfig, overrides: Sequence[str] = (), console: Console | None = None
) -> None:
    """What launch/perfmodel/ does not check itself, refused before anything is computed:
    the part the command line names (gpu=auto written out: this machine's, detected here, as
    python -m launch detects it), comm mode's sweep by the rules of `python -m launch.comm`
    (one source: a min_bytes of 0 would double forever, a negative one fill memory, an empty
    sweep print an empty table), and an output dir that cannot be one. A multirun checks
    every job with this before its first starts (launch/app.py)."""
    if cfg.gpu.name == "auto" and "gpu" in override_keys(overrides):
        resolve_gpu(cfg, list(overrides), console or plain_console(quiet=True))
    projected_names(cfg, overrides)
    if cfg.project.mode == "comm":
        validate_comm(cfg)
    unwritable = unwritable_reason(Path(cfg.project.out or cfg.run_dir))
    if unwritable:
        key = "project.out" if cfg.project.out else "run_dir"
        raise ConfigError(
            key, f"{unwritable}; expected a directory for projection.md, .json and .png"
        )


def run_projection(cfg: RunConfig, console: Console, overrides: Sequence[str] = ()) -> int:
    """launch/perfmodel/ computes the record, launch/report/ writes and prints it."""
    check_inputs(cfg, overrides, console)
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


def project_help() -> str:
    """--help: what the projection does and its keys, the allowed values from their sources."""
    d = ProjectConfig()
    profiles = [g.name for g in projected_profiles([])]  # what an empty project.gpus projects
    keys = [
        ("project.mode=" + "|".join(MODES), "runs: projected training steps of model=, "
         "parallel=, precision=, train.*; comm: projected collectives of the comm.* sweep"),
        ("project.gpus=[NAME,...]", "profiles to project (default []: the part gpu=NAME "
         "names on the command line, else all of them): "
         + ", ".join(profiles)),
        (f"project.nodes={list(d.nodes)}".replace(" ", ""),
         "node counts, each >= 1 (a node holds its profile's gpus_per_node)"),
        ("project.price_per_gpu_hour.NAME=P", "price per GPU-hour of a projected profile, > 0: "
         "adds $ per 1B tokens (or project.price_per_gpu_hour={NAME:P,...})"),
        ("project.calibrate=RUN_DIR", "a measured run (summary.json, config.yaml) scales compute"),
        ("project.calibrate_comm=FILE", "comm.json of python -m launch.comm scales the links"),
        ("project.attention=" + "|".join(ATTENTION_KERNELS), f"attention kernel (default "
         f"{d.attention})"),
        ("project.interconnect_bound_share=S", f"in (0, 1], default {d.interconnect_bound_share}: "
         "exposed comm share labelled interconnect-bound"),
        ("project.out=DIR", "where the files go (default: the run dir, hydra.run.dir)"),
        ("train.global_batch=N", "sequences per step at the fewest projected nodes (mode=runs); "
         "train.micro_batch, train.seq_len, sweep=weak|strong as in python -m launch"),
        *[(key, f"mode=comm: {what}") for key, what in comm_keys()],
    ]  # fmt: skip
    summary = (
        "python -m launch.project [KEY=VALUE ...]: projected scaling per GPU type from the "
        "performance model (launch/perfmodel/). Pure arithmetic: no rank starts. Writes "
        "projection.md, projection.json and projection.png into project.out and prints the table."
    )
    return help_page(summary, keys, EXAMPLES)


def main() -> None:
    run_app(
        lambda cfg, overrides, console: run_projection(cfg, console, overrides),
        check=check_inputs,
        help_text=project_help,
    )


if __name__ == "__main__":
    main()
