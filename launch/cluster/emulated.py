"""An emulated cluster on this machine: one network namespace per node, throttled links.

Layout (K nodes)::

    node namespace k:  eth0 = 10.77.0.(k+1)/24  ──veth──  p<k> ─┐
                                                               ├─ br0   (switch namespace)
    node namespace j:  eth0 = 10.77.0.(j+1)/24  ──veth──  p<j> ─┘

Every link is shaped with `tc tbf` at cluster.link_gbps in both directions (eth0 egress: what
the node sends; p<k> egress: what it receives), like a full-duplex NIC. Ranks of one node
share its namespace and reach each other over loopback, unthrottled, the way GPUs of a node
use NVLink. Nothing lives in the host's namespace: the addresses, the veths and the bridge
exist only inside namespaces created here, and deleting the namespaces removes them all.

Namespaces are named ``scaleprobe-<driver pid>-<tag>-...``, so a later run (or
``python -m launch.cluster.emulated --cleanup``) can remove what a killed driver left behind.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field

from launch.cluster.hosts import ClusterNode
from launch.errors import ConfigError
from launch.launchers.command import NodeCommand

NAME_PREFIX = "scaleprobe-"
# A private /24 that exists only inside the namespaces created here (never on the host).
SUBNET_PREFIX = "10.77.0."
NODE_IFACE = "eth0"
BRIDGE = "br0"
MAX_NODES = 250
# tbf queue: how long a packet may wait before it is dropped. Deep enough that TCP keeps the
# link busy (a shallow queue drops bursts and TCP backs off below the rate).
TBF_QUEUE_LATENCY_MS = 100


class EmulationError(RuntimeError):
    """Setting up the namespaces or links failed (after the partial setup was removed)."""


def check_requirements() -> None:
    """cluster=emulated needs root, `ip` and `tc`: say which is missing before anything starts."""
    if os.geteuid() != 0:
        raise ConfigError(
            "cluster.name",
            "cluster=emulated needs root (it creates network namespaces and tc qdiscs); "
            "run as root or use cluster=local",
        )
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise ConfigError(
            "cluster.name",
            f"cluster=emulated needs {' and '.join(missing)} (package iproute2) on PATH",
        )


CONGESTION_CONTROL_SYSCTL = "/proc/sys/net/ipv4/tcp_congestion_control"
# A namespace other than the host's may set only these (the kernel's tcp_cong.c refuses the
# rest with EPERM), whatever is loaded (tcp_available_congestion_control).
ALLOWED_CONGESTION_CONTROLS = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"


# `loss_based` (the default): the first of these a node namespace may set. The link model
# (launch/perfmodel/hardware.py TCP_GOODPUT) holds for a sender that keeps the tbf queue full,
# which both do; reno is built into every kernel and always allowed (tcp_cong.c marks it
# non-restricted), cubic is not allowed in namespaces everywhere (a 6.18 Firecracker guest with
# bbr as default allows only "reno bbr").
LOSS_BASED = ("cubic", "reno")


def allowed_congestion_controls() -> list[str]:
    with open(ALLOWED_CONGESTION_CONTROLS) as f:
        return f.read().split()


def loss_based_congestion_control() -> str:
    """cluster.link_congestion_control=loss_based resolved on this host: cubic, else reno."""
    allowed = allowed_congestion_controls()
    for name in LOSS_BASED:
        if name in allowed:
            return name
    raise ConfigError(
        "cluster.link_congestion_control",
        f"loss_based: neither {' nor '.join(LOSS_BASED)} may be set inside a network namespace "
        f"on this host (allowed: {', '.join(allowed)}); name one of those, or host",
    )


def check_congestion_control(name: str) -> None:
    """cluster.link_congestion_control must be one a node namespace may set."""
    if name == "host":
        return
    if name == "loss_based":
        loss_based_congestion_control()
        return
    allowed = allowed_congestion_controls()
    if name not in allowed:
        raise ConfigError(
            "cluster.link_congestion_control",
            f"{name} may not be set inside a network namespace on this host (allowed: "
            f"{', '.join(allowed)}, or host); add it to net.ipv4.tcp_allowed_congestion_control "
            f"(after `modprobe tcp_{name}` if it is not loaded)",
        )


def inherited_congestion_control() -> str:
    """What a new namespace starts with (the host's default, as the kernel sets it in a new
    namespace, not necessarily this process's): read in a scratch namespace."""
    probe = f"{NAME_PREFIX}{os.getpid()}-ccprobe"
    try:
        _must(["ip", "netns", "add", probe])
        read = run_ip(["ip", "netns", "exec", probe, "cat", CONGESTION_CONTROL_SYSCTL])
        if read.returncode != 0:
            raise EmulationError(f"reading it failed: {read.stderr.strip()}")
        return read.stdout.strip()
    except EmulationError as exc:  # e.g. a container without CAP_SYS_ADMIN: one line, exit 2
        raise ConfigError(
            "cluster.link_congestion_control",
            f"host: reading what a new namespace inherits failed ({exc}); name one instead "
            "(cubic, reno, bbr)",
        ) from exc
    finally:
        delete_namespace(probe)


def set_congestion_control(ns: str, name: str) -> None:
    """TCP in namespace ``ns`` uses congestion control ``name`` (a new namespace inherits
    the host's)."""
    # /proc/sys/net is the namespace's of the process that opens it.
    _must(["ip", "netns", "exec", ns, "sh", "-c", f"echo {name} > {CONGESTION_CONTROL_SYSCTL}"])


def tbf_args(link_gbps: float) -> list[str]:
    """`tc ... tbf` arguments for a link of link_gbps per direction."""
    rate_bits = int(link_gbps * 1e9)
    # The bucket must hold at least one timer tick of traffic (rate/HZ, HZ >= 100 here) and one
    # full 64 KiB GSO segment; more would let bursts run above the rate.
    burst_bytes = max(64 * 1024, rate_bits // 8 // 100)
    return [
        "tbf",
        "rate",
        f"{rate_bits}bit",
        "burst",
        str(burst_bytes),
        "latency",
        f"{TBF_QUEUE_LATENCY_MS}ms",
    ]


def run_ip(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=30)


def _must(args: list[str]) -> None:
    result = run_ip(args)
    if result.returncode != 0:
        raise EmulationError(f"`{' '.join(args)}` failed: {result.stderr.strip()}")


def list_namespaces() -> list[str]:
    result = run_ip(["ip", "netns", "list"])
    # Lines look like `name` or `name (id: 3)`.
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def delete_namespace(name: str) -> None:
    """Kill whatever still runs inside, then delete it (the veths and bridge go with it)."""
    pids = run_ip(["ip", "netns", "pids", name]).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    run_ip(["ip", "netns", "del", name])


def netem_available() -> bool:
    """Whether this kernel has sch_netem (link latency): try it in a scratch namespace."""
    probe = f"{NAME_PREFIX}{os.getpid()}-probe"
    try:
        _must(["ip", "netns", "add", probe])
        # A veth pair: the one device type every kernel that runs namespaces here has.
        _must(
            ["ip", "-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"]
        )
        result = run_ip(["tc", "-n", probe, "qdisc", "add", "dev", "probe0", "root", "netem"])
        return result.returncode == 0
    finally:
        delete_namespace(probe)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Namespaces of drivers that no longer run (killed with SIGKILL): remove them."""
    removed = []
    for name in list_namespaces():
        match = re.match(rf"^{NAME_PREFIX}(\d+)-", name)
        if match and not _pid_alive(int(match[1])):
            delete_namespace(name)
            removed.append(name)
    return removed


@dataclass
class EmulatedCluster:
    """K node namespaces behind one switch namespace; a context manager that always cleans up."""

    nodes: int
    link_gbps: float
    latency_ms: float = 0.0
    # TCP congestion control set in each node namespace; `host` leaves the inherited one;
    # `loss_based` becomes cubic or reno as this host allows (__post_init__).
    congestion_control: str = "loss_based"
    # Under `host`: what the node namespaces inherit (inherited_congestion_control), once
    # probed; None records "host".
    inherited: str | None = None
    tag: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(2)}")
    created: list[str] = field(default_factory=list)
    latency_applied: bool = False

    def __post_init__(self) -> None:
        # Resolved at once, so that applied_link (summary.json, the report) names what runs.
        if self.congestion_control == "loss_based":
            self.congestion_control = loss_based_congestion_control()

    @property
    def switch_ns(self) -> str:
        return f"{NAME_PREFIX}{self.tag}-sw"

    def node_ns(self, k: int) -> str:
        return f"{NAME_PREFIX}{self.tag}-n{k}"

    @staticmethod
    def node_addr(k: int) -> str:
        return f"{SUBNET_PREFIX}{k + 1}"

    def cluster_nodes(self) -> list[ClusterNode]:
        return [ClusterNode(self.node_ns(k), self.node_addr(k)) for k in range(self.nodes)]

    def wrap(self, command: NodeCommand) -> NodeCommand:
        """The node's command run inside its namespace, its sockets on the emulated link."""
        env = {
            **command.env,
            # gloo and NCCL's bootstrap pick an interface; eth0 is the node's only link.
            "GLOO_SOCKET_IFNAME": NODE_IFACE,
            "NCCL_SOCKET_IFNAME": NODE_IFACE,
        }
        argv = ["ip", "netns", "exec", self.node_ns(command.node_rank), *command.argv]
        return NodeCommand(command.node_rank, argv, env)

    def applied_link(self) -> dict:
        """What summary.json records about the link (see train/measure/cluster_record.py)."""
        return {
            "gbps": self.link_gbps,
            "latency_ms": self.latency_ms if self.latency_applied else 0.0,
            "latency_requested_ms": self.latency_ms,
            "latency_applied": self.latency_applied,
            "qdisc": " ".join(tbf_args(self.link_gbps)) if self.link_gbps > 0 else "none",
            "tcp_congestion_control": (
                (self.inherited or "host")
                if self.congestion_control == "host"
                else self.congestion_control
            ),
            "subnet": f"{SUBNET_PREFIX}0/24",
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> EmulatedCluster:
        # SIGTERM and SIGHUP unwind like Ctrl-C (launch/app.py), so __exit__ always runs.
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        if not 1 <= self.nodes <= MAX_NODES:
            raise EmulationError(f"{self.nodes} nodes: the /24 holds 1..{MAX_NODES}")
        remove_stale_namespaces()
        self._add_namespace(self.switch_ns)
        _must(["ip", "-n", self.switch_ns, "link", "add", BRIDGE, "type", "bridge"])
        _must(["ip", "-n", self.switch_ns, "link", "set", BRIDGE, "up"])
        for k in range(self.nodes):
            self._add_node(k)

    def _add_namespace(self, name: str) -> None:
        _must(["ip", "netns", "add", name])
        self.created.append(name)
        _must(["ip", "-n", name, "link", "set", "lo", "up"])

    def _add_node(self, k: int) -> None:
        ns, port = self.node_ns(k), f"p{k}"
        self._add_namespace(ns)
        sw = ["ip", "-n", self.switch_ns]
        _must([*sw, "link", "add", port, "type", "veth", "peer", "name", NODE_IFACE, "netns", ns])
        _must([*sw, "link", "set", port, "master", BRIDGE, "up"])
        _must(["ip", "-n", ns, "addr", "add", f"{self.node_addr(k)}/24", "dev", NODE_IFACE])
        _must(["ip", "-n", ns, "link", "set", NODE_IFACE, "up"])
        if self.congestion_control != "host":
            set_congestion_control(ns, self.congestion_control)
        if self.link_gbps > 0:
            self._shape(ns, NODE_IFACE, delay=True)  # what the node sends
            self._shape(self.switch_ns, port, delay=False)  # what it receives

    def _shape(self, ns: str, dev: str, delay: bool) -> None:
        tc = ["tc", "-n", ns, "qdisc", "add", "dev", dev]
        if delay and self.latency_ms > 0:
            # netem holds the delay, tbf under it the rate; the delay is one way, per link.
            netem = run_ip([*tc, "root", "handle", "1:", "netem", "delay", f"{self.latency_ms}ms"])
            if netem.returncode == 0:
                self.latency_applied = True
                _must([*tc, "parent", "1:1", "handle", "10:", *tbf_args(self.link_gbps)])
                return
            if "unknown" not in netem.stderr.lower():
                raise EmulationError(f"netem on {ns}/{dev} failed: {netem.stderr.strip()}")
            # This kernel has no sch_netem: shape the rate only, and say so (summary.json).
        _must([*tc, "root", *tbf_args(self.link_gbps)])

    def destroy(self) -> None:
        for name in reversed(self.created):
            delete_namespace(name)
        self.created.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.cluster.emulated",
        description="Manage the emulated cluster's network namespaces.",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove namespaces left by drivers that were killed (SIGKILL) mid-run",
    )
    args = parser.parse_args(argv)
    if not args.cleanup:
        names = [n for n in list_namespaces() if n.startswith(NAME_PREFIX)]
        print("\n".join(names) if names else "no emulated-cluster namespaces")
        return 0
    removed = remove_stale_namespaces()
    print(f"removed {len(removed)} namespace(s)" + (": " + ", ".join(removed) if removed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
