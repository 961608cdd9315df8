"""The launch-side defects a read of the GPU paths found (issue 13), each reachable on CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launch import resolve
from launch.cluster.hosts import multinode_hosts
from launch.conf_tree import load_gpu_profile
from launch.errors import ConfigError
from launch.launchers import deepspeed, slurm
from launch.plan import plan_runs
from launch.resolve import resolve_node_defaults, with_measured_peaks
from launch.terminal import plain_console
from launch.validate import validate
from tests.conftest import FAST, compose_run_config
from train.runtime import distributed
from train.spec.config import PeakTflops
from train.spec.devices import MachineProbe, profile_mismatch
from train.spec.precision import resolve_precision


def test_mpi_and_slurm_runners_ranks_come_from_their_variables():
    env = {
        "OMPI_COMM_WORLD_RANK": "9",
        "OMPI_COMM_WORLD_SIZE": "16",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "8",
    }
    assert distributed.adopt_launcher_ranks(env) == "OMPI"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (
        "9",
        "16",
        "1",
        "8",
    )
    env = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "16",
        "SLURM_LOCALID": "3",
        "SLURM_NTASKS_PER_NODE": "8(x2)",
    }
    assert distributed.adopt_launcher_ranks(env) == "SLURM"
    assert env["LOCAL_WORLD_SIZE"] == "8"
    # Under torchrun (also inside an srun task) torchrun's own RANK wins.
    env = {"RANK": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1"}
    assert distributed.adopt_launcher_ranks(env) is None and env["RANK"] == "0"


def test_ranks_set_the_fabric_variables_themselves(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("NCCL_SOCKET_IFNAME", raising=False)
    distributed.init_distributed({"NCCL_SOCKET_IFNAME": "^lo,docker"})
    import os

    assert os.environ["NCCL_SOCKET_IFNAME"] == "^lo,docker"  # no literal quotes


def multinode(*extra):
    return compose_run_config(
        [
            "gpu=h100_sxm",
            "cluster=multinode",
            "cluster.hosts=[n1,n2]",
            "fabric=nvlink_ib",
            "launcher=deepspeed",
            "sweep=none",
            "train.global_batch=64",
            "run_dir=/runs/x",
            *extra,
        ]
    )


def test_mpi_runner_gets_the_rendezvous_through_its_env_file(tmp_path):
    cfg = multinode("launcher.runner=openmpi")
    (plan,) = plan_runs(cfg)
    plan = plan.__class__(**{**plan.__dict__, "run_dir": tmp_path})
    deepspeed.write_launch_files(cfg, plan, multinode_hosts(cfg))
    lines = (tmp_path / ".deepspeed_env").read_text().splitlines()
    assert "MASTER_ADDR=n1" in lines and "MASTER_PORT=29500" in lines
    assert not any(line.startswith("NCCL_SOCKET_IFNAME") for line in lines)
    # pdsh exports through a shell: it keeps every variable and needs no rendezvous there.
    cfg = multinode("launcher.runner=pdsh")
    deepspeed.write_launch_files(cfg, plan, multinode_hosts(cfg))
    text = (tmp_path / ".deepspeed_env").read_text()
    assert "NCCL_SOCKET_IFNAME=^lo,docker" in text and "MASTER_ADDR" not in text


def test_fp8_needs_token_counts_that_are_multiples_of_16():
    with pytest.raises(ConfigError, match=r"^train.micro_batch: precision=fp8 needs .* 3 x 65"):
        cfg = compose_run_config(
            [
                "gpu=h100_sxm",
                "precision=fp8",
                "model=d4096_l4",
                "sweep=none",
                "train.micro_batch=3",
                "train.seq_len=65",
                "train.global_batch=6",
                "run_dir=/tmp/x",
            ]
        )
        validate(cfg, plan_runs(cfg))
    cfg = compose_run_config(["gpu=h100_sxm", "model=d4096_l4", "run_dir=/tmp/x"])
    hopper = MachineProbe(True, True, (9, 0), False)

    def auto(tokens_per_micro_batch):
        return resolve_precision(
            "auto",
            cfg.precision.fp8,
            cfg.gpu,
            cfg.model,
            hopper,
            layout_name="fsdp",
            tokens_per_micro_batch=tokens_per_micro_batch,
        )

    plan = auto(3 * 65)
    assert plan.resolved == "bf16" and "not a multiple of 16" in plan.reason
    assert auto(4 * 64).resolved == "fp8"


def test_gpu_auto_is_refused_for_slurm_before_detection():
    cfg = compose_run_config(["gpu=auto", "cluster=slurm", "launcher=slurm", "run_dir=/x"])
    cfg.gpu = load_gpu_profile("auto")  # compose_run_config resolved it; the driver does not
    with pytest.raises(ConfigError, match="^gpu: gpu=auto with launcher=slurm would detect"):
        slurm.refuse_gpu_auto(cfg)


def test_slurm_gpu_jobs_ask_for_cpus():
    cfg = compose_run_config(
        [
            "gpu=h100_sxm",
            "cluster=slurm",
            "launcher=slurm",
            "sweep=none",
            "train.global_batch=64",
            "run_dir=/x",
        ]
    )
    (plan,) = plan_runs(cfg)
    assert slurm.cpus_per_task(cfg, plan) == 8 * 8
    cfg.launcher.cpus_per_task = 100
    assert slurm.cpus_per_task(cfg, plan) == 100
    script = slurm.sbatch_script(cfg, plan, plan.run_dir / "config.yaml")
    assert "#SBATCH --cpus-per-task=100\n" in script
    assert 'export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"' in script


def test_a_pcie_part_does_not_pass_for_the_sxm_profile():
    h800 = load_gpu_profile("h800")
    assert profile_mismatch(h800, "cuda", "NVIDIA H800") is None
    assert "was requested" in profile_mismatch(h800, "cuda", "NVIDIA H800 PCIe")


@pytest.mark.parametrize(
    "overrides, nproc, sizes",
    [
        ([], 8, [1, 2, 4, 8]),
        (["cluster.nproc_per_node=2"], 2, [1, 2]),
        (["sweep.world_sizes=[1,4]"], 8, [1, 4]),
    ],
)
def test_on_a_gpu_node_the_defaults_use_its_gpus(monkeypatch, overrides, nproc, sizes):
    monkeypatch.setattr(resolve, "local_gpus", lambda: [("NVIDIA H100 80GB HBM3", 79.1)] * 8)
    cfg = compose_run_config(["gpu=h100_sxm", "run_dir=/x", *overrides])
    resolve_node_defaults(cfg, overrides, plain_console(quiet=True))
    assert cfg.cluster.nproc_per_node == nproc and cfg.sweep.world_sizes == sizes


def test_an_explicit_peak_wins_over_the_measured_cache(monkeypatch, tmp_path):
    import json

    from launch.bench import matmul_ceiling as mamf
    from train.runtime.distributed import cpu_model_name

    monkeypatch.setenv("SCALEPROBE_CACHE_DIR", str(tmp_path))
    path = mamf.cache_path(cpu_model_name(), 1)
    path.parent.mkdir(parents=True)
    record = {"device_name": "cpu", "measured_at": "now", "best_tflops": {"fp32": 0.05}}
    path.write_text(json.dumps(record))
    cfg = compose_run_config([*FAST, "gpu=cpu", "gpu.peak_tflops.fp32=0.5", "run_dir=/x"])
    gpu, _ = with_measured_peaks(cfg.gpu, 1)
    assert gpu.peak_tflops.fp32 == 0.5  # the user's number stays
    assert gpu.measured_peak_tflops.fp32 == 0.05  # the measurement is still recorded
    cfg = compose_run_config([*FAST, "gpu=cpu", "run_dir=/x"])
    gpu, _ = with_measured_peaks(cfg.gpu, 1)
    assert gpu.peak_tflops.fp32 == 0.05  # unset: the cache fills it


def test_a_dry_run_for_gpu_nodes_says_the_nodes_decide(launch_cli, tmp_path):
    result = launch_cli(
        "gpu=h100_sxm",
        "model=llama_7b",
        "parallel=fsdp",
        "sweep=none",
        "cluster.nproc_per_node=2",  # llama_7b's state needs 2 ranks of 80 GB under fsdp
        "train.micro_batch=2",
        "train.global_batch=4",
        "dry_run=true",
        f"run_dir={tmp_path / 'dry'}",
    )
    assert result.returncode == 0, result.stderr
    out = " ".join((result.stdout + result.stderr).split())  # rich wraps long lines
    assert "decided on the nodes (h100_sxm, not this machine)" in out
    assert "fp8 where Transformer Engine or torchao imports on the nodes, else bf16" in out
    assert "Failed to load" not in out and "auto on cpu" not in out


def test_a_machine_without_gpu_device_files_is_cpu_without_importing_torch(tmp_path):
    """No /dev/nvidiactl, /dev/kfd...: torch could see no GPU, so the driver does not import it
    (1.3 s of every launch); with one of them it asks torch."""
    probe = (
        "import sys; from launch import resolve; "
        "resolve.GPU_DEVICE_FILES = (sys.argv[1],); "
        "print(resolve.local_gpus(), resolve.local_device_name()[0], 'torch' in sys.modules)"
    )
    absent = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "nvidiactl")],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert absent.stdout.split() == ["[]", "cpu", "False"], absent.stdout
    (tmp_path / "nvidiactl").touch()
    present = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "nvidiactl")],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert present.stdout.split()[-1] == "True", present.stdout


def test_parallel_auto_across_nodes_without_a_nic_rate_is_refused_not_ddp():
    """h200_nvl has no NIC rate: auto cannot rank layouts across nodes, and a ddp stand-in
    would pass validation (llama_7b under ddp fits its 141 GB) and run a layout nobody chose."""
    overrides = ["gpu=h200_nvl", "parallel=auto", "model=llama_7b", "cluster=slurm",
                 "launcher=slurm", "cluster.nodes=2", "cluster.nproc_per_node=8", "sweep=none",
                 "train.global_batch=64", "train.micro_batch=1", "run_dir=/x"]  # fmt: skip
    cfg = compose_run_config(overrides)
    with pytest.raises(ConfigError, match="^gpu.nic_gbits_per_s_per_gpu: .*set gpu.nic_gbits"):
        resolve.choose_layouts(cfg, plan_runs(cfg))
    cfg = compose_run_config([*overrides, "gpu.nic_gbits_per_s_per_gpu=200"])
    (chosen,) = resolve.choose_layouts(cfg, plan_runs(cfg))
    assert chosen.parallel.name != "auto" and "predicted" in chosen.layout_reason


def test_parallel_auto_on_the_emulated_cluster_ranks_layouts_over_its_link(monkeypatch):
    """The emulated cluster's cpu nodes have no NIC rate; cluster.link_gbps is their link, and
    parallel=auto (the default) ranks on it once a ceiling is measured, as the report predicts
    such runs (step.emulated_link_gbps): the README's emulated command was refused for want of
    a NIC rate."""
    import dataclasses

    def measured(gpu, threads):
        return dataclasses.replace(gpu, measured_peak_tflops=PeakTflops(fp32=0.088)), None

    monkeypatch.setattr(resolve, "with_measured_peaks", measured)
    monkeypatch.setattr(resolve, "load_host", lambda *args: None)
    cfg = compose_run_config(
        ["gpu=cpu", "parallel=auto", "cluster=emulated", "cluster.nodes=2",
         "cluster.nproc_per_node=1", "cluster.link_gbps=0.2", "run_dir=/x"]
    )  # fmt: skip
    chosen = resolve.choose_layouts(cfg, plan_runs(cfg))
    assert all("predicted" in plan.layout_reason for plan in chosen)
    assert chosen[-1].nodes == 2
