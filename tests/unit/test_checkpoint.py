"""Checkpoints in one process: save and resume equal to running on, a half-written checkpoint
never loaded, a checkpoint of another shape refused, the driver's checks, metrics on resume."""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.conftest import compose_run_config
from train.checkpoint.checkpointer import Checkpointer
from train.checkpoint.markers import (
    MARKER,
    check_checkpoint_dir,
    complete_marker,
    latest_complete,
    step_dir_name,
)
from train.measure.metrics import StepRecord
from train.measure.sinks import MetricsSinks
from train.parallel.build import build_layout, build_model
from train.runtime.data import SyntheticTokens
from train.spec.config_error import ConfigError
from train.spec.degrees import plan_layout
from train.spec.rules import check_checkpoint_settings, check_layout_features

SMALL = [
    "model=tiny",
    "parallel=ddp",
    "model.n_layers=2",
    "train.seq_len=32",
    "train.micro_batch=2",
    "train.global_batch=2",
    "precision=fp32",
    "wandb.mode=disabled",
]


def config(tmp_path, *overrides):
    return compose_run_config([*SMALL, f"run_dir={tmp_path}", *overrides])


def one_rank(cfg, run_dir):
    """A layout and checkpointer of one rank without a process group (the model unwrapped)."""
    torch.manual_seed(cfg.seed)
    plan = plan_layout(cfg, 1, 1)
    model = build_model(cfg, plan, "fp32", 1, torch.device("cpu"))
    layout = build_layout(model, cfg, plan, "fp32", 1, torch.device("cpu"))
    checkpoints = Checkpointer(
        cfg,
        run_dir,
        layout=layout,
        layout_plan=plan,
        scaler=None,
        precision="fp32",
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
    )
    return layout, checkpoints


def train(layout, checkpoints, cfg, steps: range) -> float:
    data = SyntheticTokens(cfg.model.vocab_size, cfg.train.seq_len, cfg.seed)
    loss = torch.tensor(float("nan"))
    for step in steps:
        tokens = data.global_batch(step, cfg.train.global_batch)
        loss = layout.model(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        layout.step()
        layout.zero_grad()
        checkpoints.after_step(step)
    return float(loss.detach())


# A one-rank run's saves and loads printed DCP's "torch.distributed is disabled ... assuming
# the intent is to save in a single process" each time (train/checkpoint/checkpointer.py).
@pytest.mark.filterwarnings("error:torch.distributed is disabled")
def test_resumed_run_ends_bitwise_where_the_uninterrupted_run_ends(tmp_path):
    cfg = config(tmp_path, "train.steps=6", "checkpoint.every=2", "checkpoint.keep=2")
    layout, checkpoints = one_rank(cfg, tmp_path)
    assert checkpoints.resume() == 0
    uninterrupted = train(layout, checkpoints, cfg, range(1, 7))
    record = checkpoints.finish()
    # keep=2: step 2 was removed once 6 was complete
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert kept == [step_dir_name(4), step_dir_name(6)]
    assert [s["step"] for s in record["saves"]] == [2, 4, 6]
    assert all(s["bytes"] > 0 and s["gbytes_per_s_job"] > 0 for s in record["saves"])

    # The latest (6) lost a shard: ignored, so the run resumes from 4 and runs 5 and 6 again.
    shard = next((tmp_path / "checkpoints" / step_dir_name(6)).glob("*.distcp"))
    shard.unlink()
    assert complete_marker(shard.parent) is None
    layout, checkpoints = one_rank(cfg, tmp_path)
    assert checkpoints.resume() == 4
    assert checkpoints.resumed_from_step == 4
    assert not (tmp_path / "checkpoints" / step_dir_name(6)).exists()  # cleared, never loaded
    assert train(layout, checkpoints, cfg, range(5, 7)) == uninterrupted


def test_a_checkpoint_without_its_marker_or_with_a_short_file_is_never_complete(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (3, 6, 9):
        folder = root / step_dir_name(step)
        folder.mkdir(parents=True)
        (folder / "__0_0.distcp").write_bytes(b"x" * 10)
        (folder / MARKER).write_text(json.dumps({"step": step, "files": {"__0_0.distcp": 10}}))
    (root / step_dir_name(9) / MARKER).unlink()  # died before the marker
    (root / step_dir_name(6) / "__0_0.distcp").write_bytes(b"x" * 4)  # cut short
    assert latest_complete(root).step == 3
    (root / step_dir_name(3) / MARKER).write_text('{"step": 3, "fil')  # a marker cut short
    assert latest_complete(root) is None


def write_marker(root, step, shape):
    folder = root / step_dir_name(step)
    folder.mkdir(parents=True)
    (folder / "__0_0.distcp").write_bytes(b"x")
    (folder / MARKER).write_text(
        json.dumps({"step": step, "shape": shape, "files": {"__0_0.distcp": 1}})
    )


def checkpoint_errors(cfg) -> list[tuple[str, str]]:
    """What the driver says of a run's checkpoint settings, its layout and its directory."""
    nproc = cfg.cluster.nproc_per_node
    try:
        check_checkpoint_settings(cfg)
        check_layout_features(cfg, plan_layout(cfg, cfg.cluster.nodes * nproc, nproc))
        check_checkpoint_dir(cfg)
    except ConfigError as exc:
        return [(exc.key, exc.message)]
    return []


def test_a_checkpoint_of_another_shape_is_refused_by_the_driver_and_the_rank(tmp_path):
    cfg = config(tmp_path, "train.steps=6", "checkpoint.every=2", "cluster.nproc_per_node=1")
    _, checkpoints = one_rank(cfg, tmp_path)
    shape = dict(checkpoints.shape)
    shape["model"] = {**shape["model"], "d_model": 64}
    write_marker(tmp_path / "checkpoints", 2, shape)
    [(key, reason)] = checkpoint_errors(cfg)
    assert key == "checkpoint.dir"
    assert "model.d_model 64 there, 128 here" in reason
    with pytest.raises(ValueError, match=r"^checkpoint\.dir: .*model\.d_model 64 there"):
        checkpoints.resume()
    assert (tmp_path / "checkpoints" / step_dir_name(2) / MARKER).exists()  # nothing removed

    # Same shape on another layout / world size: refused too, naming what differs.
    shape = dict(checkpoints.shape, world_size=2, layout="fsdp")
    (tmp_path / "other").mkdir()
    write_marker(tmp_path / "other", 2, shape)
    other = config(
        tmp_path,
        "train.steps=6",
        "checkpoint.every=2",
        f"checkpoint.dir={tmp_path / 'other'}",
        "cluster.nproc_per_node=1",
    )
    [(key, reason)] = checkpoint_errors(other)
    assert "layout 'fsdp' there, 'ddp' here" in reason and "world_size 2 there, 1 here" in reason


def test_driver_checks_name_the_key(tmp_path):
    def errors(*overrides):
        return checkpoint_errors(config(tmp_path, "train.steps=10", *overrides))

    assert errors() == []  # off by default
    assert errors("checkpoint.every=5") == []
    assert [k for k, _ in errors("checkpoint.every=-1")] == ["checkpoint.every"]
    assert [k for k, _ in errors("checkpoint.every=11")] == ["checkpoint.every"]
    assert [k for k, _ in errors("checkpoint.every=5", "checkpoint.keep=0")] == ["checkpoint.keep"]
    pipeline = errors("checkpoint.every=5", "parallel=pp", "model.n_layers=2")
    assert [k for k, _ in pipeline] == ["checkpoint.every"]  # refused before ranks start
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    [(key, reason)] = errors("checkpoint.every=5", f"checkpoint.dir={blocker / 'ck'}")
    assert key == "checkpoint.dir" and "not a directory" in reason
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        [(key, reason)] = errors("checkpoint.every=5", f"checkpoint.dir={locked}")
        assert key == "checkpoint.dir" and "not writable" in reason


def test_nothing_left_to_run_is_refused(tmp_path):
    cfg = config(tmp_path, "train.steps=4", "checkpoint.every=2", "cluster.nproc_per_node=1")
    _, checkpoints = one_rank(cfg, tmp_path)
    write_marker(tmp_path / "checkpoints", 4, checkpoints.shape)
    [(key, reason)] = checkpoint_errors(cfg)
    assert key == "checkpoint.dir" and "nothing is left to run" in reason


class NoTracker:
    def log(self, *args) -> None:
        pass


def record(step: int, seconds: float, timed: bool = True, **flags) -> StepRecord:
    return StepRecord(
        step=step,
        loss=1.0,
        step_time_s=seconds,
        tokens_per_s=1.0,
        tokens_per_s_per_device=1.0,
        model_tflops_per_device=0.0,
        mfu=None,
        memory_bytes=0,
        timed=timed,
        **flags,
    )


def test_resumed_metrics_keep_earlier_lines_and_count_each_step_once(tmp_path, capsys):
    first = MetricsSinks(run_dir=tmp_path, total_steps=4, tracker=NoTracker())
    for step, seconds in ((1, 9.0), (2, 1.0), (3, 5.0)):
        first.log_step(record(step, seconds, timed=step > 1))
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # killed mid-line
    again = MetricsSinks(run_dir=tmp_path, total_steps=4, tracker=NoTracker(), resume=True)
    assert again.earlier_steps == {1, 2, 3}
    again.log_step(record(3, 3.0, after_restart=True, repeated=True))
    again.log_step(record(4, 4.0, after_restart=True))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 3, 4]
    assert [x["repeated"] for x in lines] == [False, False, False, True, False]
    assert again.timed_step_times() == [1.0, 3.0, 4.0]  # step 3's latest run, once
    assert again.repeated_steps() == [3]
    assert "(repeated)" in capsys.readouterr().out
