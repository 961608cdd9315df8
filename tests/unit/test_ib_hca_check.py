"""NCCL_IB_HCA against the node's HCAs (a fake /sys/class/infiniband in tmp_path)."""

from __future__ import annotations

import pytest

from train.measure import cluster_record
from train.measure.cluster_record import gather_fabric_warnings, ib_hca_warning


@pytest.fixture
def sysfs(tmp_path):
    """Two HCAs, mlx5_0 and mlx5_1, one port each, and a RoCE bond with ports 1 and 2."""
    root = tmp_path / "infiniband"
    for hca, ports in {"mlx5_0": ["1"], "mlx5_1": ["1"], "mlx5_bond_0": ["1", "2"]}.items():
        for port in ports:
            (root / hca / "ports" / port).mkdir(parents=True)
    return root


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "mlx5",
        "mlx5_0",
        "=mlx5_0,mlx5_1",
        "=mlx5_0:1,mlx5_1:1",
        "mlx5_bond_0:2",
        "^mlx5_1",
        "^=mlx5_0,mlx5_1",
    ],
)
def test_lists_that_fit_the_node(sysfs, value):
    assert ib_hca_warning(value, sysfs) is None


@pytest.mark.parametrize("value", ["mlx4", "=mlx5", "=mlx5_7,mlx5_8", "mlx5_0:2", "ib"])
def test_lists_that_name_nothing_here_mean_sockets(sysfs, value):
    warning = ib_hca_warning(value, sysfs)
    assert warning.startswith(f"NCCL_IB_HCA={value} names no HCA of this node")
    assert "mlx5_0, mlx5_1, mlx5_bond_0" in warning and "sockets (TCP)" in warning


def test_some_names_missing_are_named(sysfs):
    warning = ib_hca_warning("=mlx5_0,mlx5_3:1,mlx5_1:2", sysfs)
    assert "mlx5_3:1, mlx5_1:2 not on this node" in warning and "uses the rest" in warning


def test_excluding_everything_means_sockets(sysfs):
    assert "excludes every HCA" in ib_hca_warning("^mlx5", sysfs)
    assert ib_hca_warning("^=mlx5", sysfs) is None  # exact: no HCA is called just mlx5


def test_a_node_without_infiniband(tmp_path):
    warning = ib_hca_warning("mlx5_0", tmp_path / "missing")
    assert "names no HCA" in warning and "is empty or missing" in warning


def test_only_nccl_ranks_first_on_their_node_check(sysfs, monkeypatch):
    monkeypatch.setenv("NCCL_IB_HCA", "=mlx5_9")
    monkeypatch.setattr(cluster_record.socket, "gethostname", lambda: "node7")
    [warning] = gather_fabric_warnings(local_rank=0, backend="nccl", sysfs=sysfs)
    assert warning.startswith("node7: NCCL_IB_HCA==mlx5_9 names no HCA")
    assert gather_fabric_warnings(local_rank=1, backend="nccl", sysfs=sysfs) == []
    assert gather_fabric_warnings(local_rank=0, backend="gloo", sysfs=sysfs) == []
