"""The `host slots=N` hostfile: a strict parser, and the nodes a multinode config names."""

from __future__ import annotations

import pytest

from launch.cluster.hosts import format_hostfile, multinode_hosts, parse_hostfile
from launch.errors import ConfigError
from tests.conftest import compose_run_config


def test_parses_hosts_in_order_with_comments_and_blank_lines():
    text = "# two nodes\nnode-a slots=8\n\n  node-b   slots=8  \n"
    entries = parse_hostfile(text)
    assert [(e.host, e.slots) for e in entries] == [("node-a", 8), ("node-b", 8)]
    assert format_hostfile(["node-a", "node-b"], 8) == "node-a slots=8\nnode-b slots=8\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("node-a slots=8\nnode-b\n", "hostfile:2: 'node-b' is not `host slots=N`"),
        ("node-a slots=8 extra\n", "is not `host slots=N`"),  # DeepSpeed's parser accepts this
        ("node-a slots=0\n", "is not `host slots=N`"),
        ("node-a slots=eight\n", "is not `host slots=N`"),
        ("node-a;rm slots=8\n", "is not `host slots=N`"),
        ("node-a slots=8\nnode-a slots=8\n", "hostfile:2: duplicate host 'node-a'"),
        ("node-a slots=8\nnode-b slots=4\n", "unequal slots per host (node-a=8, node-b=4)"),
        ("# nothing\n\n", "no `host slots=N` lines"),
    ],
)
def test_bad_hostfiles_name_the_line(text, message):
    with pytest.raises(ConfigError, match="cluster.hostfile") as caught:
        parse_hostfile(text)
    assert message in str(caught.value)


def multinode(*overrides):
    return compose_run_config(["cluster=multinode", "run_dir=/tmp/x", *overrides])


def test_hostfile_and_hosts_are_checked_against_the_cluster(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("a slots=8\nb slots=8\n")
    nodes = multinode(f"cluster.hostfile={hostfile}")
    assert [n.name for n in multinode_hosts(nodes)] == ["a", "b"]
    binary = tmp_path / "binary"  # a UnicodeDecodeError traceback
    binary.write_bytes(bytes(range(128, 256)))
    bad = [
        (["cluster.hosts=[a,b,c]"], "cluster.hosts: 3 host(s) for cluster.nodes=2"),
        (["cluster.hosts=[a,a]"], "cluster.hosts: duplicate host(s): a"),
        ([], "cluster.hosts: cluster=multinode needs cluster.hosts or cluster.hostfile"),
        ([f"cluster.hostfile={hostfile}", "cluster.nproc_per_node=4"], "gives 8 slots per host"),
        (["cluster.hosts=[a,b]", "cluster.fabric_addrs=[10.0.0.1]"], "1 address(es) for 2"),
        ([f"cluster.hostfile={tmp_path / 'none'}"], "none: no such file"),
        ([f"cluster.hostfile={tmp_path}"], f"{tmp_path}: a directory; expected a hostfile"),
        ([f"cluster.hostfile={binary}"], "binary: not text; expected `host slots=N` lines"),
    ]
    for overrides, message in bad:
        with pytest.raises(ConfigError) as caught:
            multinode_hosts(multinode(*overrides))
        assert message in str(caught.value), overrides
