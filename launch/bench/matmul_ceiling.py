"""``python -m launch.mamf``: the maximum achievable matmul TFLOP/s of this device, per precision.

A datasheet peak is never reached: the best matmul over a sweep of shapes is the ceiling a
training step can hope for (H100 SXM bf16 reaches about 80% of 989 TFLOP/s). Runs report
`mfu_vs_measured` against it, and the cpu profile takes its peak from it instead of a guess.
The result is cached per device (and per thread count on CPU) under
$SCALEPROBE_CACHE_DIR/mamf/ (default ~/.cache/scaleprobe).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

GPU_SIZES = [2048, 4096, 6144, 8192, 10240, 12288, 16384]
CPU_SIZES = [256, 512, 1024, 1536]
QUICK_SIZES = [128, 256]


def cache_dir() -> Path:
    return Path(os.environ.get("SCALEPROBE_CACHE_DIR", Path.home() / ".cache" / "scaleprobe"))


def cache_path(device_name: str, cpu_threads: int | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_").lower()
    suffix = f"_{cpu_threads}threads" if cpu_threads else ""
    return cache_dir() / "mamf" / f"{slug}{suffix}.json"


def load_measured(device_name: str, cpu_threads: int | None) -> dict | None:
    path = cache_path(device_name, cpu_threads)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("best_tflops"), dict):
        # A truncated or foreign file must not stop every run: ignore it, say where it is.
        print(f"warning: ignoring unreadable matmul cache {path}", file=sys.stderr)
        return None
    return record


def merge_measurements(previous: dict, new: dict) -> dict:
    """Per precision, the new figure unless it is a quick one and the cached one is not
    (a --quick run must not lower a full measurement: later MFU would read too high);
    precisions measured earlier and not now are kept."""
    merged = {**new, **{k: dict(previous.get(k) or {}) for k in ("best_tflops", "best_size")}}
    merged["quick"] = dict(previous.get("quick") or {})
    for precision, tflops in new["best_tflops"].items():
        had_full = precision in merged["best_tflops"] and not merged["quick"].get(precision)
        if new["quick"][precision] and had_full:
            continue
        merged["best_tflops"][precision] = tflops
        merged["best_size"][precision] = new["best_size"][precision]
        merged["quick"][precision] = new["quick"][precision]
    return merged


def _timer(device):
    import torch

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
    import torch

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
    import torch

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


# --- The host at the model's own shapes (the cpu profile's compute in launch/perfmodel/host.py):
# GEMMs and attention of a workload, elementwise kernels' latency and streaming bandwidth.
# Each figure is the median of HOST_REPEATS timed loops (the cores are shared: one loop can
# land on a busy moment), the spread kept beside it.
HOST_REPEATS = 5
# Elementwise c = a + b over these element counts: t(n) = latency + 12 n / bandwidth.
STREAM_ELEMENTS = [1, 1024, 16384, 131072, 1048576, 4194304]


def host_cache_path(device_name: str, cpu_threads: int) -> Path:
    return cache_path(device_name, cpu_threads).with_name(
        cache_path(device_name, cpu_threads).stem + "_host.json"
    )


def load_host(device_name: str, cpu_threads: int) -> dict | None:
    path = host_cache_path(device_name, cpu_threads)
    try:
        record = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        record = None
    if record is not None and not isinstance(record.get("memory"), dict):
        print(f"warning: ignoring unreadable host cache {path}", file=sys.stderr)
        return None
    return record


def _loop(fn, seconds: float) -> tuple:
    """A closure timing ``iters`` calls of ``fn`` (iters sized to ~``seconds``) per call."""
    fn()
    started = time.perf_counter()
    fn()
    once = max(time.perf_counter() - started, 1e-7)
    iters = max(1, min(2000, int(seconds / once)))

    def timed() -> float:
        started = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - started) / iters

    return timed


def _interleaved_medians(loops: dict, seconds: float = 0.03) -> tuple[dict, dict]:
    """Per key, the median of HOST_REPEATS timings taken in interleaved passes over every
    key (a burst of load from a neighbour then hits one sample of many keys, not every
    sample of one), and the spread (max / min - 1)."""
    timers = {key: _loop(fn, seconds) for key, fn in loops.items()}
    samples = {key: [] for key in loops}
    for _ in range(HOST_REPEATS):
        for key, timed in timers.items():
            samples[key].append(timed())
    medians, spread = {}, {}
    for key, times in samples.items():
        times.sort()
        medians[key], spread[key] = times[len(times) // 2], times[-1] / times[0] - 1
    return medians, spread


def measure_host(
    gemms: list[tuple[int, int, int]],
    attention: list[tuple[int, int, int, int]],
    *,
    cpu_threads: int = 1,
) -> dict:
    """fp32 seconds of each GEMM (M, K, N) and of each SDPA forward + backward (batch, heads,
    seq, head_dim; causal, as train/model/transformer.py), and the elementwise latency and bandwidth."""
    import torch

    torch.set_num_threads(cpu_threads)
    loops = {}
    for m, k, n in gemms:
        a, b = torch.randn(m, k), torch.randn(k, n)
        loops[f"{m}x{k}x{n}"] = lambda a=a, b=b: a @ b
    sdpa_keys = []
    for shape in attention:
        q, k, v = (torch.randn(*shape, requires_grad=True) for _ in range(3))
        grad = torch.randn(*shape)

        def fwd_bwd(q=q, k=k, v=v, grad=grad):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.backward(grad)

        key = "x".join(str(x) for x in shape)
        loops[key] = fwd_bwd
        sdpa_keys.append(key)
    for n in STREAM_ELEMENTS:
        a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
        loops[f"add_{n}"] = lambda a=a, b=b, c=c: torch.add(a, b, out=c)
    medians, spread = _interleaved_medians(loops)
    points = [(12 * n, medians[f"add_{n}"]) for n in STREAM_ELEMENTS]
    latency, bandwidth = _fit_alpha_beta(points)
    return {
        "gemm_s": {f"{m}x{k}x{n}": medians[f"{m}x{k}x{n}"] for m, k, n in gemms},
        "sdpa_s": {key: medians[key] for key in sdpa_keys},
        "memory": {
            "kernel_latency_s": latency,
            "gbytes_per_s": bandwidth / 1e9,
            "points": [{"bytes": b, "time_s": t} for b, t in points],
        },
        "relative_spread": spread,
    }


def _fit_alpha_beta(points: list[tuple[int, float]]) -> tuple[float, float]:
    """t = alpha + bytes / beta by least squares on relative error (small and large sizes
    weigh alike); alpha floored at 0."""
    sw = sx = sy = sxx = sxy = 0.0
    for x, t in points:
        w = 1 / (t * t)
        sw, sx, sy, sxx, sxy = sw + w, sx + w * x, sy + w * t, sxx + w * x * x, sxy + w * x * t
    slope = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
    alpha = max(0.0, (sy - slope * sx) / sw)
    return alpha, 1 / slope


def ensure_host(model, micro_batch: int, seq_len: int, tps: list[int], cpu_threads: int = 1):
    """The host record with every shape of ``model`` at (micro_batch, seq_len) for each TP
    degree in ``tps``: measured and cached now for the shapes it lacks (a few seconds)."""
    import torch

    from launch.perfmodel import host
    from train.runtime.distributed import cpu_model_name

    torch.set_num_threads(cpu_threads)
    device_name = cpu_model_name()
    record = load_host(device_name, cpu_threads) or {"gemm_s": {}, "sdpa_s": {}}
    tokens = micro_batch * seq_len
    gemms = sorted({g for t in tps for g in host.step_gemms(model, tokens, t)})
    attention = sorted({host.attention_shape(model, micro_batch, seq_len, t) for t in tps})
    gemms = [g for g in gemms if host.gemm_key(*g) not in record["gemm_s"]]
    attention = [a for a in attention if host.sdpa_key(*a) not in record["sdpa_s"]]
    if not gemms and not attention and "memory" in record:
        return record
    new = measure_host(gemms, attention, cpu_threads=cpu_threads)
    record["gemm_s"].update(new["gemm_s"])
    record["sdpa_s"].update(new["sdpa_s"])
    record["relative_spread"] = {**record.get("relative_spread", {}), **new["relative_spread"]}
    record["memory"] = new["memory"]
    record.update(
        device_name=device_name,
        cpu_threads=cpu_threads,
        torch_version=torch.__version__,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    path = host_cache_path(device_name, cpu_threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def default_precisions(device) -> list[str]:
    import torch

    if device.type != "cuda":
        return ["fp32", "bf16"]
    precisions = ["tf32", "bf16", "fp16"]
    if torch.cuda.get_device_capability(device) >= (8, 9):
        precisions.append("fp8")
    return precisions


def main(argv: list[str] | None = None) -> int:
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
        "--host-shapes",
        type=Path,
        metavar="CONFIG_YAML",
        help="CPU: measure the GEMM / attention shapes of a run's config.yaml (tp 1 and its "
        "own), elementwise latency and bandwidth, for the performance model; cached",
    )
    args = parser.parse_args(argv)
    if args.host_shapes:
        from train.spec.config import load_run_config

        cfg = load_run_config(args.host_shapes)
        tps = sorted({1, 2, max(1, cfg.parallel.tp)})
        record = ensure_host(
            cfg.model, cfg.train.micro_batch, cfg.train.seq_len, tps, args.cpu_threads
        )
        print(json.dumps({k: record[k] for k in ("gemm_s", "sdpa_s", "memory")}, indent=2))
        print(f"saved {host_cache_path(record['device_name'], args.cpu_threads)}")
        return 0

    import torch

    from train.runtime.distributed import cpu_model_name

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda" if on_gpu else "cpu")
    if not on_gpu:
        torch.set_num_threads(args.cpu_threads)
    device_name = torch.cuda.get_device_name() if on_gpu else cpu_model_name()
    precisions = args.precisions.split(",") if args.precisions else default_precisions(device)
    unknown = set(precisions) - {"fp32", "tf32", "bf16", "fp16", "fp8"}
    if unknown:
        print(
            f"error: --precisions: unknown {sorted(unknown)}; choose from fp32, tf32, bf16, "
            "fp16, fp8",
            file=sys.stderr,
        )
        return 2
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    else:
        sizes = QUICK_SIZES if args.quick else GPU_SIZES if on_gpu else CPU_SIZES

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
    path = cache_path(device_name, record["cpu_threads"])
    previous = load_measured(device_name, record["cpu_threads"])
    if previous:
        record = merge_measurements(previous, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")

    table = Table(title=f"Achievable matmul TFLOP/s: {device_name}")
    for column in ("precision", "best TFLOP/s", "at size"):
        table.add_column(column, justify="right")
    for precision, result in results.items():
        table.add_row(precision, f"{result['tflops']:.3f}", str(result["size"]))
    console.print(table)
    console.print(f"saved {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
