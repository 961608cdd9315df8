"""A stopped rank ends the run (issue 21 item 1): `kill -STOP` on rank 1 with a short
cluster.stall_timeout_s; the driver names the silent rank and its last step, stops every
process (the stopped rank too: it ignores its launcher's SIGTERM), writes failed.json and
exits 1, within seconds of the timeout. And every process group a rank makes (the default one,
new_group, a DeviceMesh's) gets the collective timeout (a child Python; the rest of the hang
detection is in-process in tests/unit/test_watchdog.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import FAST, running_driver
from tests.ranks.processes import rank_pids, wait_for_steps

STALL_S = 3


# Alone: with the 3 s stall threshold, another worker's ranks starving the healthy rank for
# that long would get it named instead of the stopped one.
@pytest.mark.exclusive
def test_a_stopped_rank_is_named_and_every_process_is_gone(tmp_path):
    run_dir = tmp_path / "hang"
    config = run_dir / "config.yaml"
    args = [*FAST, "train.steps=5000", "train.seq_len=32", "gpu=cpu", "sweep=none",
            "cluster.nproc_per_node=2", f"cluster.stall_timeout_s={STALL_S}",
            f"run_dir={run_dir}"]  # fmt: skip
    with running_driver(args, tmp_path) as driver:
        wait_for_steps(run_dir / "metrics.jsonl", 2)
        pids = rank_pids(config)
        launcher = _children(driver.pid)
        os.kill(pids[1], signal.SIGSTOP)
        stopped = time.monotonic()
        output, _ = driver.communicate(timeout=STALL_S + 60)
        took = time.monotonic() - stopped
    assert driver.returncode == 1, output[-3000:]
    assert took < STALL_S + 20, took  # the timeout, a poll, the kill: not the 30 s SIGKILL wait
    said = " ".join(output.split())  # rich wraps long lines
    assert "hang: stalled: rank 1 (pid" in said and "stopped answering" in said, said[-2000:]
    failed = json.loads((run_dir / "failed.json").read_text())
    assert failed["error"].startswith("hang: stalled: rank 1 (pid ")
    step = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert f"after step {step}" in failed["error"] or f"after step {step - 1}" in failed["error"]
    assert "1 of 1 run(s) failed" in said
    time.sleep(0.5)
    assert rank_pids(config) == {}, "a rank outlived the run"
    assert not [pid for pid in [*pids.values(), *launcher] if _alive(pid)]


def _children(pid: int) -> list[int]:
    """The driver's direct children (the launcher, torchrun)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


SUBGROUP_TIMEOUTS = """
import os, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from train.runtime.distributed import init_distributed
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=os.environ["PORT"])
init_distributed(timeout_s=float(os.environ["TIMEOUT"]) if os.environ["TIMEOUT"] else None)
cpu = torch.device("cpu")
mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp", "tp"))
groups = [dist.group.WORLD, dist.new_group([0]), mesh.get_group("tp")]
print([g._get_backend(cpu).options._timeout.total_seconds() for g in groups])
dist.destroy_process_group()
"""


@pytest.mark.parametrize("configured, expected", [("7", 7.0), ("", 300.0)])
def test_every_process_group_gets_the_collective_timeout(configured, expected):
    """The default group and sub-groups (new_group, DeviceMesh) alike: torch gives
    sub-groups its module default (30 min for gloo) unless it is set."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-c", SUBGROUP_TIMEOUTS],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PORT": str(port), "TIMEOUT": configured},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == str([expected] * 3)
