"""The collective benchmark job (``python -m launch.comm``): started like a training run.

The same config tree and launch pipeline as ``python -m launch`` (cluster=local, emulated or
multinode; launcher=torchrun, deepspeed or slurm), with ``python -m train.bench.comm_rank`` as the
ranks. One run at cluster.nodes x cluster.nproc_per_node (sweeps do not apply); the
comm.* keys set the ops and the size sweep. Writes RUN_DIR/comm.json (every point),
comm.jsonl (progress) and comm.png, and prints busbw per size and op, nccl-tests style.

    python -m launch.comm cluster.nproc_per_node=2 comm.max_bytes=16777216
    python -m launch.comm cluster=emulated cluster.nodes=2 cluster.link_gbps=0.2 \\
        comm.ops=[all_reduce]
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from launch.command_help import help_page
from launch.conf_tree import group_choices
from launch.errors import ConfigError
from launch.pipeline import Job
from launch.plan import RunPlan
from launch.terminal import heading, plain_console
from train.spec.bus import COLLECTIVES, message_sizes, scope_labels
from train.spec.config import CommConfig, ParallelConfig, RunConfig

# A size's few timed calls are bounded by seconds_per_size; these bound the counts and sizes
# a typo could make hang (a 1 TiB message, a million warm-up calls).
MAX_BYTES = 16 * 2**30
MAX_WARMUP_ITERS = 1000
MAX_ITERS = 100_000


def validate_comm(cfg: RunConfig) -> None:
    c = cfg.comm
    unknown = [op for op in c.ops if op not in COLLECTIVES]
    if unknown or not c.ops:
        raise ConfigError("comm.ops", f"{unknown or c.ops}: choose from {', '.join(COLLECTIVES)}")
    if c.min_bytes < 4:
        raise ConfigError("comm.min_bytes", f"{c.min_bytes}: must be >= 4 (one fp32 element)")
    if c.max_bytes < c.min_bytes:
        raise ConfigError("comm.max_bytes", f"{c.max_bytes}: must be >= comm.min_bytes")
    for key in ("seconds_per_op", "seconds_per_size"):
        if not (math.isfinite(getattr(c, key)) and getattr(c, key) > 0):  # NaN passed `<= 0`
            raise ConfigError(f"comm.{key}", f"{getattr(c, key)}: must be a finite number > 0")
    if c.max_bytes > MAX_BYTES:
        raise ConfigError("comm.max_bytes", f"{c.max_bytes}: at most {MAX_BYTES} (16 GiB)")
    if not 1 <= c.max_iters <= MAX_ITERS:
        raise ConfigError("comm.max_iters", f"{c.max_iters}: must be 1..{MAX_ITERS}")
    if not 0 <= c.warmup_iters <= MAX_WARMUP_ITERS:
        raise ConfigError("comm.warmup_iters", f"{c.warmup_iters}: must be 0..{MAX_WARMUP_ITERS}")


def comm_keys() -> list[tuple[str, str]]:
    """The comm.* keys and what validate_comm lets each take (launch.comm's and
    launch.project's --help)."""
    d = CommConfig()
    return [
        ("comm.ops=[OP,...]", f"collectives, from: {', '.join(COLLECTIVES)} (default: all)"),
        (f"comm.min_bytes={d.min_bytes}", "the first message size, >= 4; sizes double from it"),
        (f"comm.max_bytes={d.max_bytes}", f"the last, >= comm.min_bytes, <= {MAX_BYTES} (16 GiB)"),
    ]


def comm_help() -> str:
    """--help of python -m launch.comm."""
    d = CommConfig()
    keys = [
        *comm_keys(),
        (f"comm.seconds_per_op={d.seconds_per_op:g}", "> 0: budget per op and group; larger "
         "sizes are skipped once spent"),
        (f"comm.seconds_per_size={d.seconds_per_size:g}", "> 0: a size's timed calls stop "
         "after about this long, or at comm.max_iters calls"),
        (f"comm.max_iters={d.max_iters}", f"1..{MAX_ITERS}: the most timed calls per size"),
        (f"comm.warmup_iters={d.warmup_iters}", f"untimed calls first, 0..{MAX_WARMUP_ITERS}"),
        ("cluster=" + "|".join(group_choices("cluster")), "where the ranks run: "
         "cluster.nodes=N x cluster.nproc_per_node=N ranks, one run (no sweep)"),
        ("launcher=" + "|".join(group_choices("launcher")), "what starts them"),
        ("dry_run=true", "print each node's command and start nothing"),
        ("run_dir=DIR", "where comm.json (every point), comm.jsonl and comm.png go"),
    ]  # fmt: skip
    summary = (
        "python -m launch.comm [KEY=VALUE ...]: the collective benchmark, nccl-tests style, "
        "started like a training run (same cluster and launcher choices) with python -m "
        "train.bench.comm_rank as the ranks. Per group scope (intra-node, inter-node, world) "
        "and op it times each message size and prints busbw per size and op."
    )
    examples = [
        "python -m launch.comm cluster.nproc_per_node=2 comm.max_bytes=16777216",
        "python -m launch.comm cluster=emulated cluster.nodes=2 cluster.link_gbps=0.2 "
        "comm.ops=[all_reduce]",
    ]
    return help_page(summary, keys, examples)


def one_run_one_batch(cfg: RunConfig) -> None:
    """The benchmark is one run at cluster.nodes x cluster.nproc_per_node (no sweep).

    It trains nothing: a batch of one micro batch per rank keeps the training checks (batch
    divisibility) from refusing a world size that is fine for collectives, and no layout is
    chosen (ddp: parallel=auto would fit the model= a shared command line names, which the
    ranks never build, into memory).
    """
    cfg.sweep.name = "none"
    cfg.train.global_batch = cfg.train.micro_batch * cfg.cluster.nodes * cfg.cluster.nproc_per_node
    cfg.parallel = ParallelConfig()


def points(cfg: RunConfig) -> int:
    """The points the ranks time: every scope x op x size (fewer where an op's
    comm.seconds_per_op runs out before its largest sizes)."""
    c, scopes = cfg.comm, scope_labels(cfg.cluster.nodes, cfg.cluster.nproc_per_node)
    return len(scopes) * len(c.ops) * len(message_sizes(c.min_bytes, c.max_bytes))


def announce(cfg: RunConfig, console: Console) -> None:
    """What the benchmark times, before it starts (the bar then counts its points)."""
    c, sizes = cfg.comm, message_sizes(cfg.comm.min_bytes, cfg.comm.max_bytes)
    scopes = scope_labels(cfg.cluster.nodes, cfg.cluster.nproc_per_node)
    console.print(
        f"timing {', '.join(c.ops)} at {len(sizes)} sizes ({human_bytes(sizes[0])} to "
        f"{human_bytes(sizes[-1])}, doubling) in {' and '.join(scopes)} groups, "
        f"{cfg.cluster.nodes} node(s) x {cfg.cluster.nproc_per_node} ranks: {points(cfg)} points",
        highlight=False,
    )


def point_status(record: dict | None) -> str:
    """The bar's text: the point just timed (comm.jsonl's last line)."""
    if record is None:
        return "starting the ranks"
    return (
        f"{record['scope']} {record['op']} {human_bytes(_row_key(record['bytes']))}: "
        f"busbw {record['busbw_gbytes_per_s']:.4f} GB/s"
    )


def show_result(cfg: RunConfig, plan: RunPlan, result: dict, console: Console) -> None:
    print_table(result, console)
    path = plot(result, plan.run_dir / "comm.png")
    console.print(f"results: {plan.run_dir / 'comm.json'}, {path}", soft_wrap=True)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.0f} {unit}"
        n /= 1024
    return str(n)


def print_table(result: dict, console: Console | None = None) -> None:
    """busbw (GB/s) per message size and op, one table per group scope."""
    console = console or plain_console()
    points = result["results"]
    for scope in dict.fromkeys(p["scope"] for p in points):
        mine = [p for p in points if p["scope"] == scope]
        ops = list(dict.fromkeys(p["op"] for p in mine))
        group_size = mine[0]["group_size"]
        # Above the table rather than as its title: a title wraps to a narrow table's width.
        console.print(heading(scope, f", {group_size} ranks, {result['backend']}: busbw GB/s"))
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
    # Imported here: matplotlib takes a second to import and only the plot needs it.
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


COMM = Job(
    driver_module="launch.comm",
    rank_module="train.bench.comm_rank",
    progress_file="comm.jsonl",
    result_file="comm.json",
    adjust=one_run_one_batch,
    validate=validate_comm,
    total_steps=points,
    on_result=show_result,
    help_text=comm_help,
    # It trains nothing: no layout, precision or global batch lines; its own sweep instead.
    trains=False,
    announce=announce,
    progress_status=point_status,
)
