"""The nodes of a multi-node run: from `cluster.hosts` or a `host slots=N` hostfile.

The hostfile format is DeepSpeed's (one `host slots=N` per line, `#` comments). The parser
is stricter than DeepSpeed's own (which accepts trailing junk after `slots=N`): a line that
is not exactly `host slots=N` is refused, so a typo cannot silently drop a node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from launch.errors import ConfigError
from train.spec.config import RunConfig

HOSTFILE_LINE = re.compile(r"^(?P<host>[A-Za-z0-9_.:\[\]-]+)\s+slots=(?P<slots>[1-9][0-9]*)$")


@dataclass(frozen=True)
class HostSlots:
    host: str
    slots: int


@dataclass(frozen=True)
class ClusterNode:
    """One node: the name others know it by, and its address on the training fabric."""

    name: str
    addr: str

    @property
    def rendezvous_host(self) -> str:
        return self.addr or self.name


def parse_hostfile(text: str, source: str = "hostfile") -> list[HostSlots]:
    """Every `host slots=N` line in order; raises ConfigError naming the first bad line."""
    entries: list[HostSlots] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = HOSTFILE_LINE.match(line)
        if not match:
            raise ConfigError(
                "cluster.hostfile", f"{source}:{number}: {line!r} is not `host slots=N`"
            )
        host, slots = match["host"], int(match["slots"])
        if host in seen:
            raise ConfigError("cluster.hostfile", f"{source}:{number}: duplicate host {host!r}")
        seen.add(host)
        entries.append(HostSlots(host, slots))
    if not entries:
        raise ConfigError("cluster.hostfile", f"{source}: no `host slots=N` lines")
    slot_counts = {e.slots for e in entries}
    if len(slot_counts) > 1:
        # A run places nproc_per_node ranks on every node; uneven nodes have no such number.
        listing = ", ".join(f"{e.host}={e.slots}" for e in entries)
        raise ConfigError("cluster.hostfile", f"{source}: unequal slots per host ({listing})")
    return entries


def format_hostfile(hosts: list[str], slots: int) -> str:
    return "".join(f"{host} slots={slots}\n" for host in hosts)


def multinode_hosts(cfg: RunConfig) -> list[ClusterNode]:
    """cluster=multinode's nodes in node-rank order, checked against cluster.nodes."""
    c = cfg.cluster
    if c.hosts and c.hostfile:
        raise ConfigError("cluster.hostfile", "give cluster.hosts or cluster.hostfile, not both")
    if c.hostfile:
        path = Path(c.hostfile)
        if not path.is_file():
            what = "a directory; expected a hostfile" if path.is_dir() else "no such file"
            raise ConfigError("cluster.hostfile", f"{c.hostfile}: {what}")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ConfigError(
                "cluster.hostfile", f"{c.hostfile}: not text; expected `host slots=N` lines"
            ) from None
        entries = parse_hostfile(text, c.hostfile)
        if entries[0].slots != c.nproc_per_node:
            raise ConfigError(
                "cluster.hostfile",
                f"{c.hostfile} gives {entries[0].slots} slots per host, "
                f"cluster.nproc_per_node={c.nproc_per_node}",
            )
        names = [e.host for e in entries]
        key = "cluster.hostfile"
    else:
        names = list(c.hosts)
        key = "cluster.hosts"
        if not names:
            raise ConfigError(key, "cluster=multinode needs cluster.hosts or cluster.hostfile")
        for name in names:
            if not HOSTFILE_LINE.match(f"{name} slots=1"):
                raise ConfigError(key, f"{name!r} is not a host name or address")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(key, f"duplicate host(s): {', '.join(duplicates)}")
    if len(names) != c.nodes:
        raise ConfigError(key, f"{len(names)} host(s) for cluster.nodes={c.nodes}")
    addrs = list(c.fabric_addrs)
    if addrs and len(addrs) != len(names):
        raise ConfigError(
            "cluster.fabric_addrs", f"{len(addrs)} address(es) for {len(names)} host(s)"
        )
    for addr in addrs:
        if not HOSTFILE_LINE.match(f"{addr} slots=1"):
            raise ConfigError("cluster.fabric_addrs", f"{addr!r} is not an address")
    return [ClusterNode(name, addrs[i] if addrs else "") for i, name in enumerate(names)]
