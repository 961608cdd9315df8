"""Bad multi-node input: one line naming the key, exit code 2, before anything is started."""

from __future__ import annotations

import socket

import pytest

from launch.cluster import emulated
from launch.cluster.setup import check_port_free, set_up_cluster
from launch.errors import ConfigError
from launch.plan import plan_runs
from launch.terminal import plain_console
from launch.validate import validate
from tests.conftest import FAST, compose_run_config

BAD = [
    (
        ["cluster=multinode", "cluster.hosts=[a,b,c]"],
        "cluster.hosts: 3 host(s) for cluster.nodes=2",
    ),
    (["cluster=multinode", "cluster.hosts=[a,b]", "cluster.node_rank=2"], "cluster.node_rank: 2"),
    (["cluster=slurm"], "launcher.name: cluster=slurm runs with launcher slurm, not torchrun"),
    (["launcher=deepspeed", "cluster.max_restarts=1"], "cluster.max_restarts: the deepspeed"),
    (
        ["launcher=deepspeed", "launcher.runner=ssh"],
        "launcher.runner: Invalid value 'ssh', expected one of [pdsh",
    ),
    (["launcher=slurm", "launcher.time=2h"], "launcher.time: '2h' is not a Slurm time"),
    (["launcher=slurm", "launcher.partition='gpu;x'"], "launcher.partition: 'gpu;x': letters"),
    # Each went into the job script as written (#SBATCH --cpus-per-task=-8).
    (["launcher=slurm", "launcher.cpus_per_gpu=-1"], "launcher.cpus_per_gpu: -1: must be >= 1"),
    (["launcher=slurm", "launcher.cpus_per_task=0"], "launcher.cpus_per_task: 0: must be >= 1"),
    (
        ["cluster=slurm", "launcher=slurm", "gpu=h100_sxm", "cluster.nproc_per_node=16"],
        "cluster.nproc_per_node: 16: a gpu=h100_sxm node holds 8 GPUs, and each rank takes one",
    ),
    (["fabric=pcie_eth", "+fabric.nccl_env.nccl_debug=INFO"], "fabric.nccl_env.nccl_debug"),
    (["cluster=emulated", "cluster.link_gbps=-1"], "cluster.link_gbps: -1.0: must be a finite"),
    # NaN ran an unthrottled link recorded as `gbps: .nan`; inf overflowed tc's rate.
    (["cluster=emulated", "cluster.link_gbps=nan"], "cluster.link_gbps: nan: must be a finite"),
    (["cluster=emulated", "cluster.link_gbps=inf"], "cluster.link_gbps: inf: must be a finite"),
    (["cluster=emulated", "cluster.link_latency_ms=nan"], "cluster.link_latency_ms: nan: must"),
    (
        ["cluster=emulated", "cluster.link_match_gpu=h900"],
        "cluster.link_match_gpu: unknown gpu profile 'h900'",
    ),
    (["cluster=emulated", "cluster.link_match=pcie"], "cluster.link_match: Invalid value 'pcie'"),
    # Keys of another choice, which ran a plain local job without a word.
    (
        ["cluster.hosts=[a,b]"],
        "cluster.hosts: ['a', 'b'] applies only to cluster=multinode, not cluster=local",
    ),
    (["cluster.node_rank=1"], "cluster.node_rank: 1 applies only to cluster=multinode"),
    (
        ["cluster.link_congestion_control=bbr"],
        "cluster.link_congestion_control: 'bbr' applies only to cluster=emulated",
    ),
    (
        ["cluster=emulated", "cluster.link_congestion_control=vegas"],
        "cluster.link_congestion_control: Invalid value 'vegas'",
    ),
    (["launcher.partition=gpu"], "launcher.partition: 'gpu' applies only to launcher=slurm"),
    (
        ["launcher.runner=openmpi"],
        "launcher.runner: 'openmpi' applies only to launcher=deepspeed, not launcher=torchrun",
    ),
]


@pytest.mark.parametrize("overrides, message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_launch_input_names_the_key(overrides, message):
    # Closed choices fail while composing (the schema's enums), the rest in validate.
    with pytest.raises(ConfigError) as caught:
        cfg = compose_run_config([*FAST, "sweep=none", "run_dir=/tmp/never", *overrides])
        validate(cfg, plan_runs(cfg))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_emulated_cluster_needs_root_ip_and_tc(monkeypatch):
    monkeypatch.setattr(emulated.os, "geteuid", lambda: 1000)
    with pytest.raises(ConfigError, match="cluster=emulated needs root"):
        emulated.check_requirements()
    monkeypatch.setattr(emulated.os, "geteuid", lambda: 0)
    monkeypatch.setattr(emulated.shutil, "which", lambda tool: None if tool == "tc" else "/x")
    with pytest.raises(ConfigError, match=r"needs tc \(package iproute2\)"):
        emulated.check_requirements()


def test_a_congestion_control_a_namespace_may_not_set_is_refused(monkeypatch, tmp_path):
    # The kernel lets a namespace other than the host's set only the allowed ones (EPERM
    # otherwise, in the first node's namespace, after setup had begun).
    allowed = tmp_path / "tcp_allowed_congestion_control"
    allowed.write_text("reno cubic\n")
    monkeypatch.setattr(emulated, "ALLOWED_CONGESTION_CONTROLS", str(allowed))
    emulated.check_congestion_control("cubic")
    emulated.check_congestion_control("host")  # inherits, whatever that is
    with pytest.raises(ConfigError) as caught:
        emulated.check_congestion_control("bbr")
    assert str(caught.value) == (
        "cluster.link_congestion_control: bbr may not be set inside a network namespace on "
        "this host (allowed: reno, cubic, or host); add it to "
        "net.ipv4.tcp_allowed_congestion_control (after `modprobe tcp_bbr` if it is not loaded)"
    )


def test_loss_based_is_cubic_where_allowed_else_reno(monkeypatch, tmp_path):
    allowed = tmp_path / "tcp_allowed_congestion_control"
    monkeypatch.setattr(emulated, "ALLOWED_CONGESTION_CONTROLS", str(allowed))
    allowed.write_text("reno cubic\n")
    assert emulated.loss_based_congestion_control() == "cubic"
    assert emulated.EmulatedCluster(2, 0.2).congestion_control == "cubic"
    allowed.write_text("reno bbr\n")  # a 6.18 VM kernel whose default is bbr
    assert emulated.loss_based_congestion_control() == "reno"
    cluster = emulated.EmulatedCluster(2, 0.2)
    assert cluster.applied_link()["tcp_congestion_control"] == "reno"
    emulated.check_congestion_control("loss_based")
    allowed.write_text("bbr\n")
    with pytest.raises(ConfigError) as caught:
        emulated.check_congestion_control("loss_based")
    assert str(caught.value) == (
        "cluster.link_congestion_control: loss_based: neither cubic nor reno may be set inside "
        "a network namespace on this host (allowed: bbr); name one of those, or host"
    )


def test_an_unreadable_inherited_congestion_control_is_one_line(monkeypatch):
    """`host` reads what a new namespace inherits in a scratch one: where namespaces cannot be
    made (a container without CAP_SYS_ADMIN), one line naming the key, not a traceback."""
    import subprocess

    def no_namespaces(args):
        return subprocess.CompletedProcess(args, 1, "", "mount --make-shared: Permission denied")

    monkeypatch.setattr(emulated, "run_ip", no_namespaces)
    with pytest.raises(ConfigError) as caught:
        emulated.inherited_congestion_control()
    message = str(caught.value)
    assert message.startswith("cluster.link_congestion_control: host: reading what a new")
    assert "Permission denied" in message and "\n" not in message


def test_rendezvous_port_in_use_on_the_head(launch_in_process, tmp_path):
    with socket.socket() as taken:
        taken.bind(("", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = compose_run_config(
            [
                *FAST,
                "sweep=none",
                "run_dir=/tmp/never",
                "cluster=multinode",
                "cluster.hosts=[a,b]",
                "cluster.nproc_per_node=1",
                f"cluster.master_port={port}",
            ]
        )
        with pytest.raises(ConfigError, match=f"cluster.master_port: port {port} is in use"):
            set_up_cluster(cfg, plan_runs(cfg), plain_console())
        # Through the CLI: one line, exit 2, nothing written.
        result = launch_in_process(
            *FAST,
            "sweep=none",
            "cluster=multinode",
            "cluster.hosts=[a,b]",
            "cluster.nproc_per_node=1",
            f"cluster.master_port={port}",
            f"run_dir={tmp_path / 'run'}",
        )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cluster.master_port: port {port} is in use on this machine")
    suggested = int(line.rsplit("cluster.master_port=", 1)[1].rstrip(")"))
    assert suggested != port and 1024 <= suggested <= 65535
    assert not (tmp_path / "run").exists()


def test_a_port_in_time_wait_after_the_last_run_is_free():
    """The last run's rendezvous port stays in TIME_WAIT for about a minute: the next run
    must not be refused (the store binds with SO_REUSEADDR, and so does the check)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the side that closes first keeps the port in TIME_WAIT
        client.close()
    check_port_free(port)


def test_deepspeed_slurm_runner_outside_an_allocation_is_refused(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    overrides = ["cluster=multinode", "cluster.hosts=[a,b]", "cluster.nproc_per_node=1"]
    cfg = compose_run_config(
        [*FAST, "sweep=none", "run_dir=/tmp/never", *overrides, "launcher=deepspeed"]
    )
    cfg.launcher.runner = "slurm"
    with pytest.raises(ConfigError, match=r"launcher.runner: runner=slurm .* inside `salloc"):
        set_up_cluster(cfg, plan_runs(cfg), plain_console())
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    set_up_cluster(cfg, plan_runs(cfg), plain_console())
