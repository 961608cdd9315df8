"""Multi-node launch lines: golden per-node torchrun, deepspeed and sbatch, and their quoting.

Golden files live in tests/golden/; after an intended change, regenerate them with
SCALEPROBE_UPDATE_GOLDEN=1 python -m pytest tests/test_multinode_commands.py and review the diff.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

from launch.cluster.hosts import multinode_hosts
from launch.errors import ConfigError
from launch.launchers import deepspeed, slurm, torchrun
from launch.plan import plan_runs
from tests.conftest import compose_run_config

GOLDEN = Path(__file__).parent / "golden"
# A name and a run dir no shell line may split or execute: spaces, both quotes, `;`, `$()`.
HOSTILE = 'it\'s a "run"; touch INJECTED $(touch INJECTED2)'


@pytest.fixture(autouse=True)
def plain_executables(monkeypatch):
    """The golden lines name `torchrun`/`deepspeed`, not this machine's interpreter path."""
    monkeypatch.setattr(torchrun, "executable_beside_python", lambda name: name)
    monkeypatch.setattr(deepspeed, "executable_beside_python", lambda name: name)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SCALEPROBE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with SCALEPROBE_UPDATE_GOLDEN=1"
    assert text == path.read_text()


def multinode_cfg(*extra: str, run_dir: str = "/runs/golden"):
    return compose_run_config(
        [
            "gpu=h100_sxm",
            "parallel=ddp",
            "cluster=multinode",
            "cluster.hosts=[gpu-node-01,gpu-node-02]",
            "cluster.fabric_addrs=[10.0.1.1,10.0.1.2]",
            "cluster.nproc_per_node=8",
            "cluster.max_restarts=1",
            "fabric=nvlink_ib",
            "sweep=none",
            "train.global_batch=64",
            "train.micro_batch=4",
            f"run_dir={run_dir}",
            *extra,
        ]
    )


def test_torchrun_per_node_commands_golden():
    cfg = multinode_cfg()
    (plan,) = plan_runs(cfg)
    nodes = multinode_hosts(cfg)
    lines = torchrun.torchrun_commands(cfg, plan, plan.run_dir / "config.yaml", nodes)
    assert [c.node_rank for c in lines] == [0, 1]
    check_golden("torchrun_multinode.txt", "".join(c.shell_line() + "\n" for c in lines))
    head, other = (shlex.split(c.shell_line()) for c in lines)
    # c10d on the head's fabric address; only the head hosts the store; each its own address.
    assert "--rdzv-endpoint" in head and head[head.index("--rdzv-endpoint") + 1] == "10.0.1.1:29500"
    assert head[head.index("--rdzv-conf") + 1] == "is_host=1"
    assert other[other.index("--rdzv-conf") + 1] == "is_host=0"
    assert other[other.index("--local-addr") + 1] == "10.0.1.2"
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in head  # the restart fix (max_restarts=1)


def test_deepspeed_hostfile_command_golden(tmp_path, monkeypatch):
    monkeypatch.setattr(deepspeed.os, "geteuid", lambda: 1000)  # not root: the line as users see it
    cfg = multinode_cfg("launcher=deepspeed", "launcher.runner=openmpi", "cluster.max_restarts=0")
    (plan,) = plan_runs(cfg)
    nodes = multinode_hosts(cfg)
    (line,) = deepspeed.deepspeed_commands(
        cfg, plan, plan.run_dir / "config.yaml", nodes=nodes, module="train"
    )
    env_file = deepspeed.env_command(cfg).dotenv()
    check_golden("deepspeed_multinode.txt", line.shell_line() + "\n")
    check_golden("deepspeed_env.txt", env_file)
    argv = line.argv
    # DeepSpeed's MPI runners refuse --num_nodes/--num_gpus: the run's hostfile says instead.
    assert "--num_nodes" not in argv and "--num_gpus" not in argv
    assert argv[argv.index("--master_addr") + 1] == "10.0.1.1"
    assert argv[argv.index("--launcher") + 1] == "openmpi"
    assert argv[-5:] == ["--no_local_rank", "--module", "train", "--config", argv[-1]]
    assert "NCCL_IB_HCA==mlx5_0,mlx5_1,mlx5_2,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7\n" in env_file
    # mpirun -x would hand NCCL a literally quoted "^lo,docker": left to the ranks instead.
    assert "NCCL_SOCKET_IFNAME" not in env_file and "NCCL_SOCKET_IFNAME" not in line.env

    plan = plan.__class__(**{**plan.__dict__, "run_dir": tmp_path})
    deepspeed.write_launch_files(cfg, plan, nodes)
    hostfile = (tmp_path / "hostfile").read_text()
    assert hostfile == "gpu-node-01 slots=8\ngpu-node-02 slots=8\n"
    runner = pytest.importorskip("deepspeed.launcher.runner")
    # DeepSpeed's own parser reads what we wrote as we meant it.
    assert dict(runner._parse_hostfile(hostfile.splitlines())) == {
        "gpu-node-01": 8,
        "gpu-node-02": 8,
    }


def test_sbatch_script_golden(monkeypatch):
    monkeypatch.setattr(slurm, "partition_cpus", lambda partition: None)  # no Slurm here
    cfg = compose_run_config(
        [
            "gpu=h100_sxm",
            "cluster=slurm",
            "launcher=slurm",
            "launcher.partition=gpu",
            "launcher.account=proj-42",
            "launcher.time=02:30:00",
            "fabric=nvlink_roce",
            "sweep=none",
            "train.global_batch=64",
            "train.micro_batch=4",
            "run_dir=/runs/golden",
        ]
    )
    (plan,) = plan_runs(cfg)
    script = slurm.sbatch_script(cfg, plan, plan.run_dir / "config.yaml", workdir=Path("/src"))
    check_golden("job.sbatch", script)
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --gpus-per-node=8\n" in script
    # GPU nodes: the whole node and its memory (a measurement shares nothing; ZeRO-Offload's
    # host copies would hit a cgroup's default memory limit).
    assert "#SBATCH --exclusive\n" in script and "#SBATCH --mem=0\n" in script


def test_cpus_per_task_fits_the_partitions_nodes(tmp_path, monkeypatch):
    """A fake `sinfo` says the partition's nodes have 16 and 32 CPUs: the default (8 per GPU x
    8 = 64) is capped at 16, and an explicit 64 is refused before anything is submitted."""
    (tmp_path / "sinfo").write_text("#!/bin/sh\nprintf '16\\n32\\n'\n")
    (tmp_path / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    overrides = ["gpu=h100_sxm", "cluster=slurm", "launcher=slurm", "cluster.nodes=2"]
    overrides += ["cluster.nproc_per_node=8", "sweep=none", "train.global_batch=64"]
    cfg = compose_run_config([*overrides, "run_dir=/runs/x"])
    (plan,) = plan_runs(cfg)
    script = slurm.sbatch_script(cfg, plan, plan.run_dir / "config.yaml")
    assert "#SBATCH --cpus-per-task=16\n" in script
    assert "the partition's nodes have 16 CPUs (sinfo)" in script
    cfg.launcher.cpus_per_task = 64
    with pytest.raises(ConfigError, match="launcher.cpus_per_task: 64: the partition's nodes"):
        slurm.sbatch_script(cfg, plan, plan.run_dir / "config.yaml")
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script


def fake_tools(bin_dir: Path, record: Path) -> None:
    """scontrol, srun and torchrun stand-ins: torchrun records the argv it received."""
    scripts = {
        "scontrol": "#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n",
        # srun: drop its own options, run the task (once: one node is enough to see argv).
        "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
        "torchrun": f"#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps(sys.argv[1:]))\n",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_hostile_run_name_neither_breaks_nor_injects(tmp_path):
    run_dir = tmp_path / HOSTILE
    bin_dir, record = tmp_path / "bin", tmp_path / "argv.json"
    bin_dir.mkdir()
    fake_tools(bin_dir, record)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    config_path = run_dir / "config.yaml"

    cfg = multinode_cfg()
    cfg.name, cfg.run_dir = HOSTILE, str(run_dir)  # set past Hydra's override grammar
    (plan,) = plan_runs(cfg)
    lines = torchrun.torchrun_commands(cfg, plan, config_path, multinode_hosts(cfg))
    subprocess.run(["bash", "-c", lines[1].shell_line()], cwd=tmp_path, env=env, check=True)
    assert json.loads(record.read_text()) == lines[1].argv[1:]

    cfg = compose_run_config(["cluster=slurm", "launcher=slurm", "sweep=none", "run_dir=/x"])
    cfg.name, cfg.run_dir = HOSTILE, str(run_dir)
    (plan,) = plan_runs(cfg)
    run_dir.mkdir()
    script = slurm.sbatch_script(cfg, plan, config_path, workdir=run_dir)
    assert "#SBATCH --job-name=it_s_a__run___touch_INJECTED___touch_INJECTED2_-" in script
    (run_dir / "job.sbatch").write_text(script)
    env.update(SLURM_JOB_NODELIST="node-[a-b]", SLURM_JOB_ID="77", SLURM_CPUS_PER_TASK="2")
    subprocess.run(["bash", str(run_dir / "job.sbatch")], cwd=tmp_path, env=env, check=True)
    argv = json.loads(record.read_text())
    assert argv[-2:] == ["--config", str(config_path)]
    # The job's own port (29500 + job id 77 % 1000): another job may share the head node.
    assert argv[argv.index("--rdzv-endpoint") + 1] == "node-a:29577"
    assert argv[argv.index("--rdzv-id") + 1] == "77"
    assert not list(tmp_path.rglob("INJECTED*"))


def test_dry_run_prints_each_nodes_command(launch_in_process, tmp_path):
    result = launch_in_process(
        "gpu=cpu",
        "sweep=none",
        "cluster=multinode",
        "cluster.hosts=[node-a,node-b]",
        "cluster.nproc_per_node=2",
        "train.global_batch=16",
        "dry_run=true",
        f"run_dir={tmp_path / 'dry'}",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [shlex.split(line) for line in lines if "--rdzv-endpoint" in line]
    assert [line for line in lines if line.startswith("# node")] == ["# node 0", "# node 1"]
    assert [c[c.index("--rdzv-conf") + 1] for c in commands] == ["is_host=1", "is_host=0"]
    assert all(c[c.index("--rdzv-endpoint") + 1] == "node-a:29500" for c in commands)
    # Each line names the config its node's driver writes (node 1 printed node 0's).
    configs = [c[c.index("--config") + 1] for c in commands]
    assert configs == [str(tmp_path / "dry" / n) for n in ("config.yaml", "config-node1.yaml")]
    assert not (tmp_path / "dry" / "summary.json").exists()


def test_a_later_nodes_dry_run_prints_only_what_it_would_run(launch_in_process, tmp_path):
    """Node 1's dry run printed node 0's lines for the one-node points, which its real run
    skips."""
    result = launch_in_process(
        "gpu=cpu",
        "cluster=multinode",
        "cluster.hosts=[node-a,node-b]",
        "cluster.nproc_per_node=2",
        "sweep.world_sizes=[2,4]",
        "cluster.node_rank=1",
        "dry_run=true",
        f"run_dir={tmp_path / 'dry'}",
    )
    assert result.returncode == 0, result.stderr
    assert "# nothing on node 1: this run uses node 0" in result.stdout
    (line,) = [shlex.split(x) for x in result.stdout.splitlines() if "--rdzv-endpoint" in x]
    assert line[line.index("--rdzv-conf") + 1] == "is_host=0"
    assert line[-1] == str(tmp_path / "dry" / "ws4" / "config-node1.yaml")


def test_every_nodes_driver_derives_the_same_rendezvous_id():
    """With no run_dir each node's driver has its own timestamped dir: the id must not depend
    on it (it used to be a hash of the config path, and the nodes hung in two rendezvous)."""
    ids = []
    for node_rank, run_dir in ((0, "/runs/2026-11-30/10-00-00-000001"), (1, "/runs/x/y")):
        cfg = multinode_cfg(f"cluster.node_rank={node_rank}", run_dir=run_dir)
        (plan,) = plan_runs(cfg)
        lines = torchrun.torchrun_commands(
            cfg, plan, plan.run_dir / "config.yaml", multinode_hosts(cfg)
        )
        argv = lines[node_rank].argv
        ids.append(argv[argv.index("--rdzv-id") + 1])
    assert ids[0] == ids[1] and ids[0].startswith("ws16-")
    other = multinode_cfg("train.global_batch=128")  # another workload: another rendezvous
    (plan,) = plan_runs(other)
    assert torchrun.rendezvous_id(other, plan) != ids[0]
    given = multinode_cfg("cluster.rdzv_id=job-4711")
    (plan,) = plan_runs(given)
    assert torchrun.rendezvous_id(given, plan) == "job-4711-ws16"


def deepspeed_line(runner: str):
    cfg = multinode_cfg("launcher=deepspeed", f"launcher.runner={runner}", "cluster.max_restarts=0")
    (plan,) = plan_runs(cfg)
    (line,) = deepspeed.deepspeed_commands(
        cfg, plan, plan.run_dir / "config.yaml", nodes=multinode_hosts(cfg), module="train.bench.x"
    )
    return line.argv


def test_openmpi_as_root_gets_allow_run_as_root(monkeypatch):
    """mpirun refuses root without the flag: the line carries it when the driver is root."""
    monkeypatch.setattr(deepspeed.os, "geteuid", lambda: 0)
    assert "--launcher_args=--allow-run-as-root" in deepspeed_line("openmpi")
    monkeypatch.setattr(deepspeed.os, "geteuid", lambda: 1000)
    assert not any(a.startswith("--launcher_args") for a in deepspeed_line("openmpi"))
    monkeypatch.setattr(deepspeed.os, "geteuid", lambda: 0)
    assert not any(a.startswith("--launcher_args") for a in deepspeed_line("pdsh"))


def test_slurm_runner_line_runs_the_module_without_gpus_or_ssh():
    """DeepSpeed's slurm runner: --num_gpus became srun --gpus-per-node (no GPU on CPU nodes),
    its ssh check fails where compute nodes run no sshd, and it drops --module (it ran
    `python -u train`): DeepSpeed's own parser must read `-m <module>` as the program."""
    argv = deepspeed_line("slurm")
    assert "--num_gpus" not in argv and argv[argv.index("--num_nodes") + 1] == "2"
    assert "--no_ssh_check" in argv and "--module" not in argv
    runner = pytest.importorskip("deepspeed.launcher.runner")
    args = runner.parse_args(argv[1:])
    assert (args.launcher, args.user_script) == ("slurm", "-m")
    assert args.user_args[:3] == ["train.bench.x", "--config", "/runs/golden/config.yaml"]
    assert args.no_local_rank and args.no_ssh_check
    # srun sets SLURM_NTASKS_PER_NODE (a rank's node size) only when asked for it.
    assert args.launcher_args == "--ntasks-per-node=8"
    # pdsh keeps DeepSpeed's --module, which its launch.py honours.
    assert deepspeed_line("pdsh")[-5:-2] == ["--no_local_rank", "--module", "train.bench.x"]


def test_slurm_jobs_never_share_a_rendezvous_port():
    """A sweep's 1-node job and 2-node job may share the head node: with one fixed port the
    1-node job's torchrun hosted the store the 2-node job joined, and took it away when it
    ended (the real cluster's test found it: RendezvousConnectionError, job FAILED)."""
    cfg = compose_run_config(
        [
            "gpu=cpu",
            "cluster=slurm",
            "launcher=slurm",
            "cluster.nproc_per_node=1",
            "sweep.world_sizes=[1,2]",
            "run_dir=/runs/s",
        ]
    )
    one, two = (
        slurm.sbatch_script(cfg, plan, plan.run_dir / "config.yaml") for plan in plan_runs(cfg)
    )
    assert "--standalone" in one and "--rdzv-endpoint" not in one
    assert "rdzv_port=$((29500 + SLURM_JOB_ID % 1000))" in two
    assert '--rdzv-endpoint "$head_node:$rdzv_port"' in two
