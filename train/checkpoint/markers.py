"""Checkpoints on disk: finding the latest complete one, what its marker says, and whether
a run may use it (no torch: the driver calls these before any rank starts).

CHECKPOINT_DIR/step_000012/ holds one save: torch.distributed.checkpoint's files (each rank
writes its own ``__<rank>_<i>.distcp``, the coordinator ``.metadata``) for the torch layouts,
or DeepSpeed's own files for zero*. A save is complete only once rank 0 has written
``complete.json`` into it, after every rank's part is on disk. The marker lists every file
with its size, and the shape of the run that wrote it (model, layout, degrees, world size,
precision), so a run of another shape is refused before anything is loaded. A folder without
the marker, or whose files do not match it (a shard lost or cut short), is never loaded.

The data position is the step: batches are drawn per (seed, step, row) (train/runtime/data.py), and
nothing else in a step draws random numbers (no dropout), so no RNG state is saved.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.files.safe_files import unwritable_reason, write_atomic
from train.spec.config import RunConfig
from train.spec.config_error import ConfigError
from train.spec.degrees import LayoutPlan, plan_layout

MARKER = "complete.json"
STEP_DIR = re.compile(r"^step_(\d+)$")
# Which rank wrote a file: DCP's __<rank>_<i>.distcp, DeepSpeed's zero_pp_rank_<rank>_*;
# anything else (DCP's .metadata, DeepSpeed's mp_rank_00_model_states.pt) is rank 0's.
RANK_FILES = (
    re.compile(r"^__(\d+)_\d+\.distcp$"),
    # DeepSpeed's shards (0.19.8, runtime/engine.py _get_zero_ckpt_prefix): a bf16 run names
    # its optimizer shards (its fp32 masters) bf16_zero_pp_rank_<rank>_*, fp32 and fp16 runs
    # zero_pp_rank_<rank>_*, as ZeRO-3's per-rank model states.
    re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_"),
)
GB = 1e9  # checkpoint bandwidth in GB/s: 10^9 bytes, as storage is quoted


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def checkpoint_root(cfg: RunConfig, run_dir: str | Path) -> Path:
    """checkpoint.dir, or RUN_DIR/checkpoints when it is null."""
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(run_dir) / "checkpoints"


@dataclass(frozen=True)
class FoundCheckpoint:
    step: int
    path: Path
    marker: dict[str, Any]


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Every step_NNNNNN folder under ``root``, oldest first (complete or not)."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = STEP_DIR.match(entry.name)
        if match and entry.is_dir():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def complete_marker(step_dir: Path) -> dict[str, Any] | None:
    """The marker of a complete checkpoint, or None: no marker, an unreadable one, or a file
    it lists missing or of another size (a shard lost, or cut short by a full disk)."""
    try:
        marker = json.loads((step_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = marker.get("files") if isinstance(marker, dict) else None
    if not isinstance(files, dict) or not files:
        return None
    for name, size in files.items():
        try:
            if (step_dir / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return marker


def latest_complete(root: Path) -> FoundCheckpoint | None:
    for step, path in reversed(step_dirs(root)):
        marker = complete_marker(path)
        if marker is not None:
            return FoundCheckpoint(step, path, marker)
    return None


def run_shape(
    cfg: RunConfig,
    *,
    layout: LayoutPlan | None,
    world_size: int,
    precision: str | None,
) -> dict[str, Any]:
    """What a checkpoint must share with the run that loads it. None values are unknown (the
    driver before precision=auto is resolved) and are not compared."""
    model = dataclasses.asdict(cfg.model)
    for key in ("name", "source"):  # labels, not shapes
        model.pop(key, None)
    degrees = None
    if layout is not None:
        degrees = {
            k: v
            for k, v in layout.as_dict().items()
            if k in ("pp", "dp_replicate", "dp_shard", "tp")
        }
        if layout.pipeline is not None:  # which blocks a rank holds, and so its keys
            degrees["pp_stages_per_rank"] = cfg.parallel.pp_stages_per_rank
    return {
        "model": model,
        "layout": None if layout is None else str(layout.name),
        "degrees": degrees,
        "world_size": world_size,
        "precision": None if precision is None else str(precision),
    }


def shape_differences(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``key there -> here`` for each known value of ``expected`` that ``saved`` does not share."""
    differences = []
    for key, want in expected.items():
        if want is None:
            continue
        have = saved.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            for sub in sorted(set(want) | set(have)):
                if want.get(sub) != have.get(sub):
                    differences.append(
                        f"{key}.{sub} {have.get(sub)!r} there, {want.get(sub)!r} here"
                    )
        elif have != want:
            differences.append(f"{key} {have!r} there, {want!r} here")
    return differences


def refusal(found: FoundCheckpoint, differences: list[str]) -> str:
    return (
        f"{found.path} was saved by a run of another shape ({'; '.join(differences)}); it is "
        "not loaded: point checkpoint.dir elsewhere or remove that checkpoint"
    )


def check_checkpoint_dir(cfg: RunConfig) -> None:
    """ConfigError when the checkpoint dir cannot serve this run: not writable, or holding a
    complete checkpoint of another shape, or one with no step left to run.

    For the driver's validation, on each run's own config (its run_dir, cluster size and
    layout as written to its config.yaml), before anything is written. Reads the checkpoint
    dir but never changes it. The settings themselves: train/spec/rules.py.
    """
    if cfg.checkpoint.every <= 0:
        return  # off: the dir is never used
    root = checkpoint_root(cfg, cfg.run_dir)
    unwritable = unwritable_reason(root)
    if unwritable:
        raise ConfigError("checkpoint.dir", unwritable)
    found = latest_complete(root)
    if found is None:
        return
    world_size = cfg.cluster.nodes * cfg.cluster.nproc_per_node
    try:
        layout = plan_layout(cfg, world_size, cfg.cluster.nproc_per_node)
    except ConfigError:
        layout = None  # the layout's own check reports it
    precision = str(cfg.precision.name)
    expected = run_shape(
        cfg,
        layout=layout,
        world_size=world_size,
        precision=None if precision in ("auto", "fp8") else precision,  # the rank resolves these
    )
    differences = shape_differences(found.marker.get("shape") or {}, expected)
    if differences:
        raise ConfigError("checkpoint.dir", refusal(found, differences))
    if found.step >= cfg.train.steps:
        raise ConfigError(
            "checkpoint.dir",
            f"{found.path} is at step {found.step} and train.steps is {cfg.train.steps}: "
            "nothing is left to run; raise train.steps, or point checkpoint.dir elsewhere",
        )


def write_marker(path: Path, marker: dict[str, Any]) -> None:
    """Written whole or not at all: a marker cut short is no marker."""
    write_atomic(path / MARKER, json.dumps(marker, indent=2) + "\n")


def keep_last(root: Path, keep: int) -> None:
    """Remove every step folder older than the last ``keep`` complete ones."""
    dirs = step_dirs(root)
    complete = [step for step, path in dirs if complete_marker(path) is not None]
    if len(complete) < keep:
        return
    oldest_kept = complete[-keep]
    for step, path in dirs:
        if step < oldest_kept:
            shutil.rmtree(path, ignore_errors=True)


def save_record(
    step: int, marker: dict | None, seconds_per_rank: list[float], blocking_seconds: float
) -> dict[str, Any]:
    """summary.json's figures of one save: bytes and GB/s per rank and for the job."""
    world = len(seconds_per_rank)
    bytes_per_rank = [0] * world
    for name, size in ((marker or {}).get("files") or {}).items():
        bytes_per_rank[min(file_rank(name), world - 1)] += size
    job_seconds = max(seconds_per_rank)  # the save is complete when the slowest rank is
    total = sum(bytes_per_rank)
    return {
        "step": step,
        "seconds": job_seconds,
        "seconds_per_rank": seconds_per_rank,
        "blocking_seconds": blocking_seconds,  # rank 0's
        "bytes": total,
        "bytes_per_rank": bytes_per_rank,
        "gbytes_per_s_per_rank": [
            _rate(b, s) for b, s in zip(bytes_per_rank, seconds_per_rank, strict=True)
        ],
        "gbytes_per_s_job": _rate(total, job_seconds),
    }


def file_rank(relative_name: str) -> int:
    name = Path(relative_name).name
    for pattern in RANK_FILES:
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    return 0


def _rate(n_bytes: int, seconds: float) -> float | None:
    return n_bytes / seconds / GB if seconds > 0 else None
