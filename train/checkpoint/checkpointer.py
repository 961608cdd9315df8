"""Checkpoints of a run: saved every N steps, resumed from the latest complete one.

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
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from train.spec.config import RunConfig
from train.spec.degrees import ZERO_STAGES, LayoutError, LayoutPlan, plan_layout

MARKER = "complete.json"
STEP_DIR = re.compile(r"^step_(\d+)$")
# Which rank wrote a file: DCP's __<rank>_<i>.distcp, DeepSpeed's zero_pp_rank_<rank>_*;
# anything else (DCP's .metadata, DeepSpeed's mp_rank_00_model_states.pt) is rank 0's.
RANK_FILES = (re.compile(r"^__(\d+)_\d+\.distcp$"), re.compile(r"^zero_pp_rank_(\d+)_"))
# Tried and failed: each pipeline rank's optimizer names other parameters, and resuming lost
# their param_groups' hyperparameters (KeyError 'betas' in the first step after the load).
PIPELINE_REFUSAL = (
    "pipeline layouts are not checkpointed yet (their per-stage optimizer state does not "
    "resume through torch.distributed.checkpoint); set checkpoint.every=0"
)
UNSUPPORTED_LAYOUTS = {"pp": PIPELINE_REFUSAL, "pp_fsdp": PIPELINE_REFUSAL}
GB = 1e9  # checkpoint bandwidth in GB/s: 10^9 bytes, as storage is quoted


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def checkpoint_root(cfg: RunConfig, run_dir: str | Path) -> Path:
    """checkpoint.dir, or RUN_DIR/checkpoints when it is null."""
    return Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else Path(run_dir) / "checkpoints"


# --- Finding complete checkpoints (no torch.distributed: the driver calls these too) ---------


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


def checkpoint_errors(cfg: RunConfig) -> list[tuple[str, str]]:
    """(key, reason) for each checkpoint setting this run cannot use; [] when it can.

    For the driver's validation, on each run's own config (its run_dir, cluster size and
    layout as written to its config.yaml), before anything is written. Reads the checkpoint
    dir but never changes it, and needs no process group.
    """
    c, steps = cfg.checkpoint, cfg.train.steps
    errors: list[tuple[str, str]] = []
    if c.every < 0:
        errors.append(("checkpoint.every", f"{c.every}: must be >= 0 (0: no checkpoints)"))
    elif c.every > steps:
        errors.append(
            (
                "checkpoint.every",
                f"{c.every} is more than train.steps ({steps}): no checkpoint would be saved",
            )
        )
    if c.keep < 1:
        errors.append(("checkpoint.keep", f"{c.keep}: must be >= 1 (the last K are kept)"))
    if c.every > 0 and str(cfg.parallel.name) in UNSUPPORTED_LAYOUTS:
        errors.append(("checkpoint.every", UNSUPPORTED_LAYOUTS[str(cfg.parallel.name)]))
    if c.every <= 0 or errors:
        return errors  # off (the dir is never used), or the settings already fail
    root = checkpoint_root(cfg, cfg.run_dir)
    unwritable = unwritable_reason(root)
    if unwritable:
        return [("checkpoint.dir", unwritable)]
    found = latest_complete(root)
    if found is None:
        return []
    world_size = cfg.cluster.nodes * cfg.cluster.nproc_per_node
    try:
        layout = plan_layout(cfg, world_size, cfg.cluster.nproc_per_node)
    except LayoutError:
        layout = None  # the layout's own check reports it
    if layout is not None and str(layout.name) == "auto":
        layout = None  # chosen per run later: compared by the rank
    precision = str(cfg.precision.name)
    expected = run_shape(
        cfg,
        layout=layout,
        world_size=world_size,
        precision=None if precision in ("auto", "fp8") else precision,  # the rank resolves these
    )
    differences = shape_differences(found.marker.get("shape") or {}, expected)
    if differences:
        return [("checkpoint.dir", refusal(found, differences))]
    if found.step >= steps:
        return [
            (
                "checkpoint.dir",
                f"{found.path} is at step {found.step} and train.steps is {steps}: nothing is "
                "left to run; raise train.steps, or point checkpoint.dir elsewhere",
            )
        ]
    return []


def unwritable_reason(root: Path) -> str | None:
    """Why checkpoints cannot be written under ``root`` (created if missing), or None."""
    if root.exists() and not root.is_dir():
        return f"{root} is not a directory"
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{root}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{root}: {existing} is not writable"
    return None


# --- The rank side: save, resume, keep the last K -------------------------------------------


@dataclass
class SaveTiming:
    """One save as this rank saw it."""

    step: int
    seconds: float  # from the call until this rank's part was on disk
    blocking_seconds: float  # how long the loop waited (async: the copy to host memory)


class Checkpointer:
    """Saves every ``checkpoint.every`` steps and resumes from the latest complete save.

    Every rank calls ``resume`` once before the loop, ``after_step`` after each step and
    ``finish`` after the loop: saves are collective. Rank 0 alone writes markers and removes
    old checkpoints.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        *,
        layout,
        layout_plan: LayoutPlan,
        scaler: torch.amp.GradScaler | None,
        precision: str,
        rank: int,
        world_size: int,
        device: torch.device,
    ):
        c = cfg.checkpoint
        self.every, self.keep = c.every, c.keep
        self.root = checkpoint_root(cfg, run_dir)
        self.layout, self.scaler = layout, scaler
        self.rank, self.world_size, self.device = rank, world_size, device
        if self.enabled and str(layout_plan.name) in UNSUPPORTED_LAYOUTS:
            raise ValueError(f"checkpoint.every: {UNSUPPORTED_LAYOUTS[str(layout_plan.name)]}")
        self.deepspeed = str(layout_plan.name) in ZERO_STAGES
        self.async_save = c.async_save and not self.deepspeed
        self.shape = run_shape(cfg, layout=layout_plan, world_size=world_size, precision=precision)
        self.resumed_from_step: int | None = None
        self.timings: list[SaveTiming] = []
        self.waited_s = 0.0  # the loop's time inside saves: kept out of its timed figures
        self.markers: dict[int, dict] = {}  # rank 0: the markers this attempt wrote
        self._pending: tuple[int, Path, Any, float, float] | None = None
        self._done_at: dict[int, float] = {}
        # Async saves run their collectives from a background thread: on a group of their own,
        # so they never interleave with the training step's collectives on the default group.
        self._group = None
        if self.enabled and self.async_save and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")

    @property
    def enabled(self) -> bool:
        return self.every > 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- resume --

    def resume(self) -> int:
        """Load the latest complete checkpoint; the step it was saved after (0: none)."""
        if not self.enabled:
            return 0
        found = latest_complete(self.root)
        if found is not None:
            differences = shape_differences(found.marker.get("shape") or {}, self.shape)
            if differences:
                raise ValueError(f"checkpoint.dir: {refusal(found, differences)}")
            if self.deepspeed:
                self._load_deepspeed(found.path)
            else:
                self._load_torch(found.path)
            self.resumed_from_step = found.step
        # Later folders are saves that never completed: cleared before this run saves those
        # steps again, so no file of the failed attempt mixes into a new save.
        start = 0 if found is None else found.step
        if self.is_main:
            for step, path in step_dirs(self.root):
                if step > start:
                    shutil.rmtree(path, ignore_errors=True)
        _barrier()
        return start

    def _load_torch(self, path: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        # Placeholders of this rank's shapes and shards; DCP fills them from the files.
        model_state, optimizer_state = get_state_dict(self.layout.model, self.layout.optimizer)
        state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(
            self.layout.model,
            self.layout.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    def _load_deepspeed(self, path: Path) -> None:
        engine = self.layout.model
        loaded, _ = engine.load_checkpoint(
            str(path.parent),
            tag=path.name,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if loaded is None:
            raise ValueError(f"checkpoint.dir: DeepSpeed could not load {path}")

    # -- save --

    def after_step(self, step: int) -> None:
        """Called by every rank after every step: completes a finished async save, and saves
        when ``step`` is a multiple of checkpoint.every."""
        if not self.enabled:
            return
        self._complete_pending(wait=False)
        if step % self.every == 0:
            entered = time.perf_counter()
            self.save(step)
            self.waited_s += time.perf_counter() - entered

    def save(self, step: int) -> None:
        self._complete_pending(wait=True)  # one save in flight at a time
        path = self.root / step_dir_name(step)
        path.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        if self.deepspeed:
            self.layout.model.save_checkpoint(
                str(self.root), tag=path.name, client_state={"step": step}, save_latest=False
            )
        else:
            state = self._torch_state(step)
            import torch.distributed.checkpoint as dcp

            if self.async_save:
                future = dcp.async_save(state, checkpoint_id=str(path), process_group=self._group)
                future = getattr(future, "upload_completion", future)
                blocking = time.perf_counter() - started
                future.add_done_callback(
                    lambda _, step=step: self._done_at.__setitem__(step, time.perf_counter())
                )
                self._pending = (step, path, future, started, blocking)
                return
            dcp.save(state, checkpoint_id=str(path))
        seconds = time.perf_counter() - started
        self.timings.append(SaveTiming(step, seconds, seconds))
        _barrier()  # every rank's part is on disk
        if self.is_main:
            self._mark_complete(step, path)

    def _torch_state(self, step: int) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.layout.model, self.layout.optimizer)
        state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state, "step": step}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def _complete_pending(self, wait: bool) -> None:
        if self._pending is None:
            return
        step, path, future, started, blocking = self._pending
        if not wait and not future.done():
            return
        future.result()  # raises what the background save raised
        done_at = self._done_at.get(step, time.perf_counter())
        self.timings.append(SaveTiming(step, done_at - started, blocking))
        self._pending = None
        # The async save's last collective gathers every rank's write results to the
        # coordinator, which writes .metadata; so rank 0's future is done only after every
        # rank's files are on disk, and the marker needs no barrier.
        if self.is_main:
            self._mark_complete(step, path)

    def _mark_complete(self, step: int, path: Path) -> None:
        files = {
            str(f.relative_to(path)): f.stat().st_size
            for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != MARKER
        }
        marker = {
            "step": step,
            "format": "deepspeed" if self.deepspeed else "torch.distributed.checkpoint",
            "shape": self.shape,
            "files": files,
            "saved_at": time.time(),
        }
        # Written whole or not at all: a marker cut short is no marker.
        partial = path / (MARKER + ".partial")
        partial.write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(partial, path / MARKER)
        self.markers[step] = marker
        self._keep_last()

    def _keep_last(self) -> None:
        """Rank 0: remove every step folder older than the last ``keep`` complete ones."""
        dirs = step_dirs(self.root)
        complete = [step for step, path in dirs if complete_marker(path) is not None]
        if len(complete) < self.keep:
            return
        oldest_kept = complete[-self.keep]
        for step, path in dirs:
            if step < oldest_kept:
                shutil.rmtree(path, ignore_errors=True)

    # -- after the loop --

    def finish(self) -> dict[str, Any] | None:
        """Wait for an async save in flight; on rank 0, summary.json's ``checkpoint``."""
        if not self.enabled:
            return None
        self._complete_pending(wait=True)
        seconds = self._gather_seconds()
        if not self.is_main:
            return None
        saves = [
            save_record(timing.step, self.markers.get(timing.step), seconds[i], timing)
            for i, timing in enumerate(self.timings)
        ]
        return {
            "every": self.every,
            "dir": str(self.root),
            "async_save": self.async_save,
            "keep": self.keep,
            "format": "deepspeed" if self.deepspeed else "torch.distributed.checkpoint",
            "resumed_from_step": self.resumed_from_step,
            "saves": saves,
        }

    def _gather_seconds(self) -> list[list[float]]:
        """Every rank's seconds per save of this attempt (saves are collective: same count)."""
        mine = torch.zeros(len(self.timings), self.world_size, dtype=torch.float64)
        for i, timing in enumerate(self.timings):
            mine[i, self.rank] = timing.seconds
        if dist.is_initialized() and self.timings:
            device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            mine = mine.to(device)
            dist.all_reduce(mine)  # SUM of rows that are zero except each rank's own entry
        return mine.cpu().tolist()


def save_record(
    step: int, marker: dict | None, seconds_per_rank: list[float], timing: SaveTiming
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
        "blocking_seconds": timing.blocking_seconds,  # rank 0's
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


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
