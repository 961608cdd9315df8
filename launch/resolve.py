"""What the driver decides before planning, and says it decided: the gpu profile (gpu=auto),
the node's defaults on a GPU node, the measured matmul ceiling, and what precision the ranks
will pick (here, or on nodes the driver cannot see).

Detection imports torch (and probes torchao / Transformer Engine); their import-time log noise
is kept off the console: it says nothing about the job.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import warnings

from rich.console import Console

from launch.bench.cache import cache_path, load_measured
from launch.conf_tree import group_choices, load_gpu_profile
from launch.perfmodel.choose import choose_layout
from train.spec.config import GpuConfig, PeakTflops, RunConfig
from train.spec.degrees import BatchRule
from train.spec.devices import (
    MachineProbe,
    cpu_model_name,
    machine_probe,
    name_matches,
    profile_mismatch,
)
from train.spec.precision import precision_for_run

# Loggers that print import-time noise (missing optional kernels) on a machine without them.
NOISY_LOGGERS = ("torchao", "torch._inductor", "torch.utils._pytree", "triton")


def match_profile(device_name: str, memory_gib: float | None) -> str | None:
    """The profile whose name patterns match the device name (and memory range, if it has one)."""
    for name in group_choices("gpu"):
        if name in ("auto", "cpu"):
            continue
        profile = load_gpu_profile(name)
        if not name_matches(
            profile.device_name_patterns, device_name, profile.device_name_excludes
        ):
            continue
        low_high = profile.memory_gib_range
        if low_high and memory_gib is not None and not low_high[0] <= memory_gib < low_high[1]:
            continue
        return name
    return None


def unknown_profile(device_name: str) -> GpuConfig:
    """A device with no profile gets no peak: MFU is null rather than another card's figure."""
    return GpuConfig(
        name="unknown",
        display_name=device_name,
        peak_tflops=PeakTflops(),
        source="no profile in conf/gpu matches this device",
        verified=False,
    )


def detect_local() -> tuple[GpuConfig, str]:
    """(profile, what was detected) for the machine the driver runs on."""
    import torch  # the driver imports torch only to look at this machine's device

    if not torch.cuda.is_available():
        return load_gpu_profile("cpu"), "no CUDA device: cpu"
    props = torch.cuda.get_device_properties(0)
    memory_gib = props.total_memory / 2**30
    name = match_profile(props.name, memory_gib)
    detected = f"{props.name} ({memory_gib:.0f} GiB)"
    if name is None:
        return unknown_profile(props.name), f"{detected}: no matching profile, MFU will be null"
    return load_gpu_profile(name), f"{detected}: profile {name}"


def local_device_name() -> tuple[str, str]:
    """(device type, device name) of the machine the driver runs on."""
    import torch  # the driver imports torch only to look at this machine's device

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", cpu_model_name()


def with_measured_peaks(gpu: GpuConfig, cpu_threads: int) -> tuple[GpuConfig, str | None]:
    """Attach `python -m launch.mamf`'s cached ceiling when the profile describes this machine.

    The cpu profile has no datasheet peak: a measurement becomes its peak, so CPU runs get an
    MFU from a number that was measured rather than invented. A peak the user set (on the
    command line or in the profile) is never replaced: the cache fills only what is unset.
    """
    device_type, device_name = local_device_name()
    if profile_mismatch(gpu, device_type, device_name):
        return gpu, None
    threads = cpu_threads if device_type == "cpu" else None
    measured = load_measured(device_name, threads)
    if not measured:
        return gpu, None
    source = f"launch.mamf on {measured['device_name']}, {measured['measured_at']}"
    gpu = copy.deepcopy(gpu)
    for precision, tflops in measured["best_tflops"].items():
        setattr(gpu.measured_peak_tflops, precision, tflops)
        if gpu.name == "cpu" and getattr(gpu.peak_tflops, precision, None) is None:
            setattr(gpu.peak_tflops, precision, tflops)
    gpu.measured_source = source
    return gpu, f"measured matmul ceiling from {cache_path(device_name, threads)}"


@contextlib.contextmanager
def quiet_third_party():
    """Silence import-time warnings of optional kernels (torchao, triton) while probing."""
    levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def resolve_gpu(cfg: RunConfig, console: Console) -> None:
    """gpu=auto: the profile of this machine's device (refused for Slurm before this)."""
    if cfg.gpu.name != "auto":
        return
    with quiet_third_party():
        cfg.gpu, detected = detect_local()
    cfg.resolved.gpu_detected = detected
    console.print(f"gpu=auto: {detected}")


def _overridden(overrides: list[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def resolve_node_defaults(cfg: RunConfig, overrides: list[str], console: Console) -> None:
    """On a GPU node the defaults use the node: one rank per visible GPU, and a weak sweep over
    powers of two up to them, unless the command line set either."""
    if cfg.cluster.name != "local" or cfg.launcher.name == "slurm" or cfg.gpu.name == "cpu":
        return
    with quiet_third_party():
        import torch  # the driver imports torch only to look at this machine's device

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not gpus:
        return
    changed = []
    if not _overridden(overrides, "cluster.nproc_per_node"):
        cfg.cluster.nproc_per_node = gpus
        changed.append(f"cluster.nproc_per_node={gpus}")
    if cfg.sweep.name != "none" and not _overridden(overrides, "sweep.world_sizes"):
        top = cfg.cluster.nodes * cfg.cluster.nproc_per_node
        cfg.sweep.world_sizes = [2**k for k in range(top.bit_length()) if 2**k <= top]
        changed.append(f"sweep.world_sizes={cfg.sweep.world_sizes}")
    if changed:
        console.print(f"this node has {gpus} GPU(s): " + ", ".join(changed))


def state_precision(cfg: RunConfig, setup, console: Console) -> None:
    """Say what precision the ranks will run in, and from what, before they start.

    Ranks decide on their own device. When they run on this machine and the profile describes
    it, the driver asks the same question here. Otherwise (Slurm, or a profile for other
    hardware, e.g. an H100 job prepared on a CPU login node) it says what the nodes will pick
    with and without an fp8 library there, instead of what this machine would.
    """
    with quiet_third_party():
        import torch  # the driver imports torch only to look at this machine's device

        device_type, device_name = local_device_name()
        mismatch = profile_mismatch(cfg.gpu, device_type, device_name)
        if cfg.launcher.name != "slurm" and not mismatch:
            cfg.gpu, measured = with_measured_peaks(cfg.gpu, cfg.cluster.cpu_threads_per_rank)
            if measured:
                console.print(f"peak: {measured}")
            if cfg.precision.name == "tf32" and device_type == "cpu":
                console.print(
                    "[yellow]warning:[/] precision=tf32 on cpu is a no-op: matmuls run in fp32"
                )
            capability = torch.cuda.get_device_capability(0) if device_type == "cuda" else None
            plan = precision_for_run(cfg, machine_probe(device_type, capability))
            console.print(f"precision: {cfg.precision.name} -> {plan.resolved} ({plan.reason})")
            return
    if mismatch and cfg.launcher.name != "slurm" and cfg.cluster.name in ("local", "emulated"):
        console.print(f"[yellow]warning:[/] {mismatch}")
    console.print(f"precision: {cfg.precision.name} -> {nodes_outlook(cfg)}")


def nodes_outlook(cfg: RunConfig) -> str:
    """What ranks on devices matching cfg.gpu will resolve, with or without fp8 libraries."""
    capability = (9, 0) if cfg.gpu.fp8 else (8, 0)

    def on_nodes(fp8_library: bool):
        probe = MachineProbe(
            te_available=fp8_library,
            torchao_available=fp8_library,
            compute_capability=capability,
            cpu_native_bf16=False,
        )
        return precision_for_run(cfg, probe)

    with_lib, without = on_nodes(True), on_nodes(False)
    where = f"decided on the nodes ({cfg.gpu.name}, not this machine)"
    if with_lib.resolved == without.resolved:
        return f"{with_lib.resolved}, {where}: {with_lib.reason}"
    return (
        f"{with_lib.resolved} where Transformer Engine or torchao imports on the nodes, else "
        f"{without.resolved}; {where}: {with_lib.reason}"
    )


def resolve_layouts(cfg: RunConfig, plans: list, console: Console) -> list:
    """parallel=auto: the performance model's best layout for each run, said with its reason
    (the same question `python -m launch.project` answers for parts not at hand)."""
    if cfg.parallel.name != "auto":
        return plans
    chosen = []
    batch = BatchRule(global_batch=cfg.train.global_batch)  # the smallest run's, and strong's
    for plan in plans:
        choice = choose_layout(
            cfg,
            world_size=plan.world_size,
            nproc_per_node=plan.nproc_per_node,
            nodes=plan.nodes,
            batch=batch,
        )
        if cfg.sweep.name == "weak" and batch.rows_per_dp_rank is None:
            # Weak scaling keeps the smallest run's sequences per data-parallel rank.
            batch = BatchRule.weak_from(cfg.train.global_batch, choice.degrees, plan.world_size)
        parallel = copy.deepcopy(cfg.parallel)
        parallel.name = choice.name
        parallel.dp_replicate = choice.degrees.dp_replicate
        parallel.dp_shard = choice.degrees.dp_shard
        parallel.tp = choice.degrees.tp
        parallel.activation_checkpoint = choice.activation_checkpoint
        console.print(
            f"layout: auto -> {choice.name} at world size {plan.world_size} ({choice.reason})"
        )
        chosen.append(
            dataclasses.replace(
                plan,
                global_batch=batch.global_batch_for(choice.degrees),
                parallel=parallel,
                layout_reason=choice.reason,
            )
        )
    return chosen
