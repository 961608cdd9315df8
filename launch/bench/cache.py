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


def cache_dir() -> Path:
    return Path(os.environ.get("SCALEPROBE_CACHE_DIR", Path.home() / ".cache" / "scaleprobe"))


def cache_path(device_name: str, cpu_threads: int | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device_name).strip("_").lower()
    suffix = f"_{cpu_threads}threads" if cpu_threads else ""
    return cache_dir() / "mamf" / f"{slug}{suffix}.json"


def host_cache_path(device_name: str, cpu_threads: int) -> Path:
    path = cache_path(device_name, cpu_threads)
    return path.with_name(path.stem + "_host.json")


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


def load_measured(device_name: str, cpu_threads: int | None) -> dict | None:
    """The matmul ceiling record (``best_tflops`` per precision), or None."""
    return _read(cache_path(device_name, cpu_threads), "best_tflops", "matmul")


def load_host(device_name: str, cpu_threads: int) -> dict | None:
    """The host kernel record (``gemm_s``, ``sdpa_s``, ``memory``), or None."""
    return _read(host_cache_path(device_name, cpu_threads), "memory", "host")


def save(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
