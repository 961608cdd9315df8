"""Hang detection, issue 21 item 1, in-process: the watchdog's rule on hand-written heartbeats
and a fake clock, the heartbeat thread itself, and the timeouts' stated defaults. The end to
end case (`kill -STOP` on a rank) is tests/integration/test_hang.py."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from launch.launchers.watchdog import StallWatch
from train.files.heartbeat import (
    Beat,
    Heartbeat,
    beat_interval_s,
    collective_timeout_s,
    heartbeat_path,
    read_heartbeats,
    stall_timeout_s,
)
from train.spec.config import ClusterConfig


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def beat(run_dir: Path, rank: int, step: int, count: int, phase: str = "steps") -> None:
    path = heartbeat_path(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(Beat(rank, 4000 + rank, "node-a", phase, step, count))))


def test_a_silent_rank_with_no_step_anywhere_is_a_stall_naming_it_and_its_step(tmp_path):
    clock = Clock()
    watch = StallWatch(tmp_path, 3.0, clock)
    beat(tmp_path, 0, 7, 1)
    beat(tmp_path, 1, 7, 1)
    assert watch.stalled() is None
    for count in range(2, 6):  # rank 0 keeps beating inside its collective; rank 1 is stopped
        clock.now += 1.0
        beat(tmp_path, 0, 7, count)
        found = watch.stalled()
    assert found is not None
    assert found.startswith("stalled: rank 1 (pid 4001 on node-a) after step 7 stopped answering")
    assert "no rank finished a step in 3 s (cluster.stall_timeout_s)" in found
    assert "still answering: rank 0 (pid 4000 on node-a) after step 7" in found


def test_ranks_that_beat_but_finish_no_step_are_not_a_stall(tmp_path):
    """A long compile or checkpoint save: alive, so left to the collective timeout."""
    clock = Clock()
    watch = StallWatch(tmp_path, 3.0, clock)
    for count in range(1, 30):
        clock.now += 1.0
        beat(tmp_path, 0, 2, count)
        beat(tmp_path, 1, 2, count)
        assert watch.stalled() is None


def test_steps_from_rank_zero_keep_a_slow_beat_from_counting_as_a_stall(tmp_path):
    clock = Clock()
    watch = StallWatch(tmp_path, 3.0, clock)
    beat(tmp_path, 1, 1, 1)
    for _ in range(10):
        clock.now += 1.0
        watch.saw_progress()  # rank 0's metrics.jsonl grows
        assert watch.stalled() is None


def test_a_rank_that_ended_is_not_silent_and_zero_turns_the_watchdog_off(tmp_path):
    clock = Clock()
    beat(tmp_path, 0, 5, 9, phase="done")
    watch = StallWatch(tmp_path, 3.0, clock)
    clock.now += 60
    assert watch.stalled() is None
    beat(tmp_path, 1, 5, 9)
    off = StallWatch(tmp_path, 0.0, clock)
    off.stalled()
    clock.now += 600
    assert off.stalled() is None


def test_a_rank_frozen_in_setup_is_named_as_such(tmp_path):
    clock = Clock()
    watch = StallWatch(tmp_path, 5.0, clock)
    beat(tmp_path, 0, 0, 1, phase="setup")
    watch.stalled()
    clock.now += 6
    assert "rank 0 (pid 4000 on node-a) in setup, before step 1 stopped" in watch.stalled()


def test_the_heartbeat_thread_writes_while_the_main_thread_is_busy(tmp_path):
    with Heartbeat(tmp_path, 3, interval_s=0.05) as heartbeat:
        first = read_heartbeats(tmp_path)[3]
        heartbeat.at(step=4)
        deadline = time.monotonic() + 5
        while read_heartbeats(tmp_path)[3].step != 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy_until = time.monotonic() + 0.3
        while time.monotonic() < busy_until:  # the main thread computes; the beat goes on
            pass
        later = read_heartbeats(tmp_path)[3]
    assert (first.phase, first.step) == ("setup", 0)
    assert later.step == 4 and later.beat > first.beat + 1
    assert read_heartbeats(tmp_path)[3].phase == "done"


def test_stated_defaults():
    assert collective_timeout_s(None, "nccl") == 600.0  # NCCL's own: nothing changes on GPUs
    assert collective_timeout_s(None, "gloo") == 300.0  # gloo's own is 30 min
    assert collective_timeout_s(12.5, "gloo") == 12.5
    assert stall_timeout_s(ClusterConfig()) == 180.0  # below both, so it names the rank first
    assert stall_timeout_s(ClusterConfig(stall_timeout_s=0)) == 0.0
    assert beat_interval_s(180.0) == 2.0 and beat_interval_s(3.0) == pytest.approx(0.3)
