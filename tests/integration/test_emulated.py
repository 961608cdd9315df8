"""The emulated cluster: 2 nodes in network namespaces behind a throttled link (root only)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.progress import Progress

from launch.app import _raise_stopped
from launch.cluster.emulated import (
    CONGESTION_CONTROL_SYSCTL,
    NAME_PREFIX,
    EmulatedCluster,
    inherited_congestion_control,
    list_namespaces,
    loss_based_congestion_control,
)
from launch.errors import RunFailed, Stopped
from launch.launchers.command import NodeCommand
from launch.launchers.local import run_nodes
from launch.plan import RunPlan
from tests.conftest import FAST, run_launch, run_module

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")),
        reason="the emulated cluster needs root, ip and tc (network namespaces, tc tbf)",
    ),
]
LINK_GBPS = 0.2


def our_namespaces() -> list[str]:
    return [n for n in list_namespaces() if n.startswith(f"{NAME_PREFIX}{os.getpid()}-")]


def leftover_namespaces(before: set[str]) -> list[str]:
    """New emulated namespaces whose driver has ended: what a finished run left behind. (A
    live driver's are another test's cluster: under xdist one may be up on the other worker.)"""
    new = [n for n in list_namespaces() if n.startswith(NAME_PREFIX) and n not in before]
    driver_pid = {n: n.removeprefix(NAME_PREFIX).split("-")[0] for n in new}
    return [n for n in new if not Path(f"/proc/{driver_pid[n]}").exists()]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("emulated")
    before = set(list_namespaces())
    result = run_launch(
        [
            *FAST,
            "gpu=cpu",
            "sweep=none",
            "cluster=emulated",
            "cluster.nodes=2",
            "cluster.nproc_per_node=1",
            f"cluster.link_gbps={LINK_GBPS}",
            f"run_dir={out}",
        ],
        out,
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    return out, leftover_namespaces(before)


def test_two_node_training_run_records_the_link(two_node_run):
    out, leftover = two_node_run
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["nodes"], summary["nproc_per_node"]) == (2, 2, 1)
    link = summary["cluster"]["link"]
    assert summary["cluster"]["name"] == "emulated"
    assert link["gbps"] == LINK_GBPS and link["qdisc"].startswith("tbf rate 200000000bit")
    # The config's default (loss_based: cubic, or reno where a namespace may not set cubic),
    # whatever the host's own default is.
    set_here = loss_based_congestion_control()
    assert link["tcp_congestion_control"] == set_here in ("cubic", "reno")
    assert run_module("launch.report", [str(out)], out).returncode == 0
    report = (out / "report.md").read_text()
    assert f"link 200 Mbit/s per node (tc tbf, TCP {set_here})" in report
    assert summary["fabric"]["nccl_env"]["NCCL_SOCKET_IFNAME"] == "eth0"
    assert (out / "launch.log").is_file() and (out / "launch-node1.log").is_file()
    assert leftover == []  # every namespace (and so every veth, the bridge) is gone


@pytest.mark.exclusive  # the measured busbw against the link's rate: no ranks of other tests
def test_all_reduce_busbw_reaches_the_link_rate(tmp_path):
    """Large all_reduce messages across the 200 Mbit/s link run at >= 80% of it."""
    run_dir = tmp_path / "comm"
    result = run_module(
        "launch.comm",
        ["cluster=emulated", "cluster.nodes=2", "cluster.nproc_per_node=1"]
        + [f"cluster.link_gbps={LINK_GBPS}", "comm.ops=[all_reduce]"]
        + ["comm.min_bytes=4194304", "comm.max_bytes=4194304"]  # one large size: the target's
        + ["comm.seconds_per_size=1", f"run_dir={run_dir}"],
        tmp_path,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    points = json.loads((run_dir / "comm.json").read_text())["results"]
    largest = max(points, key=lambda p: p["bytes"])
    assert largest["scope"] == "inter-node" and largest["bytes"] == 4194304
    link_gbytes_per_s = LINK_GBPS / 8
    assert largest["busbw_gbytes_per_s"] >= 0.8 * link_gbytes_per_s, largest
    # And never faster than the link: the throttle is what is measured.
    assert largest["busbw_gbytes_per_s"] <= 1.05 * link_gbytes_per_s, largest


def namespace_congestion_control(ns: str) -> str:
    read = ["ip", "netns", "exec", ns, "cat", CONGESTION_CONTROL_SYSCTL]
    return subprocess.run(read, capture_output=True, text=True, check=True).stdout.strip()


def test_each_node_runs_the_configured_congestion_control():
    """Not the host's (a host set to bbr made each step's all-reduce vary by up to 26%); under
    `host`, the record says what the nodes inherited, read in a namespace of their kind."""
    with EmulatedCluster(2, LINK_GBPS, congestion_control="reno") as cluster:
        nodes = [cluster.node_ns(k) for k in range(2)]
        assert [namespace_congestion_control(ns) for ns in nodes] == ["reno", "reno"]
        assert cluster.applied_link()["tcp_congestion_control"] == "reno"
    cluster = EmulatedCluster(2, LINK_GBPS, congestion_control="host")
    cluster.inherited = inherited_congestion_control()  # as launch/cluster/setup.py does
    with cluster:
        inherited = namespace_congestion_control(cluster.node_ns(0))
        assert cluster.applied_link()["tcp_congestion_control"] == inherited


def test_namespaces_go_after_a_failed_run_ctrl_c_and_sigterm(tmp_path):
    """The driver's path (EmulatedCluster around run_nodes) with nodes that fail."""
    plan = RunPlan("fail", 2, 2, 1, 2, tmp_path)
    cluster = EmulatedCluster(2, LINK_GBPS)
    failing = [
        cluster.wrap(NodeCommand(k, [sys.executable, "-c", f"import sys; sys.exit({k})"]))
        for k in range(2)
    ]
    with pytest.raises(RunFailed, match="node 1"), cluster, Progress() as progress:
        assert len(our_namespaces()) == 3  # switch + 2 nodes
        run_nodes(failing, plan, None, progress)
    assert our_namespaces() == []
    with pytest.raises(KeyboardInterrupt), EmulatedCluster(2, LINK_GBPS):
        raise KeyboardInterrupt  # Ctrl-C
    assert our_namespaces() == []
    # The driver's handler (launch/app.py): SIGTERM unwinds like Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        with pytest.raises(Stopped), EmulatedCluster(2, LINK_GBPS):
            os.kill(os.getpid(), signal.SIGTERM)  # `kill`, a scheduler's time limit
            time.sleep(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert our_namespaces() == []


def test_cleanup_removes_namespaces_of_killed_drivers():
    """A driver killed with SIGKILL cannot clean up: the next run (or --cleanup) does."""
    dead_pid = 4_194_305  # above the kernel's PID_MAX_LIMIT: no process has it
    stale = f"{NAME_PREFIX}{dead_pid}-dead-n0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        result = run_module("launch.cluster.emulated", ["--cleanup"], timeout=60)
        assert result.returncode == 0 and stale in result.stdout
        assert stale not in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
