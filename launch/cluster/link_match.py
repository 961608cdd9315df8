"""cluster.link_match_gpu: the emulated link rate that gives a GPU cluster's comm:compute ratio.

A data-parallel step moves bytes B (the gradients, fixed by the model) and does FLOPs F
(fixed by the model and the batch). On the GPU cluster its comm:compute ratio is

    (B / link_gpu) / (F / flops_gpu)

and on the emulated cluster of CPU ranks it is (B / link_emulated) / (F / flops_cpu). Both
are equal when

    link_emulated = link_gpu * flops_cpu / flops_gpu

per rank; an emulated node carries nproc_per_node ranks on one link, so its link gets
nproc_per_node times that. flops_cpu is measured here (an fp32 matmul on
cluster.cpu_threads_per_rank threads, like a rank); flops_gpu is the profile's dense bf16
peak (what GPUs train in); link_gpu is the profile's NIC per GPU (`nic`) or half its
bidirectional NVLink (`nvlink`, one direction, like tbf). Gradients are fp32 on both sides
(DDP reduces them in the parameters' dtype), so B needs no correction.
"""

from __future__ import annotations

import time

from launch.bench.cache import cache_path, load_measured
from launch.errors import ConfigError
from train.spec.config import GpuConfig
from train.spec.devices import cpu_model_name


def per_gpu_link_gbps(profile: GpuConfig, link: str) -> float:
    if link == "nic":
        if not profile.nic_gbits_per_s_per_gpu:
            raise ConfigError("cluster.link_match_gpu", f"{profile.name} has no NIC rate")
        return float(profile.nic_gbits_per_s_per_gpu)
    if not profile.nvlink_gbytes_per_s_bidir:
        raise ConfigError("cluster.link_match_gpu", f"{profile.name} has no NVLink rate")
    return profile.nvlink_gbytes_per_s_bidir / 2 * 8  # GB/s both ways -> Gbit/s one way


def gpu_peak_flops(profile: GpuConfig) -> float:
    if not profile.peak_tflops.bf16:
        raise ConfigError("cluster.link_match_gpu", f"{profile.name} has no bf16 peak")
    return profile.peak_tflops.bf16 * 1e12


def matched_link_gbps(
    profile: GpuConfig, link: str, cpu_flops_per_rank: float, nproc_per_node: int
) -> float:
    return (
        per_gpu_link_gbps(profile, link)
        * cpu_flops_per_rank
        / gpu_peak_flops(profile)
        * nproc_per_node
    )


def cpu_flops_per_rank(threads: int) -> tuple[float, str]:
    """A rank's fp32 FLOP/s: `python -m launch.mamf`'s cached ceiling, else a 1 s measurement."""
    device_name = cpu_model_name()
    measured = load_measured(device_name, threads)
    if measured and (measured.get("best_tflops") or {}).get("fp32"):
        return measured["best_tflops"]["fp32"] * 1e12, str(cache_path(device_name, threads))
    return measure_cpu_flops(threads), "a 1 s fp32 matmul (run python -m launch.mamf to cache one)"


def measure_cpu_flops(threads: int, seconds: float = 1.0, n: int = 512) -> float:
    """fp32 matmul FLOP/s on `threads` threads (a rank's share of the CPU)."""
    import torch  # here: the driver imports torch only when it measures

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        for _ in range(3):
            a @ b  # warm-up: thread pool, caches
        count, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            a @ b
            count += 1
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 * count / elapsed
