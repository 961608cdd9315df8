"""The exact commands and environment that start a run's ranks."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launch.fabric import fabric_environment
from launch.hostfile import ClusterNode
from launch.plan import RunPlan
from train.config import RunConfig


@dataclass(frozen=True)
class NodeCommand:
    """What one node runs: argv plus the variables added to its environment."""

    node_rank: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell_line(self) -> str:
        """A line a person can paste into a shell: quoted, so no value can break or inject."""
        assignments = [f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*assignments, shlex.join(self.argv)])


def torchrun_executable() -> str:
    """`torchrun` from this interpreter's environment, so a pasted command uses the same torch."""
    beside_python = Path(sys.executable).parent / "torchrun"
    on_path = shutil.which("torchrun")
    if on_path and beside_python.exists() and Path(on_path).resolve() == beside_python.resolve():
        return "torchrun"
    return str(beside_python) if beside_python.exists() else "torchrun"


def rank_environment(cfg: RunConfig) -> dict[str, str]:
    env = {"PYTHONUNBUFFERED": "1"}
    if cfg.gpu.name == "cpu":
        # A CPU rank stands for one device: a fixed thread count keeps per-device work equal
        # across world sizes instead of splitting the cores among however many ranks run.
        env["OMP_NUM_THREADS"] = str(cfg.cluster.cpu_threads_per_rank)
    if cfg.cluster.max_restarts > 0:
        # pytorch#135712: the agent shares its rendezvous TCPStore with the workers, so after a
        # restart the new workers find the failed attempt's keys and hang or fail. A store of
        # their own per attempt (not shared) makes restarts work (tests/test_restart.py).
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    env.update(fabric_environment(cfg.fabric))
    return env


def torchrun_commands(
    cfg: RunConfig,
    plan: RunPlan,
    config_path: Path,
    nodes: list[ClusterNode] | None = None,
    module: str = "train",
) -> list[NodeCommand]:
    """One command per node of the plan (`nodes` in node-rank order when plan.nodes > 1)."""
    tail = [
        "--nproc-per-node",
        str(plan.nproc_per_node),
        "--max-restarts",
        str(cfg.cluster.max_restarts),
        "-m",
        module,
        "--config",
        str(config_path),
    ]
    env = rank_environment(cfg)
    if plan.nodes == 1:
        # --standalone: a private c10d rendezvous on a free local port.
        argv = [torchrun_executable(), "--standalone", "--nnodes", "1", *tail]
        return [NodeCommand(0, argv, env)]
    head = nodes[0]
    # The same id on every node, different for every run: the rendezvous of one run only.
    run_id = hashlib.sha256(str(config_path).encode()).hexdigest()[:16]
    commands = []
    for k, node in enumerate(nodes[: plan.nodes]):
        argv = [
            torchrun_executable(),
            "--nnodes",
            str(plan.nodes),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"{head.rendezvous_host}:{cfg.cluster.master_port}",
            "--rdzv-id",
            run_id,
            # Said, not guessed: torchrun's guess compares hostnames, which every node shares
            # on an emulated cluster and which may not name the fabric interface on a real one.
            "--rdzv-conf",
            f"is_host={int(k == 0)}",
        ]
        if node.addr:
            # How the others reach this node (its workers' MASTER_ADDR when it holds rank 0).
            argv += ["--local-addr", node.addr]
        commands.append(NodeCommand(k, [*argv, *tail], env))
    return commands
