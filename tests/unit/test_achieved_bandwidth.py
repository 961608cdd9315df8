"""Achieved bandwidth per collective kind, with each group's size and link
(train/measure/bandwidth.py; issue 22 item 2: not the world size and the NIC for all)."""

from __future__ import annotations

import pytest

from launch.conf_tree import load_gpu_profile
from tests.conftest import compose_run_config
from train.measure.bandwidth import MEASURED_KINDS, Link, LinkRates, achieved_bandwidth, link_rates
from train.spec.bus import bus_factor
from train.spec.degrees import Degrees, plan_layout
from train.spec.traffic import Collective, Phase, StepShape, step_collectives

H100 = link_rates(cluster_name="slurm", applied_link=None, gpu=load_gpu_profile("h100_sxm"))
NVLINK, NIC = 900 / 2, 400 / 8  # H100 SXM: GB/s per direction
BUSY = {0: {kind: [0.02, 0.01, 0.03] for kind in MEASURED_KINDS}, 1: {}}  # median 0.02 s


def measured(parallel: str, *, nodes: int, per_node: int, links: LinkRates = H100, extra=()):
    """``achieved_bandwidth`` of gpt_1_3b in bf16 under ``parallel`` on nodes x per_node."""
    cfg = compose_run_config(
        [
            "model=gpt_1_3b",
            f"parallel={parallel}",
            "train.global_batch=16",
            "train.micro_batch=1",
            *extra,
        ]
    )
    plan = plan_layout(cfg, nodes * per_node, per_node)
    shape = StepShape(micro_batch=1, seq_len=2048, accum_steps=1, grad_clip=True, precision="bf16")
    return achieved_bandwidth(
        BUSY,
        collectives=step_collectives(cfg.model, plan, shape),
        degrees=plan.degrees,
        nproc_per_node=per_node,
        links=links,
    )


def test_achieved_bandwidth_is_bytes_over_time_with_the_ring_factor():
    gradients = Collective("all_reduce", "gradients", 10**9, 1, ("dp_replicate",), Phase.exposed)
    out = achieved_bandwidth(
        {0: {"all_reduce": [2.0, 4.0, 3.0]}, 1: {"all_reduce": [3.0]}},
        collectives=[gradients],
        degrees=Degrees(dp_replicate=4, dp_shard=1, tp=1),
        nproc_per_node=4,
        links=LinkRates(Link("nvlink", 0.5, "test"), Link("nic", 1e-3, "test")),
    )
    ar = out["kinds"]["all_reduce"]
    assert ar["seconds_per_step"] == 3.0
    assert ar["algbw_gbytes_per_s"] == pytest.approx(1 / 3)
    assert ar["busbw_gbytes_per_s"] == pytest.approx(1 / 3 * 1.5)
    assert ar["busbw_of_link"] == pytest.approx(1.0)
    assert (ar["group_size"], ar["link"]) == (4, "nvlink")
    assert "all_gather" not in out["kinds"]


def test_hsdp_two_nodes_of_eight_replicas_over_the_nic_shards_over_nvlink():
    kinds = measured("hsdp", nodes=2, per_node=8)["kinds"]
    replicas, shards = kinds["all_reduce"], kinds["reduce_scatter"]
    # The replicas' all-reduce: 2 ranks over InfiniBand (bus factor 1, not 16 ranks' 1.875).
    assert (replicas["group_size"], replicas["link"]) == (2, "nic")
    assert replicas["busbw_gbytes_per_s"] == pytest.approx(replicas["algbw_gbytes_per_s"], rel=1e-4)
    assert replicas["busbw_of_link"] == pytest.approx(replicas["busbw_gbytes_per_s"] / NIC)
    # The gradient norm rides along over all 16 ranks: listed, too small to decide the link.
    assert [(g["group_size"], g["link"]) for g in replicas["groups"]] == [(2, "nic"), (16, "nic")]
    for kind in ("reduce_scatter", "all_gather"):
        record = kinds[kind]
        assert (record["group_size"], record["link"]) == (8, "nvlink")
        factor = bus_factor(kind, 8)
        assert record["busbw_gbytes_per_s"] == pytest.approx(record["algbw_gbytes_per_s"] * factor)
        assert record["busbw_of_link"] == pytest.approx(record["busbw_gbytes_per_s"] / NVLINK)
    assert shards["bytes_per_step"] > replicas["bytes_per_step"]


def test_tp_fsdp_on_two_nodes_says_which_group_crossed_which_link():
    kinds = measured("tp_fsdp", nodes=2, per_node=8, extra=["parallel.sequence_parallel=true"])[
        "kinds"
    ]
    for kind in ("all_gather", "reduce_scatter"):
        record = kinds[kind]
        # TP's activations inside the node, FSDP's parameters and gradients across nodes.
        groups = {tuple(g["dims"]): (g["group_size"], g["link"]) for g in record["groups"]}
        assert groups == {("tp",): (8, "nvlink"), ("dp_shard",): (2, "nic")}
        assert record["link"] == "mixed" and record["busbw_of_link"] is None
        assert "2 groups" in record["mixed_groups"]
        assert sum(g["bytes_per_step"] for g in record["groups"]) == record["bytes_per_step"]
        bus_bytes = sum(
            g["bytes_per_step"] * bus_factor(kind, g["group_size"]) for g in record["groups"]
        )
        assert record["busbw_gbytes_per_s"] == pytest.approx(bus_bytes / 0.02 / 1e9)
    norms = kinds["all_reduce"]  # TP's norm gradients (NVLink) and the 4-byte gradient norm
    assert (norms["group_size"], norms["link"]) == (8, "nvlink")
    assert norms["busbw_of_link"] == pytest.approx(norms["busbw_gbytes_per_s"] / NVLINK)


def test_one_node_ddp_runs_over_loopback_on_cpu_and_nvlink_on_gpu():
    cpu = link_rates(cluster_name="local", applied_link=None, gpu=None)
    ar = measured("ddp", nodes=1, per_node=2, links=cpu)["kinds"]["all_reduce"]
    assert (ar["group_size"], ar["link"], ar["busbw_of_link"]) == (2, "loopback", None)
    ar = measured("ddp", nodes=1, per_node=8)["kinds"]["all_reduce"]
    assert (ar["group_size"], ar["link"]) == (8, "nvlink")
    assert ar["busbw_of_link"] == pytest.approx(ar["busbw_gbytes_per_s"] / NVLINK)


@pytest.mark.parametrize(
    "parallel", ["ddp", "fsdp", "zero1", "zero2", "zero3", "tp", "tp_fsdp", "pp", "pp_fsdp"]
)
def test_one_node_traffic_is_never_compared_with_the_nic(parallel):
    out = measured(parallel, nodes=1, per_node=8)
    assert out["kinds"]
    for record in out["kinds"].values():
        assert record["link"] == "nvlink"
        assert {g["link"] for g in record["groups"]} == {"nvlink"}
        assert record["busbw_of_link"] == pytest.approx(record["busbw_gbytes_per_s"] / NVLINK)


def test_emulated_nodes_cross_the_emulated_link_and_talk_over_loopback_inside():
    links = link_rates(cluster_name="emulated", applied_link={"gbps": 0.2}, gpu=None)
    assert links.inter_node == Link("emulated", 0.025, "emulated link (0.2 Gbit/s, tc)")
    across = measured("ddp", nodes=2, per_node=1, links=links)["kinds"]["all_reduce"]
    assert (across["link"], across["group_size"]) == ("emulated", 2)
    assert across["busbw_of_link"] == pytest.approx(across["busbw_gbytes_per_s"] / 0.025)
    inside = measured("ddp", nodes=1, per_node=2, links=links)["kinds"]["all_reduce"]
    assert (inside["link"], inside["busbw_of_link"]) == ("loopback", None)
