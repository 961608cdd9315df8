"""The exact commands and environment that start a run's ranks."""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

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
    return env


def torchrun_commands(cfg: RunConfig, plan: RunPlan, config_path: Path) -> list[NodeCommand]:
    argv = [torchrun_executable()]
    if plan.nodes == 1:
        # --standalone: a private c10d rendezvous on a free local port.
        argv += ["--standalone", "--nnodes", "1"]
    else:
        raise NotImplementedError("multi-node torchrun comes with cluster=... profiles")
    argv += [
        "--nproc-per-node",
        str(plan.nproc_per_node),
        "--max-restarts",
        str(cfg.cluster.max_restarts),
        "-m",
        "train",
        "--config",
        str(config_path),
    ]
    return [NodeCommand(0, argv, rank_environment(cfg))]
