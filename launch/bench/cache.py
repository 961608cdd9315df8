"""Where launch.mamf's measurements live, and reading them back (no torch).

$SCALEPROBE_CACHE_DIR/mamf/ (default ~/.cache/scaleprobe/mamf/), one file per device (and per
thread count on CPU): ``<device>[_<n>threads].json``, the matmul ceiling per precision
(launch/bench/matmul_ceiling.py), and beside it ``..._host.json``, the kernel times at
workloads' own shapes (launch/bench/host_kernels.py). The driver, the report and the
performance model read them; only the two measuring modules write.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from train.files.safe_files import write_atomic


def cache_dir() -> Path:
    return Path(os.environ.get("SCALEPROBE_CACHE_DIR", Path.home() / ".cache" / "scaleprobe"))


def cache_path(device_name: str, cpu_threads: int | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_").lower()
    suffix = f"_{cpu_threads}threads" if cpu_threads else ""
    return cache_dir() / "mamf" / f"{slug}{suffix}.json"


def host_cache_path(device_name: str, cpu_threads: int) -> Path:
    path = cache_path(device_name, cpu_threads)
    return path.with_name(path.stem + "_host.json")


# The highest matmul rate a record may claim, TFLOP/s: a CPU core with AMX reaches a few
# (Intel's AMX: 1024 bf16 FLOP/cycle/core at ~2-4 GHz); the fastest GPU's dense fp8 is ~5,000
# (B200: 4,500). A record beyond these is a corrupt or hand-edited file, not a measurement.
MAX_TFLOPS_PER_CPU_THREAD = 10.0
MAX_GPU_TFLOPS = 10_000.0


def _read(path: Path, required: str, what: str) -> dict | None:
    """The record at ``path`` with a mapping under ``required``, else None. A truncated or
    foreign file must not stop every run: it is ignored, with a warning naming it."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get(required), dict):
        print(f"warning: ignoring unreadable {what} cache {path}", file=sys.stderr)
        return None
    return record


def ceiling_problem(record: dict) -> str | None:
    """What makes a matmul ceiling record unusable, or None: it needs its device, when it was
    measured, and per precision a finite positive TFLOP/s no higher than the device kind can
    reach (MFU divides by it: a negative or absurd ceiling gives a negative or tiny MFU)."""
    for key in ("device_name", "measured_at"):
        if not isinstance(record.get(key), str) or not record[key]:
            return f"no {key}"
    threads = record.get("cpu_threads")
    limit = MAX_GPU_TFLOPS if threads is None else MAX_TFLOPS_PER_CPU_THREAD * max(1, threads)
    for precision, tflops in record["best_tflops"].items():
        number = isinstance(tflops, int | float) and not isinstance(tflops, bool)
        if not number or not 0 < tflops <= limit:
            return f"best_tflops.{precision} = {tflops!r}: not a TFLOP/s in (0, {limit:g}]"
    return None


def load_measured(device_name: str, cpu_threads: int | None) -> dict | None:
    """The matmul ceiling record (``best_tflops`` per precision), or None (also for a record
    that fails ``ceiling_problem``, with a warning naming it and what is wrong)."""
    path = cache_path(device_name, cpu_threads)
    record = _read(path, "best_tflops", "matmul")
    problem = record and ceiling_problem(record)
    if problem:
        print(f"warning: ignoring matmul cache {path}: {problem}", file=sys.stderr)
        return None
    return record


def load_host(device_name: str, cpu_threads: int) -> dict | None:
    """The host kernel record (``gemm_s``, ``sdpa_s``, ``memory``), or None."""
    return _read(host_cache_path(device_name, cpu_threads), "memory", "host")


def save(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=2) + "\n")
