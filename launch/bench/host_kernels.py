"""The host at a workload's own shapes (the cpu profile's compute in launch/perfmodel/host.py):
GEMMs and attention of the workload, elementwise kernels' latency and streaming bandwidth,
measured here and cached (launch/bench/cache.py) for the performance model to read.

Measured by ``python -m launch.mamf --host-shapes CONFIG_YAML`` and, before a sweep's report,
by the training job for the runs that ran on this host (``cache_run_kernels``): the report
itself only reads the cache. GEMMs and attention: the median of single calls timed in
round-robin passes over all of them, as a step runs them; elementwise kernels: the median of
HOST_REPEATS timed loops, in interleaved passes (the cores are shared: one loop can land on
a busy moment). The spread is kept beside each.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from launch.bench.cache import host_cache_path, load_host, save
from launch.perfmodel.host import (
    HostWorkload,
    fixed_cost_points,
    gemm_key,
    host_workload,
    loss_key,
    narrow_model,
    overhead_key,
    sdpa_key,
)
from train.spec.config import ModelConfig, load_run_config
from train.spec.devices import cpu_model_name

HOST_REPEATS = 5
ROUND_ROBIN_PASSES = 50  # GEMMs and attention: passes of one call each (_round_robin_medians)
# Elementwise c = a + b over these element counts: t(n) = latency + 12 n / bandwidth.
STREAM_ELEMENTS = [1, 1024, 16384, 131072, 1048576, 4194304]


def _loop(fn: Callable[[], Any], seconds: float) -> Callable[[], float]:
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


def _round_robin_medians(calls: dict, seconds: float = 1.0) -> tuple[dict, dict]:
    """Per key, the median time of one call, each call timed alone in passes over every key:
    as a step runs its GEMMs and attention, each after the others, its operands not left in
    cache by a loop of its own (on the AMX Xeon of docs/performance-model.md the tiny model's
    GEMMs took 19.6 ms a micro-step timed this way, 17.1 in loops of their own, 18.2 in the
    step's order, about 20 in a profiled step). As many passes as fit ``seconds``, at least
    HOST_REPEATS and at most ROUND_ROBIN_PASSES; the spread is max / min - 1."""
    for fn in calls.values():
        fn()  # warm: first-call allocations and kernel selection
    started = time.perf_counter()
    for fn in calls.values():
        fn()
    one_pass = max(time.perf_counter() - started, 1e-7)
    passes = max(HOST_REPEATS, min(ROUND_ROBIN_PASSES, int(seconds / one_pass)))
    samples = {key: [] for key in calls}
    for _ in range(passes):
        for key, fn in calls.items():
            started = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - started)
    medians, spread = {}, {}
    for key, times in samples.items():
        times.sort()
        medians[key], spread[key] = times[len(times) // 2], times[-1] / times[0] - 1
    return medians, spread


def measure_host(
    gemms: list[tuple[int, int, int, str]],
    attention: list[tuple[int, int, int, int]],
    *,
    losses: list[tuple[int, int]] = (),
    models: list[ModelConfig] = (),
    cpu_threads: int = 1,
) -> dict:
    """fp32 seconds of each GEMM (M, K, N, layout), of each SDPA forward + backward (batch,
    heads, seq, head_dim; causal, as train/model/transformer.py), of each loss forward +
    backward (tokens, vocab: the runtime's cross_entropy_loss), of each model's forward +
    backward at one token (its fixed cost: host.overhead_key), and the elementwise latency
    and bandwidth."""
    import torch  # only when measuring: the driver imports this module before every report

    torch.set_num_threads(cpu_threads)
    calls = {}  # GEMMs and attention: timed call by call (_round_robin_medians)
    for m, k, n, layout in gemms:
        # The layout torch's Linear runs it in (host.GEMM_LAYOUTS): a transposed view is
        # another BLAS kernel than a contiguous operand.
        a = torch.randn(k, m).t() if layout == "tn" else torch.randn(m, k)
        b = torch.randn(n, k).t() if layout == "nt" else torch.randn(k, n)
        calls[gemm_key(m, k, n, layout)] = lambda a=a, b=b: a @ b
    for shape in attention:
        q, k, v = (torch.randn(*shape, requires_grad=True) for _ in range(3))
        grad = torch.randn(*shape)

        def fwd_bwd(q=q, k=k, v=v, grad=grad):
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.backward(grad)

        calls[sdpa_key(*shape)] = fwd_bwd
    for tokens, vocab in losses:
        logits = torch.randn(tokens, vocab, requires_grad=True)
        targets = torch.randint(0, vocab, (tokens,))

        def loss_fwd_bwd(logits=logits, targets=targets):
            # train/model/transformer.py cross_entropy_loss on fp32 logits: this call (its
            # .float() is a no-op, its flatten a view).
            torch.nn.functional.cross_entropy(logits, targets).backward()
            logits.grad = None

        calls[loss_key(tokens, vocab)] = loss_fwd_bwd
    medians, spread = _round_robin_medians(calls) if calls else ({}, {})
    fixed = [_fixed_cost(m, cpu_threads) for m in models]
    loops = {}  # elementwise: loops of their own, sizes fitted (t = latency + bytes / rate)
    for n in STREAM_ELEMENTS:
        a, b, c = torch.randn(n), torch.randn(n), torch.empty(n)
        loops[f"add_{n}"] = lambda a=a, b=b, c=c: torch.add(a, b, out=c)
    elementwise, elementwise_spread = _interleaved_medians(loops)
    medians, spread = {**medians, **elementwise}, {**spread, **elementwise_spread}
    points = [(12 * n, medians[f"add_{n}"]) for n in STREAM_ELEMENTS]
    latency, bandwidth = fit_alpha_beta(points)
    return {
        "gemm_s": {gemm_key(*g): medians[gemm_key(*g)] for g in gemms},
        "sdpa_s": {sdpa_key(*a): medians[sdpa_key(*a)] for a in attention},
        "loss_s": {loss_key(*shape): medians[loss_key(*shape)] for shape in losses},
        "overhead_s": {overhead_key(m): parts for m, parts in zip(models, fixed, strict=True)},
        "memory": {
            "kernel_latency_s": latency,
            "gbytes_per_s": bandwidth / 1e9,
            "points": [{"bytes": b, "time_s": t} for b, t in points],
        },
        "relative_spread": spread,
    }


def _fixed_cost(m: ModelConfig, cpu_threads: int) -> dict:
    """``m``'s fixed cost per micro-step (host.narrow_model): its narrow copy's one-token
    forward + backward at two block counts, as a root part and a part per block."""
    low, high = fixed_cost_points(m)
    t_low, t_high = _one_token_times([narrow_model(m, low), narrow_model(m, high)], cpu_threads)
    per_block = max(0.0, (t_high - t_low) / (high - low))
    return {"per_block_s": per_block, "root_s": max(0.0, t_high - per_block * high)}


def _one_token_times(models: list[ModelConfig], cpu_threads: int) -> list[float]:
    """train/measure/fixed_cost.py in a child process (it imports the model, which the driver
    does not): each model's one-token forward + backward."""
    request = {"threads": cpu_threads, "models": [dataclasses.asdict(m) for m in models]}
    env = {**os.environ, "OMP_NUM_THREADS": str(cpu_threads)}
    result = subprocess.run(
        [sys.executable, "-m", "train.measure.fixed_cost"],
        input=json.dumps(request, default=str), capture_output=True, text=True, env=env,
        check=False, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"train.measure.fixed_cost failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])["models"]


def fit_alpha_beta(points: list[tuple[int, float]]) -> tuple[float, float]:
    """t = alpha + bytes / beta by least squares on relative error (small and large sizes
    weigh alike); alpha floored at 0."""
    sw = sx = sy = sxx = sxy = 0.0
    for x, t in points:
        w = 1 / (t * t)
        sw, sx, sy, sxx, sxy = sw + w, sx + w * x, sy + w * t, sxx + w * x * x, sxy + w * x * t
    slope = (sw * sxy - sx * sy) / (sw * sxx - sx * sx)
    alpha = max(0.0, (sy - slope * sx) / sw)
    return alpha, 1 / slope


def ensure_host(work: HostWorkload) -> dict:
    """This host's record with every shape of ``work``: the shapes it lacks measured and
    cached now (a few seconds)."""
    import torch  # only when measuring: the driver imports this module before every report

    device_name = cpu_model_name()
    record = load_host(device_name, work.cpu_threads) or {}
    for part in ("gemm_s", "sdpa_s", "loss_s", "overhead_s"):
        record.setdefault(part, {})
    gemms = [g for g in work.gemms() if gemm_key(*g) not in record["gemm_s"]]
    attention = [a for a in work.attention() if sdpa_key(*a) not in record["sdpa_s"]]
    losses = [shape for shape in work.losses() if loss_key(*shape) not in record["loss_s"]]
    models = [work.model] if overhead_key(work.model) not in record["overhead_s"] else []
    if not (gemms or attention or losses or models) and "memory" in record:
        return record
    new = measure_host(gemms, attention, losses=losses, models=models, cpu_threads=work.cpu_threads)
    for part in ("gemm_s", "sdpa_s", "loss_s", "overhead_s"):
        record[part].update(new[part])
    record["relative_spread"] = {**record.get("relative_spread", {}), **new["relative_spread"]}
    record["memory"] = new["memory"]
    record.update(
        device_name=device_name,
        cpu_threads=work.cpu_threads,
        torch_version=torch.__version__,
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    save(host_cache_path(device_name, work.cpu_threads), record)
    return record


def cache_run_kernels(runs: list[dict[str, Any]]) -> int:
    """Before a report of ``runs`` (summary.json dicts with their run_dir): measure and cache
    the kernel times at the shapes of each run that ran on this host and needs them, so the
    report, which never measures, finds them. Returns how many runs needed a measurement."""
    here = cpu_model_name()
    measured = 0
    for run in runs:
        config = Path(run["run_dir"]) / "config.yaml"
        if run.get("device_name") != here or not config.is_file():
            continue
        try:
            work = host_workload(load_run_config(config), run)
        except Exception:  # noqa: BLE001 - a config the schema no longer reads: the report says why
            continue
        if work is not None and work.missing(load_host(here, work.cpu_threads)):
            try:
                ensure_host(work)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                # The report still comes: its row says which command measures the shapes.
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                print(f"warning: measuring {config.parent.name}'s kernel times failed: {first}",
                      file=sys.stderr)  # fmt: skip
                continue
            measured += 1
    return measured
