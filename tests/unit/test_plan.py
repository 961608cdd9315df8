from pathlib import Path

import pytest

from launch.errors import ConfigError
from launch.plan import config_for, plan_runs
from tests.conftest import compose_run_config
from train.spec.degrees import plan_layout


def plans_for(*overrides: str):
    return plan_runs(compose_run_config(["run_dir=/tmp/sweep", *overrides]))


def test_single_run_uses_the_cluster_shape():
    (plan,) = plans_for("sweep=none", "cluster.nproc_per_node=2")
    assert (plan.world_size, plan.nodes, plan.nproc_per_node) == (2, 1, 2)
    assert plan.run_dir == Path("/tmp/sweep")


def test_strong_scaling_keeps_the_global_batch():
    plans = plans_for("sweep=strong", "sweep.world_sizes=[1,2]", "train.global_batch=8")
    assert [p.global_batch for p in plans] == [8, 8]
    assert [p.run_dir.name for p in plans] == ["ws1", "ws2"]


def test_weak_scaling_keeps_the_per_device_batch():
    plans = plans_for("sweep=weak", "sweep.world_sizes=[1,2]", "train.global_batch=4")
    assert [p.global_batch // p.world_size for p in plans] == [4, 4]


def test_a_sweep_fills_nodes_before_crossing_to_the_next():
    cfg = compose_run_config(
        [
            "run_dir=/tmp/s",
            "sweep=strong",
            "sweep.world_sizes=[1,8,16]",
            "cluster.nproc_per_node=8",
            "train.global_batch=64",
        ]
    )
    cfg.cluster.nodes = 2  # a multi-node cluster profile sets this
    plans = plan_runs(cfg)
    assert [(p.nodes, p.nproc_per_node) for p in plans] == [(1, 1), (1, 8), (2, 8)]


def test_world_size_not_divisible_by_nproc_per_node_is_refused():
    cfg = compose_run_config(["run_dir=/tmp/s", "sweep=strong", "sweep.world_sizes=[2,3]"])
    cfg.cluster.nodes = 2
    with pytest.raises(ConfigError, match="sweep.world_sizes: world size 3 is not divisible"):
        plan_runs(cfg)


def test_a_local_sweep_beyond_one_node_is_refused():
    with pytest.raises(ConfigError, match="needs 2 nodes"):
        plans_for("sweep=strong", "sweep.world_sizes=[1,4]")


def test_config_for_a_run_carries_its_shape_and_sweep_id():
    cfg = compose_run_config(["run_dir=/tmp/s", "sweep=weak", "sweep.world_sizes=[1,2]"])
    plan = plan_runs(cfg)[1]
    run_cfg = config_for(cfg, plan, "sweep-1")
    assert run_cfg.cluster.nproc_per_node == 2 and run_cfg.resolved.sweep_id == "sweep-1"
    assert run_cfg.run_dir == "/tmp/s/ws2" and cfg.run_dir == "/tmp/s"  # original untouched


def test_a_world_size_too_small_for_the_fixed_degrees_names_them_not_the_rest():
    """The default weak sweep's world size 1 under parallel=pp_fsdp (pp 2) said
    `parallel.dp_shard: -1 (the rest) is world size 1 / 2`, naming the key the user did not
    set; it names the degree that does not fit and the way out."""
    cfg = compose_run_config(["run_dir=/tmp/s", "parallel=pp_fsdp"])
    with pytest.raises(ConfigError, match=r"parallel.pp: pp 2 does not divide world size 1 .*"
                       r"sweep.world_sizes=\[2,4\], or sweep=none"):  # fmt: skip
        plan_layout(cfg, 1, 1)
    two = ["parallel=tp_fsdp", "parallel.tp=2", "parallel.dp_replicate=2"]
    cfg = compose_run_config(["run_dir=/tmp/s", *two])
    with pytest.raises(ConfigError, match=r"replicate 2 x tp 2 = 4 ranks does not divide world s"):
        plan_layout(cfg, 2, 2)
