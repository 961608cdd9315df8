"""``python -m launch.comm [overrides]``: the collective benchmark, started like a training run.

The same config tree and the same launch paths as ``python -m launch`` (cluster=local,
emulated or multinode; launcher=torchrun, deepspeed or slurm), with ``python -m train.comm``
as the ranks. One run at cluster.nodes x cluster.nproc_per_node (sweeps do not apply); the
comm.* keys set the ops and the size sweep. Writes RUN_DIR/comm.json (every point),
comm.jsonl (progress) and comm.png, and prints busbw per size and op, nccl-tests style.

    python -m launch.comm cluster.nproc_per_node=2 comm.max_bytes=16777216
    python -m launch.comm cluster=emulated cluster.nodes=2 cluster.link_gbps=0.2 \\
        comm.ops=[all_reduce]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from launch.conf_tree import conf_dir, register_schema
from launch.errors import EXIT_CONFIG_ERROR, ConfigError
from launch.runner import RunFailed
from train.config import RunConfig

RANK_MODULE = "train.comm"


def validate_comm(cfg: RunConfig) -> None:
    from train.comm import OPS

    c = cfg.comm
    unknown = [op for op in c.ops if op not in OPS]
    if unknown or not c.ops:
        raise ConfigError("comm.ops", f"{unknown or c.ops}: choose from {', '.join(OPS)}")
    if c.min_bytes < 4:
        raise ConfigError("comm.min_bytes", f"{c.min_bytes}: must be >= 4 (one fp32 element)")
    if c.max_bytes < c.min_bytes:
        raise ConfigError("comm.max_bytes", f"{c.max_bytes}: must be >= comm.min_bytes")
    for key in ("seconds_per_op", "seconds_per_size"):
        if getattr(c, key) <= 0:
            raise ConfigError(f"comm.{key}", f"{getattr(c, key)}: must be > 0")
    if c.max_iters < 1 or c.warmup_iters < 0:
        raise ConfigError("comm.max_iters", "max_iters must be >= 1 and warmup_iters >= 0")


def run_benchmark(cfg: RunConfig, console: Console) -> int:
    from launch.driver import new_sweep_id, write_run_config
    from launch.gpu_detect import detect_local
    from launch.launchers import (
        commands_run_here,
        launch_commands,
        set_up_cluster,
        submit_slurm_jobs,
    )
    from launch.plan import plan_runs
    from launch.runner import progress_bar, run_nodes
    from launch.validate import validate

    if cfg.gpu.name == "auto":
        cfg.gpu, detected = detect_local()
        console.print(f"gpu=auto: {detected}")
    cfg.sweep.name = "none"  # one run at cluster.nodes x cluster.nproc_per_node
    # The benchmark trains nothing: a batch of one micro batch per rank keeps the training
    # checks (batch divisibility) from refusing a world size that is fine for collectives.
    world_size = cfg.cluster.nodes * cfg.cluster.nproc_per_node
    cfg.train.global_batch = cfg.train.micro_batch * world_size
    plans = plan_runs(cfg)
    validate(cfg, plans)
    validate_comm(cfg)
    setup = set_up_cluster(cfg, plans, console)
    plan = plans[0]
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    config_path = write_run_config(cfg, plan, new_sweep_id(cfg))
    if cfg.launcher.name == "slurm":
        return submit_slurm_jobs(cfg, plans, {plan.name: config_path}, RANK_MODULE)
    commands = launch_commands(cfg, plan, config_path, setup, RANK_MODULE)
    if cfg.dry_run:
        for node in commands:
            print(node.shell_line())
        return 0
    here = commands_run_here(cfg, commands)
    with setup.running(), progress_bar() as progress:
        result = run_nodes(
            here,
            plan,
            None,
            progress,
            metrics_name="comm.jsonl",
            summary_name="comm.json",
            require_summary=len(here) == plan.nodes,
        )
    if result is None:
        console.print("this node's ranks finished; comm.json is on the node of rank 0")
        return 0
    print_table(result, console)
    path = plot(result, plan.run_dir / "comm.png")
    console.print(f"results: {plan.run_dir / 'comm.json'}, {path}")
    return 0


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.0f} {unit}"
        n /= 1024
    return str(n)


def print_table(result: dict, console: Console | None = None) -> None:
    """busbw (GB/s) per message size and op, one table per group scope."""
    console = console or Console()
    points = result["results"]
    for scope in dict.fromkeys(p["scope"] for p in points):
        mine = [p for p in points if p["scope"] == scope]
        ops = list(dict.fromkeys(p["op"] for p in mine))
        group_size = mine[0]["group_size"]
        # Above the table rather than as its title: a title wraps to a narrow table's width.
        console.print(f"[bold]{scope}[/], {group_size} ranks, {result['backend']}: busbw GB/s")
        table = Table()
        table.add_column("size", justify="right")
        for op in ops:
            table.add_column(op, justify="right")
        by_size: dict[int, dict[str, dict]] = {}
        for p in mine:
            # Sizes are rounded to whole shares per op; the requested size keys the row.
            by_size.setdefault(_row_key(p["bytes"]), {})[p["op"]] = p
        for size in sorted(by_size):
            row = [human_bytes(size)]
            for op in ops:
                p = by_size[size].get(op)
                row.append(f"{p['busbw_gbytes_per_s']:.4f}" if p else "-")
            table.add_row(*row)
        console.print(table)
    console.print("busbw = algbw (bytes / time) x nccl-tests' factor for the op and group size")
    link = (result.get("cluster") or {}).get("link") or {}
    if link.get("gbps"):
        link_gbytes = link["gbps"] / 8
        console.print(f"link: {link['gbps']:g} Gbit/s = {link_gbytes:.4f} GB/s per direction")
        for p in largest_inter_node_points(points):
            console.print(
                f"  {p['scope']} {p['op']} at {human_bytes(p['bytes'])}: busbw "
                f"{p['busbw_gbytes_per_s']:.4f} GB/s = "
                f"{100 * p['busbw_gbytes_per_s'] / link_gbytes:.1f}% of the link"
            )


def largest_inter_node_points(points: list[dict]) -> list[dict]:
    """Per op, the largest message measured across nodes: where busbw meets the link."""
    across = [p for p in points if p["scope"] in ("inter-node", "world")]
    largest: dict[tuple[str, str], dict] = {}
    for p in across:
        key = (p["scope"], p["op"])
        if key not in largest or p["bytes"] > largest[key]["bytes"]:
            largest[key] = p
    return list(largest.values())


def _row_key(nbytes: int) -> int:
    """The power of two a point was asked for (its counted bytes are rounded down to it)."""
    return 1 << max(0, round(math.log2(max(nbytes, 1))))


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["results"]
    scopes = list(dict.fromkeys(p["scope"] for p in points))
    fig, axes = plt.subplots(1, len(scopes), figsize=(6 * len(scopes), 4.5), squeeze=False)
    link = (result.get("cluster") or {}).get("link") or {}
    for ax, scope in zip(axes[0], scopes, strict=True):
        mine = [p for p in points if p["scope"] == scope]
        for op in dict.fromkeys(p["op"] for p in mine):
            series = sorted((p["bytes"], p["busbw_gbytes_per_s"]) for p in mine if p["op"] == op)
            ax.plot(*zip(*series, strict=True), marker="o", label=op)
        if link.get("gbps") and scope != "intra-node":
            ax.axhline(link["gbps"] / 8, color="grey", linestyle="--", label="link rate")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("message size (bytes)")
        ax.set_ylabel("busbw (GB/s)")
        ax.set_title(f"{scope}, {mine[0]['group_size']} ranks ({result['backend']})")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)
def hydra_main(dict_cfg: DictConfig) -> None:
    console = Console()
    try:
        cfg = OmegaConf.to_object(dict_cfg)
        code = run_benchmark(cfg, console)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if code:
        sys.exit(code)


def main() -> None:
    from launch.__main__ import precheck

    register_schema()
    try:
        precheck(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    hydra_main()


if __name__ == "__main__":
    main()
