"""``python -m launch.mamf``: the maximum achievable matmul TFLOP/s of this device, per precision.

A datasheet peak is never reached: the best matmul over a sweep of shapes is the ceiling a
training step can hope for (H100 SXM bf16 reaches about 80% of 989 TFLOP/s). Runs report
`mfu_vs_measured` against it, and the cpu profile takes its peak from it instead of a guess.
The result is cached per device (and per thread count on CPU) under
$SCALEPROBE_CACHE_DIR/mamf/ (default ~/.cache/scaleprobe; launch/bench/cache.py).
``--host-shapes`` measures a run's own kernel shapes instead (launch/bench/host_kernels.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from launch.bench.cache import cache_path, host_cache_path, load_measured, save
from launch.bench.host_kernels import ensure_host
from launch.errors import ConfigError
from launch.perfmodel.host import HostWorkload
from train.spec.config import load_run_config
from train.spec.degrees import plan_layout
from train.spec.devices import cpu_model_name

GPU_SIZES = [2048, 4096, 6144, 8192, 10240, 12288, 16384]
CPU_SIZES = [256, 512, 1024, 1536]
QUICK_SIZES = [128, 256]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")


def merge_measurements(previous: dict, new: dict, *, replace: bool = False) -> dict:
    """Per precision, the higher of the cached and the new figure: a ceiling is the best the
    device reached, and a lower one (a --quick run's small sizes, a full run on a loaded
    machine) would make every later MFU read too high. A quick figure never replaces a full
    one. ``replace`` (--replace: the cached figures are stale, e.g. another driver or
    clock) takes the new figures whatever they are. Precisions not measured now are kept."""
    merged = {**new, **{k: dict(previous.get(k) or {}) for k in ("best_tflops", "best_size")}}
    merged["quick"] = dict(previous.get("quick") or {})
    for precision, tflops in new["best_tflops"].items():
        cached = merged["best_tflops"].get(precision)
        had_full = cached is not None and not merged["quick"].get(precision)
        if not replace and had_full and (new["quick"][precision] or tflops < cached):
            continue
        merged["best_tflops"][precision] = tflops
        merged["best_size"][precision] = new["best_size"][precision]
        merged["quick"][precision] = new["quick"][precision]
    return merged


def _timer(device):
    import torch  # only when measuring: importing this module stays torch-free

    if device.type == "cuda":

        def timed(fn, iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
    else:

        def timed(fn, iters):
            started = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - started) / iters

    return timed


def matmul_fn(precision: str, size: int, device):
    """A closure doing one size^3 matmul in the given precision."""
    import torch  # only when measuring: importing this module stays torch-free

    if precision == "fp8":
        a = torch.randn(size, size, device=device).to(torch.float8_e4m3fn)
        b = torch.randn(size, size, device=device).to(torch.float8_e4m3fn).t()  # column-major
        one = torch.tensor(1.0, device=device)
        return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    dtype = {
        "fp32": torch.float32,
        "tf32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
    }[precision]
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return lambda: a @ b


def measure(precision: str, sizes: list[int], device, seconds_per_precision: float) -> dict:
    """Best TFLOP/s over the sizes, each timed after a warm-up, within a time budget."""
    import torch  # only when measuring: importing this module stays torch-free

    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    timed = _timer(device)
    best = {"tflops": 0.0, "size": None}
    deadline = time.perf_counter() + seconds_per_precision
    for size in sizes:
        if time.perf_counter() > deadline:
            break
        fn = matmul_fn(precision, size, device)
        fn()  # warm-up: kernel selection and first-touch
        once = timed(fn, 1)
        iters = max(3, min(50, int(0.2 / max(once, 1e-6))))
        seconds = timed(fn, iters)
        tflops = 2 * size**3 / seconds / 1e12
        if tflops > best["tflops"]:
            best = {"tflops": tflops, "size": size}
    return best


def default_precisions(device) -> list[str]:
    import torch  # only when measuring: importing this module stays torch-free

    if device.type != "cuda":
        return ["fp32", "bf16"]
    precisions = ["tf32", "bf16", "fp16"]
    if torch.cuda.get_device_capability(device) >= (8, 9):
        precisions.append("fp8")
    return precisions


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launch.mamf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--precisions", help="comma list (default: fp32,bf16 on CPU; tf32,bf16,fp16[,fp8] on GPU)"
    )
    parser.add_argument("--sizes", help="comma list of square matmul sizes to try")
    parser.add_argument("--quick", action="store_true", help="small sizes, a second or two")
    parser.add_argument("--seconds", type=float, default=20.0, help="budget per precision")
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="threads on CPU (one core per rank by default, as runs use)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="the cached ceiling is stale: store this measurement even where it is lower",
    )
    parser.add_argument(
        "--host-shapes",
        type=Path,
        metavar="CONFIG_YAML",
        help="CPU: measure the GEMM / attention shapes of a run's config.yaml (tp 1 and its "
        "own), elementwise latency and bandwidth, for the performance model; cached",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.host_shapes:
        return _host_shapes(args.host_shapes, args.cpu_threads)
    import torch  # here, not at the top: --host-shapes and importers need no torch

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if not on_gpu:
        torch.set_num_threads(args.cpu_threads)
    precisions = args.precisions.split(",") if args.precisions else default_precisions(device)
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        print(
            f"error: --precisions: unknown {sorted(unknown)}; choose from {', '.join(PRECISIONS)}",
            file=sys.stderr,
        )
        return 2
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    else:
        sizes = QUICK_SIZES if args.quick else GPU_SIZES if on_gpu else CPU_SIZES
    device_name = torch.cuda.get_device_name() if on_gpu else cpu_model_name()
    console = Console()
    results = {}
    with console.status("measuring matmul throughput") as status:
        for precision in precisions:
            status.update(f"measuring {precision} matmuls on {device_name}")
            results[precision] = measure(precision, sizes, device, args.seconds)
    record = {
        "device_name": device_name,
        "cpu_threads": None if on_gpu else args.cpu_threads,
        "torch_version": torch.__version__,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sizes": sizes,
        "best_tflops": {p: r["tflops"] for p, r in results.items()},
        "best_size": {p: r["size"] for p, r in results.items()},
        # Small sizes only: a lower ceiling than a full sweep, so it never replaces one.
        "quick": {p: bool(args.quick or args.sizes) for p in results},
    }
    path = _save_ceiling(record, args.out, replace=args.replace)
    console.print(_ceiling_table(device_name, results))
    console.print(f"saved {path}")
    return 0


def _host_shapes(config: Path, cpu_threads: int) -> int:
    """--host-shapes: the kernel times at a run's shapes (TP 1, 2 and the run's own), cached."""
    cfg = load_run_config(config)
    nproc = cfg.cluster.nproc_per_node
    try:
        tp = plan_layout(cfg, cfg.cluster.nodes * nproc, nproc).degrees.tp
    except ConfigError as exc:
        print(f"error: --host-shapes {config}: {exc}", file=sys.stderr)
        return 2
    work = HostWorkload(
        model=cfg.model,
        micro_batch=cfg.train.micro_batch,
        seq_len=cfg.train.seq_len,
        tps=tuple(sorted({1, 2, tp})),
        cpu_threads=cpu_threads,
    )
    record = ensure_host(work)
    print(json.dumps({k: record[k] for k in ("gemm_s", "sdpa_s", "memory")}, indent=2))
    print(f"saved {host_cache_path(record['device_name'], cpu_threads)}")
    return 0


def _save_ceiling(record: dict, out: Path | None, *, replace: bool = False) -> Path:
    """The cache (merged with what it held) and ``out``; returns the cache's path."""
    path = cache_path(record["device_name"], record["cpu_threads"])
    previous = load_measured(record["device_name"], record["cpu_threads"])
    if previous:
        record = merge_measurements(previous, record, replace=replace)
    save(path, record)
    if out:
        save(out, record)
    return path


def _ceiling_table(device_name: str, results: dict) -> Table:
    table = Table(title=f"Achievable matmul TFLOP/s: {device_name}")
    for column in ("precision", "best TFLOP/s", "at size"):
        table.add_column(column, justify="right")
    for precision, result in results.items():
        table.add_row(precision, f"{result['tflops']:.3f}", str(result["size"]))
    return table


if __name__ == "__main__":
    raise SystemExit(main())
