"""The collective benchmark on 2 local ranks: busbw is bytes/time times nccl-tests' factor."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import cli_env
from train.bench.comm_rank import collective, message_sizes, scopes
from train.runtime.distributed import RankInfo
from train.spec.bus import BUS_FACTORS

# nccl-tests PERFORMANCE.md, written out for n = 2 rather than taken from the code under test.
FACTORS_AT_2 = {
    "all_reduce": 1.0,  # 2(n-1)/n
    "all_gather": 0.5,  # (n-1)/n
    "reduce_scatter": 0.5,
    "all_to_all": 0.5,
    "broadcast": 1.0,
}


@pytest.fixture(scope="module")
def comm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("comm")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "launch.comm",
            "gpu=cpu",
            "cluster.nproc_per_node=2",
            "comm.min_bytes=4096",
            "comm.max_bytes=65536",
            "comm.seconds_per_op=1",
            "comm.seconds_per_size=0.05",
            "comm.max_iters=5",
            f"run_dir={out}",
        ],
        cwd=out,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in out.rglob("*.log"))
    (out / "everything_printed.txt").write_text(result.stdout + result.stderr + logs)
    return out, json.loads((out / "comm.json").read_text()), result.stdout


def test_every_op_and_size_is_measured(comm_run):
    out, report, stdout = comm_run
    assert (report["world_size"], report["nodes"], report["backend"]) == (2, 1, "gloo")
    points = report["results"]
    assert {p["op"] for p in points} == set(FACTORS_AT_2)
    assert {p["scope"] for p in points} == {"intra-node"}
    for op in FACTORS_AT_2:
        sizes = [p["bytes"] for p in points if p["op"] == op]
        assert sizes == message_sizes(4096, 65536)[: len(sizes)] and len(sizes) >= 3
    assert (out / "comm.png").read_bytes()[:4] == b"\x89PNG"
    assert "all_reduce" in stdout and "busbw" in stdout
    # Its own lines (launch/bench/comm_job.py), not a training run's layout, precision, loss.
    assert "timing all_reduce, all_gather" in " ".join(stdout.split())
    assert not {"layout:", "precision:", "tok/s"} & set(stdout.split())


def test_the_timed_calls_are_not_deprecated_ones(comm_run):
    """torch 2.13 deprecated all_gather_into_tensor and reduce_scatter_tensor: each call warns,
    inside the timed loop, and the rank printed a FutureWarning for each."""
    printed = (comm_run[0] / "everything_printed.txt").read_text()
    assert "deprecated" not in printed


def test_busbw_is_bytes_over_time_times_the_factor(comm_run):
    for p in comm_run[1]["results"]:
        algbw = p["bytes"] / p["time_s"] / 1e9
        assert p["algbw_gbytes_per_s"] == pytest.approx(algbw, rel=1e-9)
        assert p["bus_factor"] == FACTORS_AT_2[p["op"]]
        assert p["busbw_gbytes_per_s"] == pytest.approx(algbw * FACTORS_AT_2[p["op"]], rel=1e-9)
        assert 1 <= p["iters"] <= 5


def test_bytes_follow_nccl_tests_and_round_to_whole_shares():
    cpu = torch.device("cpu")
    for op in BUS_FACTORS:
        # all_gather counts the gathered output, reduce_scatter the input: the full buffer.
        _, counted = collective(op, 4096, None, [0, 1, 2], cpu)
        assert counted == 1023 * 4  # 1024 floats rounded down to a multiple of 3 ranks
    assert BUS_FACTORS["all_reduce"](8) == pytest.approx(1.75)
    assert BUS_FACTORS["all_gather"](8) == pytest.approx(0.875)


def test_groups_split_intra_and_inter_node():
    def rank(world, per_node):
        return RankInfo(0, 0, world, per_node, torch.device("cpu"), "gloo")

    assert scopes(rank(4, 4)) == [("intra-node", [[0, 1, 2, 3]])]
    assert scopes(rank(2, 1)) == [("inter-node", [[0, 1]])]
    assert scopes(rank(4, 2)) == [
        ("world", [[0, 1, 2, 3]]),
        ("intra-node", [[0, 1], [2, 3]]),
        ("inter-node", [[0, 2], [1, 3]]),
    ]
