from pathlib import Path

import pytest

from launch.errors import ConfigError
from launch.plan import config_for, plan_runs
from tests.conftest import compose_run_config


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
