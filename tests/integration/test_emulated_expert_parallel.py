"""EP across a throttled link (issue 20): moe_tiny under parallel=ep over 2 emulated nodes of 1
rank behind 20 Mbit/s is labelled interconnect-bound by its profiled breakdown and trains
fewer tokens per second per device than the same job with EP inside one node of 2 ranks
(root: network namespaces, tc). About a minute: the emulated run ~45 s, the local one ~20 s.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from launch.report.breakdown import breakdown_rows
from tests.conftest import FAST, run_launch

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not (shutil.which("ip") and shutil.which("tc")),
        reason="the emulated cluster needs root, ip and tc (network namespaces, tc tbf)",
    ),
]
LINK_GBPS = 0.02  # 20 Mbit/s
JOB = [
    *FAST,
    "model=moe_tiny",
    "parallel=ep",
    "parallel.ep=2",
    "gpu=cpu",
    "sweep=none",
    "train.steps=4",
    "train.warmup_steps=1",
    "profile.enabled=true",
    "profile.steps=2",
]


def run(tmp_path, name: str, cluster: list[str]) -> dict:
    out = tmp_path / name
    result = run_launch([*JOB, *cluster, f"run_dir={out}"], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-2000:]
    return json.loads((out / "summary.json").read_text())


def test_ep_across_a_slow_link_is_interconnect_bound_and_slower_per_device(tmp_path):
    across = run(
        tmp_path,
        "across",
        ["cluster=emulated", "cluster.nodes=2", "cluster.nproc_per_node=1"]
        + [f"cluster.link_gbps={LINK_GBPS}"],
    )
    inside = run(tmp_path, "inside", ["cluster=local", "cluster.nproc_per_node=2"])
    assert (across["nodes"], inside["nodes"]) == (2, 1)
    assert across["layout"]["ep"] == inside["layout"]["ep"] == 2
    assert across["comm_bytes_per_step"]["all_to_all"] > 0
    (row,) = breakdown_rows([across])
    assert row["label"] == "interconnect-bound", row["rule"]
    assert across["tokens_per_s_per_device"] < inside["tokens_per_s_per_device"]
