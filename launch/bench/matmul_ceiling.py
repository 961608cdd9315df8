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
import math
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from launch.bench.cache import (
    cache_dir,
    cache_path,
    ceiling_problem,
    host_cache_path,
    load_measured,
    save,
)
from launch.bench.host_kernels import ensure_host
from launch.errors import ConfigError, OneLineArgumentParser
from launch.perfmodel.calibrate import load_config_file
from launch.perfmodel.host import HostWorkload, pipeline_rows
from launch.terminal import plain_console
from train.files.safe_files import unwritable_reason
from train.spec.degrees import plan_layout
from train.spec.devices import FP8_CAPABILITY, cpu_model_name

GPU_SIZES = [2048, 4096, 6144, 8192, 10240, 12288, 16384]
CPU_SIZES = [256, 512, 1024, 1536]
QUICK_SIZES = [128, 256]
PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "fp8")
# --sizes bounds. Below 64 a call's overhead is timed, not the matmul (a ceiling far too low
# makes every MFU read too high); above 32768 three fp32 matrices outgrow a GPU's memory
# (200000 asked for 160 GB each), and on a CPU above 4096 one call takes minutes.
MIN_SIZE, MAX_SIZE, MAX_CPU_SIZE = 64, 32768, 4096
# torch._scaled_mm's fp8 operands: each dimension a multiple of 16.
FP8_SIZE_MULTIPLE = 16


def merge_measurements(previous: dict, new: dict, *, replace: bool = False) -> dict:
    """Per precision, the higher of the cached and the new figure: a ceiling is the best the
    device reached, and a lower one (a --quick run's small sizes, a full run on a loaded
    machine) would make every later MFU read too high. A quick figure never replaces a full
    one. ``replace`` (--replace: the cached figures are stale, e.g. another driver or
    clock) takes the new figures whatever they are. Precisions not measured now are kept,
    with the sizes they were measured at."""
    per_precision = ("best_tflops", "best_size", "sizes", "quick")
    merged = {**new, **{k: _by_precision(previous, k) for k in per_precision}}
    for precision, tflops in new["best_tflops"].items():
        cached = merged["best_tflops"].get(precision)
        had_full = cached is not None and not merged["quick"].get(precision)
        if not replace and had_full and (new["quick"][precision] or tflops < cached):
            continue
        for key in per_precision:
            taken = _by_precision(new, key)
            if precision in taken:
                merged[key][precision] = taken[precision]
            else:  # the new record lacks it (no sizes): the old figure's would not describe it
                merged[key].pop(precision, None)
    return merged


def _by_precision(record: dict, key: str) -> dict:
    """``record[key]`` per precision. Records before sizes were kept per precision hold one
    list of sizes for all of them: each precision then has that list."""
    value = record.get(key)
    if isinstance(value, list):
        return dict.fromkeys(record.get("best_tflops") or {}, value)
    return dict(value or {})


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
        if best["size"] is not None and time.perf_counter() > deadline:
            break  # the budget is spent, but never before one size is measured
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
    if device.type != "cuda":
        return ["fp32", "bf16"]
    precisions = ["tf32", "bf16", "fp16"]
    if fp8_refusal(device) is None:
        precisions.append("fp8")
    return precisions


def fp8_refusal(device) -> str | None:
    """Why ``device`` cannot run fp8 matmuls (torch._scaled_mm), or None: on a CPU or a GPU
    without fp8 tensor cores it measured an emulation (5e-5 TFLOP/s), not a ceiling."""
    import torch  # only when measuring: importing this module stays torch-free

    needs = "fp8 matmuls need a CUDA GPU of compute capability >= {}.{}".format(*FP8_CAPABILITY)
    if device.type != "cuda":
        return f"{needs}; this is a {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_CAPABILITY:
        return f"{needs}; this one has {capability[0]}.{capability[1]}"
    return None


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma list of whole numbers") from None
    bad = [n for n in sizes if not MIN_SIZE <= n <= MAX_SIZE]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]}: each size must be {MIN_SIZE}..{MAX_SIZE}")
    return sizes


def _positive(kind: type):
    """An argparse type: a finite ``kind`` (int or float) above 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            whole = "whole " if kind is int else ""
            raise argparse.ArgumentTypeError(f"{text!r}: not a {whole}number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text}: must be a finite number > 0")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text}: must be > 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _precisions(text: str) -> list[str]:
    precisions = text.split(",")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(PRECISIONS)}")
    return precisions


def _config_file(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected RUN_DIR/config.yaml")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return path


def _out_file(text: str) -> Path:
    """Refused before the measurement, not after it (a file where its folder would go)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; expected a JSON file's path")
    unwritable = unwritable_reason(path.parent)
    if unwritable:
        raise argparse.ArgumentTypeError(f"{text}: {unwritable}")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m launch.mamf",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--precisions",
        type=_precisions,
        help="comma list of fp32, tf32, bf16, fp16, fp8 (default: fp32,bf16 on CPU; "
        "tf32,bf16,fp16[,fp8] on GPU; fp8 needs a GPU of compute capability >= 8.9)",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        help=f"comma list of square matmul sizes to try, each {MIN_SIZE}..{MAX_SIZE} "
        f"(..{MAX_CPU_SIZE} on CPU)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a second or two")
    parser.add_argument(
        "--seconds", type=_positive(float), default=20.0, help="budget per precision, > 0"
    )
    parser.add_argument(
        "--cpu-threads",
        type=_positive(int),
        default=1,
        help="threads on CPU, >= 1 (one core per rank by default, as runs use)",
    )
    parser.add_argument("--out", type=_out_file, help="also write the JSON here")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="the cached ceiling is stale: store this measurement even where it is lower",
    )
    parser.add_argument(
        "--host-shapes",
        type=_config_file,
        metavar="CONFIG_YAML",
        help="CPU: measure the GEMM / attention shapes of a run's config.yaml (tp 1 and its "
        "own), elementwise latency and bandwidth, for the performance model; cached",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
        # Both paths save into the cache: a folder that cannot be made there is refused
        # before any measuring (it was an error after minutes of it).
        unwritable = unwritable_reason(cache_dir() / "mamf")
        if unwritable:
            parser.error(f"SCALEPROBE_CACHE_DIR: {unwritable}")
        if args.host_shapes:
            return _host_shapes(args.host_shapes, args.cpu_threads)
        return _measure_ceiling(parser, args)
    except SystemExit as exc:  # parser.error (one line, 2) or --help (0): main's return code
        return exc.code if isinstance(exc.code, int) else 1


def _measure_ceiling(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """The ceiling per precision, measured, checked (cache.py's ceiling_problem) and saved."""
    import torch  # here, not at the top: --host-shapes and importers need no torch

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if not on_gpu:
        torch.set_num_threads(args.cpu_threads)
    precisions = args.precisions or default_precisions(device)
    sizes = args.sizes or (QUICK_SIZES if args.quick else GPU_SIZES if on_gpu else CPU_SIZES)
    _check_for_device(parser, device, precisions, sizes)
    device_name = torch.cuda.get_device_name() if on_gpu else cpu_model_name()
    console = plain_console()
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
        "sizes": {p: sizes for p in results},
        "best_tflops": {p: r["tflops"] for p, r in results.items()},
        "best_size": {p: r["size"] for p, r in results.items()},
        # Small sizes only: a lower ceiling than a full sweep, so it never replaces one.
        "quick": {p: bool(args.quick or args.sizes) for p in results},
    }
    console.print(_ceiling_table(device_name, results))
    # A figure no device reaches (0 from a timer's glitch, an absurd one) would be every
    # later run's MFU denominator: the cache keeps what it held.
    problem = ceiling_problem(record)
    if problem:
        print(f"error: measured {problem}; nothing saved", file=sys.stderr)
        return 1
    path = _save_ceiling(record, args.out, replace=args.replace)
    console.print(f"saved {path}" + (f" and {args.out}" if args.out else ""))
    return 0


def _check_for_device(parser, device, precisions: list[str], sizes: list[int]) -> None:
    """What only the device decides, refused (parser.error: one line, exit 2) before any
    matmul: fp8 where it cannot run, sizes a CPU takes minutes for or fp8 cannot take."""
    if "fp8" in precisions:
        refusal = fp8_refusal(device)
        if refusal:
            parser.error(f"argument --precisions: {refusal}")
        odd = [n for n in sizes if n % FP8_SIZE_MULTIPLE]
        if odd:
            parser.error(f"argument --sizes: {odd[0]}: fp8 needs multiples of {FP8_SIZE_MULTIPLE}")
    if device.type == "cpu" and max(sizes) > MAX_CPU_SIZE:
        parser.error(f"argument --sizes: {max(sizes)}: at most {MAX_CPU_SIZE} on a CPU")


def _host_shapes(config: Path, cpu_threads: int) -> int:
    """--host-shapes: the kernel times at a run's shapes (TP 1, 2 and the run's own), cached."""
    try:
        cfg = load_config_file(config, "--host-shapes")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    nproc = cfg.cluster.nproc_per_node
    try:
        plan = plan_layout(cfg, cfg.cluster.nodes * nproc, nproc)
    except ConfigError as exc:
        print(f"error: --host-shapes {config}: {exc}", file=sys.stderr)
        return 2
    work = HostWorkload(
        model=cfg.model,
        micro_batch=cfg.train.micro_batch,
        seq_len=cfg.train.seq_len,
        tps=tuple(sorted({1, 2, plan.degrees.tp})),
        cpu_threads=cpu_threads,
        pipeline_rows=pipeline_rows(cfg, plan),
    )
    record = ensure_host(work)
    shown = ("gemm_s", "sdpa_s", "loss_s", "overhead_s", "memory")
    print(json.dumps({k: record[k] for k in shown}, indent=2))
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
