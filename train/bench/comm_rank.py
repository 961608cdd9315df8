"""One rank of the collective benchmark:
``python -m train.bench.comm_rank --config RUN_DIR/config.yaml``.

Times all_reduce, all_gather, reduce_scatter, all_to_all and broadcast over doubling message
sizes, in the groups that matter on a cluster: all ranks, the ranks of one node (NVLink on a
GPU node, loopback on an emulated one) and the ranks across nodes (the NIC). Bandwidths
follow nccl-tests (PERFORMANCE.md): algbw = bytes / time, busbw = algbw x a per-op factor
(BUS_FACTORS), with `bytes` the full buffer (for all_gather the gathered output, for
reduce_scatter the input). Rank 0 appends each point to comm.jsonl and writes comm.json.
`python -m launch.comm` starts the ranks and draws the table and plot.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from train.files.heartbeat import Heartbeat, beat_interval_s, stall_timeout_s
from train.files.safe_files import append_line, write_atomic
from train.measure.cluster_record import cluster_record
from train.runtime import distributed
from train.runtime.rank_exit import run_or_exit
from train.spec.bus import COLLECTIVES, bus_factor, message_sizes, scope_labels
from train.spec.config import RunConfig, load_run_config

ELEMENT = torch.float32
ELEMENT_BYTES = 4

OPS = COLLECTIVES


def collective(
    op: str, nbytes: int, group, group_ranks: list[int], device: torch.device
) -> tuple[Callable[[], None], int]:
    """A closure running `op` once on buffers of about nbytes, and the bytes it counts."""
    n = len(group_ranks)
    # Every rank's share must be whole elements: round the buffer down to n elements' multiple.
    elements = max(n, nbytes // ELEMENT_BYTES // n * n)
    full = torch.ones(elements, dtype=ELEMENT, device=device)
    share = torch.ones(elements // n, dtype=ELEMENT, device=device)
    out = torch.empty_like(full)
    # nccl-tests' size: the full buffer (all_gather's output, reduce_scatter's input).
    counted = full.numel() * ELEMENT_BYTES
    # torch 2.13 renamed all_gather_into_tensor and reduce_scatter_tensor (the old names now
    # warn on every call, inside the timed loop); the old names before 2.13.
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    runs = {
        "all_reduce": lambda: dist.all_reduce(full, group=group),
        "all_gather": lambda: all_gather(full, share, group=group),
        "reduce_scatter": lambda: reduce_scatter(share, full, group=group),
        "all_to_all": lambda: dist.all_to_all_single(out, full, group=group),
        "broadcast": lambda: dist.broadcast(full, src=group_ranks[0], group=group),
    }
    if op in runs:
        return runs[op], counted
    raise ValueError(f"unknown collective {op!r}")


def timed(fn: Callable[[], None], iters: int, group, device: torch.device) -> float:
    """Seconds per call on this rank: CUDA events on a GPU, the wall clock on a CPU."""
    dist.barrier(group=group)  # start together, or the first call also times the stragglers
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    started = time.perf_counter()
    for _ in range(iters):
        fn()  # gloo collectives return when this rank's part is done
    return (time.perf_counter() - started) / iters


def world_max(value: float, device: torch.device) -> float:
    """The largest value over all ranks: every rank then takes the same decision."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def scopes(rank: distributed.RankInfo) -> list[tuple[str, list[list[int]]]]:
    """Groups to measure: (label, the rank lists of its groups), same on every rank.

    Ranks are placed node by node (rank = node * nproc_per_node + local rank), so a node's
    group is a contiguous block and a cross-node group takes the same local rank of each node.
    """
    world, per_node = rank.world_size, rank.local_world_size
    nodes = world // per_node
    groups = {
        "world": [list(range(world))],
        "intra-node": [list(range(n * per_node, (n + 1) * per_node)) for n in range(nodes)],
        "inter-node": [list(range(local, world, per_node)) for local in range(per_node)],
    }
    # Which of them, from the spec the driver counts the benchmark's points with.
    return [(label, groups[label]) for label in scope_labels(nodes, per_node)]


def run(config_path: str | Path) -> None:
    config_path = Path(config_path)
    cfg = load_run_config(config_path)
    run_dir = config_path.parent
    rank = distributed.init_distributed(
        cfg.fabric.nccl_env, timeout_s=cfg.cluster.collective_timeout_s
    )
    if not dist.is_initialized():
        raise SystemExit(
            "python -m train.bench.comm_rank needs torchrun (or another launcher): RANK unset"
        )
    interval = beat_interval_s(stall_timeout_s(cfg.cluster))
    try:
        # The driver's watchdog reads it (launch/launchers/watchdog.py); a point is a step.
        with Heartbeat(run_dir, rank.rank, interval) as heartbeat:
            benchmark(cfg, run_dir, rank, heartbeat.at)
            dist.barrier()
    finally:
        distributed.shutdown()


def benchmark(
    cfg: RunConfig,
    run_dir: Path,
    rank: distributed.RankInfo,
    on_point: Callable[[int], None] = lambda step: None,
) -> None:
    c = cfg.comm
    sizes = message_sizes(c.min_bytes, c.max_bytes)
    progress = run_dir / "comm.jsonl"
    if rank.is_main:  # absent until the first point
        progress.unlink(missing_ok=True)
    groups = []
    for label, rank_lists in scopes(rank):
        # new_group is collective over the world: every rank creates every group, in order.
        made = [(ranks, dist.new_group(ranks)) for ranks in rank_lists]
        mine = next((ranks, g) for ranks, g in made if rank.rank in ranks)
        groups.append((label, *mine))

    results, step = [], 0
    for label, group_ranks, group in groups:
        n = len(group_ranks)
        for op in c.ops:
            op_started, last_time = time.perf_counter(), 0.0
            for nbytes in sizes:
                # Stop before a size whose few calls (about twice the last size's) would run
                # past the op's budget: the sweep stays bounded in time at any link rate.
                spent = world_max(time.perf_counter() - op_started, rank.device)
                projected = 2 * last_time * (c.warmup_iters + 2)
                if last_time and spent + projected > c.seconds_per_op:
                    break
                fn, counted = collective(op, nbytes, group, group_ranks, rank.device)
                for _ in range(c.warmup_iters):
                    fn()
                once = world_max(timed(fn, 1, group, rank.device), rank.device)
                iters = int(min(c.max_iters, max(1, c.seconds_per_size // max(once, 1e-9))))
                # The slowest rank's time: a collective is done when its last rank is.
                seconds = world_max(timed(fn, iters, group, rank.device), rank.device)
                last_time = seconds
                algbw = counted / seconds / 1e9
                point = {
                    "scope": label,
                    "op": op,
                    "group_size": n,
                    "bytes": counted,
                    "iters": iters,
                    "time_s": seconds,
                    "algbw_gbytes_per_s": algbw,
                    "bus_factor": bus_factor(op, n),
                    "busbw_gbytes_per_s": algbw * bus_factor(op, n),
                }
                results.append(point)
                step += 1
                on_point(step)
                if rank.is_main:
                    append_line(progress, json.dumps({"step": step, **point}))
    if rank.is_main:
        report = {
            "world_size": rank.world_size,
            "nodes": rank.nodes,
            "nproc_per_node": rank.local_world_size,
            "backend": rank.backend,
            "device_name": distributed.device_name(rank.device),
            "timing": "cuda events" if rank.device.type == "cuda" else "wall clock",
            "torch_version": torch.__version__,
            **cluster_record(cfg, rank.device),
            "results": results,
        }
        write_atomic(run_dir / "comm.json", json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m train.bench.comm_rank", description=__doc__)
    parser.add_argument("--config", required=True, help="resolved config.yaml from the driver")
    config = parser.parse_args().config
    run_or_exit(lambda: run(config))


if __name__ == "__main__":
    main()
