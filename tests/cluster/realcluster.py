"""A real cluster on this machine for the tests: munge, Slurm, sshd, pdsh and MPI.

Layout (all under one temporary directory; nothing in /etc, nothing in the host's network)::

    sprc-<pid>-sw  ctl    10.79.0.254  bridge br0, slurmctld, munged (the submit host)
    sprc-<pid>-n1  node1  10.79.0.1    slurmd -N node1, sshd     partition `test` (default)
    sprc-<pid>-n2  node2  10.79.0.2    slurmd -N node2, sshd
    sprc-<pid>-n3  node3  10.79.0.3    slurmd -N node3           partition `slow` (links
    sprc-<pid>-n4  node4  10.79.0.4    slurmd -N node4           throttled by the tests)

    each node: eth0 ── veth ── p<k> on br0

Each host is a network namespace entered with `nsenter --net` (not `ip netns exec`, which
remounts /sys: slurmd then dies on /sys/fs/cgroup) plus a private mount and UTS namespace in
which its hostname is set and the cluster's own `hosts` and `passwd` files are bind-mounted
over /etc/hosts and /etc/passwd (root's home: a temporary dir holding the ssh keys, so ssh,
pdsh and mpirun never read the user's ~/.ssh). Slurm uses its own SLURM_CONF and ports
16917/16918, munge its own key and socket: a system Slurm or munge is never touched.

`tc tbf` on both ends of a node's link (`set_link`) throttles it as the emulated cluster does
(launch/cluster/emulated.py, whose `scaleprobe-` namespaces and 10.77.0.x this never shares).
`down()` kills every process by pid file and by namespace, deletes the namespaces and returns
what it could not remove (the session fixture fails on it).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from launch.cluster.emulated import (
    list_namespaces,
    loss_based_congestion_control,
    set_congestion_control,
    tbf_args,
)

NS_PREFIX = "sprc-"
SUBNET = "10.79.0."
CTL_ADDR = f"{SUBNET}254"
NODES = ("node1", "node2", "node3", "node4")
# Partition `test`: node1, node2 (sshd too: pdsh, mpirun). Partition `slow`: node3, node4,
# whose links tests throttle, so that sweeps over both links run at the same time.
PARTITIONS = {"test": NODES[:2], "slow": NODES[2:]}
SSH_NODES = NODES[:2]
SLURMCTLD_PORT, SLURMD_PORT = 16917, 16918
# What Slurm is told: enough that jobs never queue behind each other; the machine's cores
# are shared by every node anyway.
CPUS_PER_NODE = 8
REPO = Path(__file__).resolve().parents[2]
TOOLS = ("ip", "tc", "unshare", "nsenter", "munged", "slurmctld", "slurmd", "sbatch", "sshd")
TOOLS += ("ssh-keygen", "pdsh", "mpirun")

# Runs in a host's fresh mount and UTS namespaces: its hosts/passwd files, its hostname,
# then the command. $1: the dir of hosts/passwd, $2: hostname, $3: extra `src:dst` binds.
ENTER_HOST = r"""
etc=$1; host=$2; binds=$3; shift 3
mount --bind "$etc/hosts" /etc/hosts && mount --bind "$etc/passwd" /etc/passwd || exit 97
for pair in $binds; do mount --bind "${pair%%:*}" "${pair#*:}" || exit 97; done
cd "$PWD"  # a bind mount over the working dir: enter the mounted one
hostname "$host" && exec "$@"
"""


def missing_requirements() -> str | None:
    """Why this machine cannot run the real cluster (None: it can)."""
    if os.geteuid() != 0:
        return "the real cluster needs root (network namespaces, mounts, slurmd)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"the real cluster needs {', '.join(missing)} (apt-get install slurm-wlm munge "
            "openmpi-bin pdsh openssh-server openssh-client iproute2 util-linux)"
        )
    return None


def _run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{shlex.join(argv)}` failed ({result.returncode}): {result.stderr}")
    return result


def _alive(pid: int) -> bool:
    """Running; a zombie is dead for our purpose (its parent has not reaped it yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_namespace(ns: str, grace_s: float = 3.0) -> list[int]:
    """Stop every process in `ns` (TERM, then KILL), delete it; the pids still alive."""
    deadline = time.monotonic() + grace_s
    sig = signal.SIGTERM
    while True:
        pids = [int(p) for p in _run(["ip", "netns", "pids", ns], check=False).stdout.split()]
        pids = [p for p in pids if _alive(p)]
        if not pids:
            break
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                break
            sig, deadline = signal.SIGKILL, time.monotonic() + grace_s
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(0.1)
    _run(["ip", "netns", "del", ns], check=False)
    return [p for p in pids if _alive(p)]


def remove_stale_clusters() -> None:
    """Namespaces left by a test session that was killed: its pid no longer runs."""
    for ns in list_namespaces():
        match = re.match(rf"^{NS_PREFIX}(\d+)-", ns)
        if match and not _alive(int(match[1])):
            kill_namespace(ns, grace_s=1.0)


class RealCluster:
    """The cluster of the module docstring, rooted at `root` (a pytest temporary dir)."""

    def __init__(self, root: Path):
        self.root = root
        self.tag = f"{NS_PREFIX}{os.getpid()}"
        self.hosts = {
            "ctl": f"{self.tag}-sw",
            **{n: f"{self.tag}-n{k + 1}" for k, n in enumerate(NODES)},
        }
        self.created: list[str] = []
        self.etc, self.home = root / "etc", root / "home"
        self.slurm, self.munge, self.ssh = root / "slurm", root / "munge", root / "ssh"
        self.made_run_sshd = False

    # -- what tests use -----------------------------------------------------------------------

    def addr(self, host: str) -> str:
        return CTL_ADDR if host == "ctl" else f"{SUBNET}{NODES.index(host) + 1}"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every process on the cluster: no home cache of the user's."""
        cache = self.home / ".cache"
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:"
            "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "XDG_CACHE_HOME": str(cache),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local/share"),
            "SCALEPROBE_CACHE_DIR": str(self.root / "scaleprobe-cache"),
            "MPLCONFIGDIR": str(cache / "matplotlib"),
            "PYTHONPATH": str(REPO),
            "SLURM_CONF": str(self.slurm_conf),
            # torchrun's --log-dir: its torchelastic_* folders inside the cluster's root, which
            # teardown removes, not in the system's temporary folder.
            "PET_LOG_DIR": str(self.root / "torchelastic"),
            "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "disabled",
            "HYDRA_FULL_ERROR": "0",
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "COLUMNS": "200",
        }
        return {**env, **extra}

    def on(self, host: str, argv: list[str], binds: dict[Path, Path] | None = None) -> list[str]:
        """`argv` run on `host`: its network, hostname, hosts/passwd (and extra bind mounts)."""
        paths = [str(path) for pair in (binds or {}).items() for path in pair]
        if any(c.isspace() or c == ":" for path in paths for c in path):
            raise ValueError(f"bind mount paths hold no space or colon: {paths}")
        pairs = " ".join(f"{src}:{dst}" for src, dst in (binds or {}).items())
        return [
            "nsenter",
            f"--net=/run/netns/{self.hosts[host]}",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "bash",
            "-c",
            ENTER_HOST,
            "enter-host",
            str(self.etc),
            host,
            pairs,
            *argv,
        ]

    def run(
        self,
        host: str,
        argv: list[str],
        *,
        timeout: float,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        binds=None,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.on(host, argv, binds),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or self.root,
            env=env or self.env(),
        )

    def popen(
        self,
        host: str,
        argv: list[str],
        *,
        log: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        binds=None,
    ) -> subprocess.Popen:
        with log.open("w") as out:
            return subprocess.Popen(
                self.on(host, argv, binds),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.root,
                env=env or self.env(),
                start_new_session=True,
            )

    def set_link(self, gbps: float, nodes: tuple[str, ...] = NODES) -> None:
        """Both directions of each node's link at `gbps` (tc tbf); 0: unthrottled."""
        for node in nodes:
            port = f"p{NODES.index(node) + 1}"
            for ns, dev in ((self.hosts[node], "eth0"), (self.hosts["ctl"], port)):
                _run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], check=False)
                if gbps > 0:
                    _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf_args(gbps)])

    def slurm_idle(self, timeout: float = 30.0) -> None:
        """Wait until every node is idle (after bring-up)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.run("ctl", ["sinfo", "-h", "-o", "%T"], timeout=20).stdout.split()
            if out and set(out) == {"idle"}:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Slurm nodes not idle after {timeout}s: {out}")
            time.sleep(0.2)

    # -- bring-up ---------------------------------------------------------------------------

    def up(self) -> None:
        remove_stale_clusters()
        for path in (self.etc, self.home / ".ssh", self.slurm / "log", self.munge, self.ssh):
            path.mkdir(parents=True, exist_ok=True)
        self._write_etc()
        self._network()
        self._munge()
        self._ssh_keys()
        self._slurm()
        for host in NODES:
            self._start(host, ["slurmd", "-f", str(self.slurm_conf), "-N", host])
        for host in SSH_NODES:
            listen, pid = f"ListenAddress={self.addr(host)}", f"PidFile={self.ssh}/sshd-{host}.pid"
            sshd_config = str(self.ssh / "sshd_config")
            self._start(host, ["/usr/sbin/sshd", "-f", sshd_config, "-o", listen, "-o", pid])
        self.slurm_idle()

    def _start(self, host: str, argv: list[str]) -> None:
        """A daemon on `host`: it forks into the background and the wrapper returns."""
        result = self.run(host, argv, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} on {host} failed: {result.stdout}{result.stderr}")

    def _write_etc(self) -> None:
        hosts = ["127.0.0.1 localhost", f"{CTL_ADDR} ctl"]
        hosts += [f"{self.addr(n)} {n}" for n in NODES]
        (self.etc / "hosts").write_text("\n".join(hosts) + "\n")
        # root's home is ours inside the hosts: ssh reads keys and config from there.
        passwd = Path("/etc/passwd").read_text()
        passwd = re.sub(
            r"^root:([^:]*):0:0:([^:]*):[^:]*:", rf"root:\1:0:0:\2:{self.home}:", passwd, flags=re.M
        )
        (self.etc / "passwd").write_text(passwd)
        # DeepSpeed ranks JIT-build one op (shm comm: ~30 s of C++ on 2 cores) into
        # ~/.cache/torch_extensions: the nodes' home links it to the session's build folder
        # (TORCH_EXTENSIONS_DIR, which tests/conftest.py points at the run's temporary cache or
        # at the one .ci/run built), so they find the op the integration tests built.
        self.build_root.mkdir(parents=True, exist_ok=True)
        (self.home / ".cache").mkdir(parents=True, exist_ok=True)
        (self.home / ".cache/torch_extensions").symlink_to(self.build_root)

    def _network(self) -> None:
        sw = self.hosts["ctl"]
        self._add_ns(sw)
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", sw, "addr", "add", f"{CTL_ADDR}/24", "dev", "br0"])
        _run(["ip", "-n", sw, "link", "set", "br0", "up"])
        for k, host in enumerate(NODES, start=1):
            ns = self.hosts[host]
            self._add_ns(ns)
            _run(
                [
                    "ip",
                    "-n",
                    sw,
                    "link",
                    "add",
                    f"p{k}",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    ns,
                ]
            )
            _run(["ip", "-n", sw, "link", "set", f"p{k}", "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0"])
            _run(["ip", "-n", ns, "link", "set", "eth0", "up"])
            # As the emulated cluster's nodes: cubic or reno, steady on tbf.
            set_congestion_control(ns, loss_based_congestion_control())

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self.created.append(ns)
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _munge(self) -> None:
        """munged inside the switch namespace (so killing the namespace's pids stops it);
        its socket is a path, reachable from every namespace."""
        key = self.munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge.chmod(0o700)
        self._start(
            "ctl",
            [
                "munged",
                "--force",
                f"--socket={self.munge / 'munge.socket'}",
                f"--key-file={key}",
                f"--log-file={self.munge / 'munged.log'}",
                f"--pid-file={self.munge / 'munged.pid'}",
                f"--seed-file={self.munge / 'munged.seed'}",
            ],
        )

    def _ssh_keys(self) -> None:
        ssh_home = self.home / ".ssh"
        self.home.chmod(0o700)
        ssh_home.chmod(0o700)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_home / "id_ed25519")])
        shutil.copy(ssh_home / "id_ed25519.pub", ssh_home / "authorized_keys")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh / "hostkey")])
        (ssh_home / "config").write_text(
            "Host *\n  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n"
            f"  UserKnownHostsFile {ssh_home / 'known_hosts'}\n"
        )
        (self.ssh / "sshd_config").write_text(
            f"Port 22\nHostKey {self.ssh / 'hostkey'}\nPermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nAuthorizedKeysFile {ssh_home / 'authorized_keys'}\n"
            "UsePAM no\nStrictModes no\nPermitUserEnvironment yes\n"
        )
        # What pdsh and mpirun start over ssh gets the cluster's environment, not sshd's
        # (its PATH finds Debian's ninja, whose build log disagrees with pip's: DeepSpeed's op
        # would be rebuilt, a minute and more, every time the other one had built it).
        env = {k: v for k, v in self.env().items() if k != "HOME"}  # HOME: from passwd
        (ssh_home / "environment").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        # sshd's privilege-separation dir (the package's tmpfiles.d makes it at boot).
        if not Path("/run/sshd").is_dir():
            Path("/run/sshd").mkdir(mode=0o755)
            self.made_run_sshd = True

    def _slurm(self) -> None:
        s = self.slurm
        for node in NODES:
            (s / "spool" / node).mkdir(parents=True, exist_ok=True)
        (s / "state").mkdir(exist_ok=True)
        lines = [
            "ClusterName=scaleprobe-test",
            f"SlurmctldHost=ctl({CTL_ADDR})",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge / 'munge.socket'}",
            "CredType=cred/munge",
            f"SlurmctldPort={SLURMCTLD_PORT}",
            f"SlurmdPort={SLURMD_PORT}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={s / 'state'}",
            f"SlurmdSpoolDir={s / 'spool' / '%n'}",
            f"SlurmctldPidFile={s / 'slurmctld.pid'}",
            f"SlurmdPidFile={s / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={s / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={s / 'log' / 'slurmd-%n.log'}",
            "SlurmdParameters=config_overrides",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=1",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "KillWait=5",
            "MinJobAge=600",
            # A fake GPU per node: DeepSpeed's slurm runner used to ask for --gpus-per-node.
            "GresTypes=gpu",
            *(
                f"NodeName={n} NodeAddr={self.addr(n)} NodeHostname={n} CPUs={CPUS_PER_NODE} "
                "RealMemory=4000 Gres=gpu:1 State=UNKNOWN"
                for n in NODES
            ),
            *(
                f"PartitionName={name} Nodes={','.join(nodes)} MaxTime=INFINITE State=UP "
                f"Default={'YES' if name == 'test' else 'NO'}"
                for name, nodes in PARTITIONS.items()
            ),
        ]
        self.slurm_conf.write_text("\n".join(lines) + "\n")
        (s / "gres.conf").write_text(f"NodeName={','.join(NODES)} Name=gpu File=/dev/null\n")
        self._start("ctl", ["slurmctld", "-f", str(self.slurm_conf)])

    # -- teardown ---------------------------------------------------------------------------

    @property
    def build_root(self) -> Path:
        import torch.utils.cpp_extension as cpp  # torch only where the nodes' cache is set up

        return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or cpp.get_default_build_root())

    def pid_files(self) -> list[Path]:
        return [*self.slurm.glob("*.pid"), *self.ssh.glob("*.pid"), *self.munge.glob("*.pid")]

    def down(self) -> list[str]:
        """Stop everything, delete the namespaces; what is left behind (empty: nothing)."""
        pids = []
        for path in self.pid_files():
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(path.read_text().split()[0]))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        left = []
        for ns in reversed(self.created):
            left += [f"pid {p} in {ns}" for p in kill_namespace(ns)]
        self.created.clear()
        for pid in pids:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
                if _alive(pid):
                    left.append(f"pid {pid}")
        left += [f"namespace {ns}" for ns in list_namespaces() if ns.startswith(f"{self.tag}-")]
        left += [str(path) for path in Path("/etc/netns").glob(f"{self.tag}-*")]  # none made
        if self.made_run_sshd:
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()
        return left
