"""torchrun's argv, the one builder for local, multi-node and Slurm runs.

- one node: `torchrun --standalone` (a private c10d rendezvous on a free local port);
- several nodes: c10d rendezvous on the head, `is_host` said rather than guessed, each
  node's fabric address as `--local-addr`;
- Slurm: the same, with the head node and the job id expanded by the script's shell.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from launch.cluster.hosts import ClusterNode
from launch.launchers.command import NodeCommand, ShellExpr, executable_beside_python
from launch.launchers.environment import rank_environment
from launch.plan import RunPlan
from train.spec.config import RunConfig


def torchrun_argv(
    cfg: RunConfig,
    plan: RunPlan,
    config_path: Path,
    module: str,
    *,
    rendezvous: list[str],
) -> list[str]:
    """`torchrun <rendezvous> --nproc-per-node N --max-restarts R --log-dir DIR -m module
    --config PATH`, DIR the run's torchelastic folder (torchelastic_log_dir)."""
    return [
        executable_beside_python("torchrun"),
        *rendezvous,
        "--nproc-per-node",
        str(plan.nproc_per_node),
        "--max-restarts",
        str(cfg.cluster.max_restarts),
        "--log-dir",
        str(torchelastic_log_dir(config_path)),
        "-m",
        module,
        "--config",
        str(config_path),
    ]


def torchelastic_log_dir(config_path: Path) -> Path:
    """Where torchrun keeps each attempt's per-rank folders (and a rank's error.json): beside
    the run's config, so they stay with the run, rather than in a torchelastic_* folder that
    torchrun would otherwise leave in the machine's temporary directory after every run."""
    return config_path.parent / "torchelastic"


def multinode_rendezvous(
    plan: RunPlan, endpoint: str, run_id: str, node: ClusterNode | None = None, is_host=None
) -> list[str]:
    """c10d rendezvous arguments of one node of a multi-node run."""
    args = [
        "--nnodes",
        str(plan.nodes),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        run_id,
    ]
    if is_host is not None:
        # Said, not guessed: torchrun's guess compares hostnames, which every node shares
        # on an emulated cluster and which may not name the fabric interface on a real one.
        args += ["--rdzv-conf", f"is_host={int(is_host)}"]
    if node is not None and node.addr:
        # How the others reach this node (its workers' MASTER_ADDR when it holds rank 0).
        args += ["--local-addr", node.addr]
    return args


def rendezvous_id(cfg: RunConfig, plan: RunPlan) -> str:
    """The same on every node's driver, different for each point of a sweep: cluster.rdzv_id
    or a digest of what names the run, plus the point. Never the config's path: with no
    run_dir each node's driver has its own timestamped dir, and the nodes would wait for each
    other in two rendezvous until the timeout."""
    point = f"ws{plan.world_size}"  # not plan.name: a single run is named after its dir
    if cfg.cluster.rdzv_id:
        return f"{cfg.cluster.rdzv_id}-{point}"
    # Every node's command line gives these the same values (node_rank and run_dir aside).
    names = [cfg.name, cfg.model.name, cfg.parallel.name, cfg.precision.name, cfg.seed]
    names += [cfg.train.seq_len, plan.global_batch, cfg.train.steps, list(cfg.cluster.hosts)]
    digest = hashlib.sha256(json.dumps(names, default=str).encode()).hexdigest()[:12]
    return f"{point}-{digest}"


def torchrun_commands(
    cfg: RunConfig,
    plan: RunPlan,
    config_path: Path,
    nodes: list[ClusterNode] | None = None,
    module: str = "train",
) -> list[NodeCommand]:
    """One command per node of the plan (`nodes` in node-rank order when plan.nodes > 1)."""
    env = rank_environment(cfg)
    if plan.nodes == 1:
        rendezvous = ["--standalone", "--nnodes", "1"]
        return [
            NodeCommand(
                0, torchrun_argv(cfg, plan, config_path, module, rendezvous=rendezvous), env
            )
        ]
    head = nodes[0]
    endpoint = f"{head.rendezvous_host}:{cfg.cluster.master_port}"
    run_id = rendezvous_id(cfg, plan)
    return [
        NodeCommand(
            k,
            torchrun_argv(
                cfg,
                plan,
                config_path,
                module,
                rendezvous=multinode_rendezvous(plan, endpoint, run_id, node, is_host=k == 0),
            ),
            env,
        )
        for k, node in enumerate(nodes[: plan.nodes])
    ]


def slurm_task_command(
    cfg: RunConfig, plan: RunPlan, config_path: Path, module: str
) -> NodeCommand:
    """The task srun starts on every node: torchrun, rendezvous on the allocation's head
    (`$rdzv_port`, set by the script), or a private one on the only node of a 1-node job.

    Never the same port for every job: two jobs sharing a node (a sweep's 1-node point next
    to its 2-node one) would share one rendezvous store, and the first to end takes it away
    from the other, which then fails with RendezvousConnectionError after training."""
    if plan.nodes == 1:
        rendezvous = ["--standalone", "--nnodes", "1"]
    else:
        endpoint = ShellExpr("$head_node:$rdzv_port")
        rendezvous = multinode_rendezvous(plan, endpoint, ShellExpr("$SLURM_JOB_ID"))
    argv = torchrun_argv(cfg, plan, config_path, module, rendezvous=rendezvous)
    return NodeCommand(0, argv, rank_environment(cfg))
