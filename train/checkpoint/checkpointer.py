"""The rank's side of checkpoints: save every N steps, resume from the latest complete save.

CHECKPOINT_DIR/step_000012/ holds one save: torch.distributed.checkpoint's files (each rank
writes its own ``__<rank>_<i>.distcp``, the coordinator ``.metadata``) for the torch layouts,
or DeepSpeed's own files for zero*. Rank 0 writes ``complete.json`` once every rank's part is
on disk (train/checkpoint/markers.py); only such a save is ever loaded.

The data position is the step: batches are drawn per (seed, step, row) (train/runtime/data.py),
and nothing else in a step draws random numbers (no dropout), so no RNG state is saved.
"""

from __future__ import annotations

import contextlib
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from train.checkpoint.markers import (
    MARKER,
    checkpoint_root,
    keep_last,
    latest_complete,
    refusal,
    run_shape,
    save_record,
    shape_differences,
    step_dir_name,
    step_dirs,
    write_marker,
)
from train.spec.config import RunConfig
from train.spec.config_error import ConfigError
from train.spec.degrees import LayoutPlan


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
        self.deepspeed = layout_plan.row.deepspeed
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
                raise ConfigError("checkpoint.dir", refusal(found, differences))
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
        # Placeholders of this rank's shapes and shards; DCP fills them from the files.
        model_state, optimizer_state = get_state_dict(self.layout.model, self.layout.optimizer)
        state: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        with _one_process_said():
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
            if self.async_save:
                with _one_process_said():
                    future = dcp.async_save(
                        state, checkpoint_id=str(path), process_group=self._group
                    )
                future = getattr(future, "upload_completion", future)
                blocking = time.perf_counter() - started
                future.add_done_callback(
                    lambda _, step=step: self._done_at.__setitem__(step, time.perf_counter())
                )
                self._pending = (step, path, future, started, blocking)
                return
            with _one_process_said():
                dcp.save(state, checkpoint_id=str(path))
        seconds = time.perf_counter() - started
        self.timings.append(SaveTiming(step, seconds, seconds))
        _barrier()  # every rank's part is on disk
        if self.is_main:
            self._mark_complete(step, path)

    def _torch_state(self, step: int) -> dict[str, Any]:
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
        write_marker(path, marker)
        self.markers[step] = marker
        keep_last(self.root, self.keep)

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
            save_record(
                timing.step,
                self.markers.get(timing.step),
                seconds[i],
                timing.blocking_seconds,
            )
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


@contextlib.contextmanager
def _one_process_said():
    """A run of one rank has no process group, and DCP warns on each save and load that it is
    "assuming the intent is to save in a single process" (torch 2.13 warns even when told so
    with no_dist=True): that is this run's intent, so the warning is not shown. With a process
    group nothing is filtered."""
    if dist.is_initialized():
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
        yield


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
