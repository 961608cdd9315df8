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
import os
import subprocess
import warnings

from omegaconf import OmegaConf
from rich.console import Console

from launch.bench.cache import cache_path, load_host, load_measured
from launch.conf_tree import group_choices, load_gpu_profile, override_keys
from launch.perfmodel.choose import choose_layout
from launch.perfmodel.hardware import PartRates, part_rates
from launch.perfmodel.host import HostRates, HostWorkload
from launch.perfmodel.step import Placement, emulated_link_gbps
from launch.terminal import warning
from train.spec.config import GpuConfig, LayoutName, PeakTflops, RunConfig
from train.spec.config_error import ConfigError
from train.spec.degrees import BatchRule, resolve_degrees
from train.spec.devices import (
    MachineProbe,
    cpu_model_name,
    machine_probe,
    mig_slice,
    name_matches,
    profile_mismatch,
)
from train.spec.precision import precision_for_run

# Loggers that print import-time noise (missing optional kernels) on a machine without them.
NOISY_LOGGERS = ("torchao", "torch._inductor", "torch.utils._pytree", "triton")


def match_profile(device_name: str, memory_gib: float | None) -> str | None:
    """The profile whose name patterns match the device name (and memory range, if it has one).
    None for a MIG slice: it has only part of a chip's SMs, so no chip's peak is its own."""
    if mig_slice(device_name) is not None:
        return None
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


# Device files a CUDA (NVIDIA) or ROCm (AMD, also torch.cuda) GPU needs to be usable here.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def no_gpu_here() -> bool:
    """True when this machine has none of the device files a GPU runtime opens: torch could
    not see a GPU either, so the driver need not import it (1.3 s of every launch on CPU)."""
    return not any(os.path.exists(path) for path in GPU_DEVICE_FILES)


def local_gpus() -> list[tuple[str, float]]:
    """(name, memory GiB) of every GPU the driver sees, in CUDA order; none without CUDA."""
    if no_gpu_here():
        return []
    import torch  # the driver imports torch only to look at this machine's devices

    if not torch.cuda.is_available():
        return []
    found = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        found.append((props.name, props.total_memory / 2**30))
    return found


def local_power_limit_w(index: int = 0) -> float | None:
    """GPU ``index``'s enforced board power limit in watts, as nvidia-smi reports it; None
    without nvidia-smi (ROCm, CPU) or when it does not answer in time."""
    query = ["--query-gpu=power.limit", "--format=csv,noheader,nounits"]
    argv = ["nvidia-smi", *query, "--id", str(index)]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=True).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def with_power_limit(profile: GpuConfig, limit_w: float | None) -> tuple[GpuConfig, str]:
    """The profile at the device's power limit when that is below its TDP (a capped host, such
    as Meta's Grand Teton H100s at 500 of 700 W), and what was found; else unchanged."""
    tdp = profile.tdp_w
    if limit_w is None or not tdp or limit_w >= tdp - 1:  # 1 W: nvidia-smi's rounding
        return profile, ""
    capped = dataclasses.replace(profile, power_limit_w=limit_w)
    return capped, f"; power limit {limit_w:g} of {tdp:g} W (nvidia-smi)"


def leading_same_kind(gpus: list[tuple[str, float]]) -> int:
    """How many GPUs, from GPU 0 on, are the kind GPU 0 is: ranks take GPUs 0..n-1 (one per
    local rank), so a run of n ranks is one kind only when n is at most this."""
    count = 0
    for name, memory_gib in gpus:
        if name != gpus[0][0] or abs(memory_gib - gpus[0][1]) > 1:
            break
        count += 1
    return count


def other_kinds(gpus: list[tuple[str, float]]) -> str:
    """ "GPU 8: NVIDIA A100 80GB PCIe" for each GPU after the first run of GPU 0's kind."""
    start = leading_same_kind(gpus)
    return ", ".join(f"GPU {i}: {name}" for i, (name, _) in enumerate(gpus) if i >= start)


def detect_local() -> tuple[GpuConfig, str]:
    """(profile, what was detected) for the machine the driver runs on: GPU 0's kind, and the
    GPUs of other kinds it has, which the node's defaults leave out (resolve_node_defaults)."""
    gpus = local_gpus()
    if not gpus:
        return load_gpu_profile("cpu"), "no CUDA device: cpu"
    device_name, memory_gib = gpus[0]
    detected = f"{device_name} ({memory_gib:.0f} GiB)"
    if leading_same_kind(gpus) < len(gpus):
        detected += f"; other kinds here, left out of the defaults ({other_kinds(gpus)})"
    if mig_slice(device_name) is not None:
        return unknown_profile(device_name), (
            f"{detected}: a MIG slice, whose peak is a part of its chip's, MFU will be null"
        )
    name = match_profile(device_name, memory_gib)
    if name is None:
        return unknown_profile(device_name), f"{detected}: no matching profile, MFU will be null"
    profile, capped = with_power_limit(load_gpu_profile(name), local_power_limit_w())
    return profile, f"{detected}: profile {name}{capped}"


def local_device_name() -> tuple[str, str]:
    """(device type, device name) of the machine the driver runs on."""
    if no_gpu_here():
        return "cpu", cpu_model_name()
    import torch  # the driver imports torch only to look at this machine's device

    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name(0)
    return "cpu", cpu_model_name()


def cuda_capability() -> tuple[int, int]:
    """GPU 0's compute capability (the driver asks only where local_device_name saw CUDA)."""
    import torch  # the driver imports torch only to look at this machine's device

    return torch.cuda.get_device_capability(0)


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


def resolve_gpu(cfg: RunConfig, overrides: list[str], console: Console) -> None:
    """gpu=auto: the profile of this machine's device (refused for Slurm before this), with
    the command line's gpu.* keys kept (gpu.power_limit_w=500 on a capped cluster)."""
    if cfg.gpu.name != "auto":
        return
    with quiet_third_party():
        cfg.gpu, detected = detect_local()
    gpu_keys = [o.lstrip("+") for o in overrides if o.lstrip("+").startswith("gpu.")]
    if gpu_keys:
        profile = OmegaConf.merge(
            OmegaConf.structured(cfg.gpu),
            OmegaConf.from_dotlist([key.removeprefix("gpu.") for key in gpu_keys]),
        )
        cfg.gpu = OmegaConf.to_object(profile)
    cfg.resolved.gpu_detected = detected
    console.print(f"gpu=auto: {detected}")


def resolve_node_defaults(cfg: RunConfig, overrides: list[str], console: Console) -> None:
    """On a GPU node the defaults use the node: one rank per visible GPU of GPU 0's kind, and a
    weak sweep over powers of two up to them, unless the command line set either. A node
    whose GPUs are of several kinds: more ranks than the first run of one kind is refused.
    Real nodes (cluster=slurm or multinode): sweep_every_node."""
    if cfg.cluster.name != "local" or cfg.launcher.name == "slurm" or cfg.gpu.name == "cpu":
        return
    with quiet_third_party():
        found = local_gpus()
    if not found:
        return
    gpus = leading_same_kind(found)
    changed = []
    if "cluster.nproc_per_node" not in override_keys(overrides):
        cfg.cluster.nproc_per_node = gpus
        changed.append(f"cluster.nproc_per_node={gpus}")
    elif gpus < cfg.cluster.nproc_per_node <= len(found):
        raise ConfigError(
            "cluster.nproc_per_node",
            f"{cfg.cluster.nproc_per_node} ranks would take GPUs 0-"
            f"{cfg.cluster.nproc_per_node - 1}, which are not one kind (GPU 0 on: {found[0][0]}; "
            f"{other_kinds(found)}): per-device figures and MFU need one kind; "
            f"use at most {gpus}, or set CUDA_VISIBLE_DEVICES to GPUs of one kind",
        )
    if cfg.sweep.name != "none" and "sweep.world_sizes" not in override_keys(overrides):
        top = cfg.cluster.nodes * cfg.cluster.nproc_per_node
        cfg.sweep.world_sizes = _powers_of_two_up_to(top)
        changed.append(f"sweep.world_sizes={cfg.sweep.world_sizes}")
    if changed:
        kinds = f" of one kind (left out: {other_kinds(found)})" if gpus < len(found) else ""
        console.print(f"this node has {gpus} GPU(s){kinds}: " + ", ".join(changed))


def _powers_of_two_up_to(top: int) -> list[int]:
    return [2**k for k in range(top.bit_length()) if 2**k <= top]


def sweep_every_node(cfg: RunConfig, overrides: list[str], console: Console) -> None:
    """On real nodes (cluster=slurm or multinode) the sweep's default reaches all of them:
    powers of two up to cluster.nodes x cluster.nproc_per_node (sweep/weak.yaml's [1, 2]
    would leave every node but one idle), unless the command line set the sweep."""
    if cfg.cluster.name not in ("slurm", "multinode"):
        return
    if cfg.sweep.name == "none" or "sweep.world_sizes" in override_keys(overrides):
        return
    nodes, per_node = cfg.cluster.nodes, cfg.cluster.nproc_per_node
    if nodes < 1 or per_node < 1:
        return  # refused by validation, naming the key
    sizes = _powers_of_two_up_to(nodes * per_node)
    if sizes != list(cfg.sweep.world_sizes):
        cfg.sweep.world_sizes = sizes
        console.print(
            f"cluster={cfg.cluster.name}: {nodes} node(s) x {per_node} rank(s): "
            f"sweep.world_sizes={sizes} (set it, or sweep=none for one run on them all)",
        )


def state_precision(cfg: RunConfig, setup, console: Console) -> str | None:
    """Say what precision the ranks will run in, and from what, before they start.

    Ranks decide on their own device. When they run on this machine and the profile describes
    it, the driver asks the same question here. Otherwise (Slurm, or a profile for other
    hardware, e.g. an H100 job prepared on a CPU login node) it says what the nodes will pick
    with and without an fp8 library there, instead of what this machine would.
    """
    if cfg.launcher.name == "slurm":  # decided on the nodes: this machine is not asked
        console.print(f"precision: {cfg.precision.name} -> {nodes_outlook(cfg)}")
        return
    with quiet_third_party():
        device_type, device_name = local_device_name()
        mismatch = profile_mismatch(cfg.gpu, device_type, device_name)
        if cfg.launcher.name != "slurm" and not mismatch:
            cfg.gpu, measured = with_measured_peaks(cfg.gpu, cfg.cluster.cpu_threads_per_rank)
            if measured:
                console.print(f"peak: {measured}")
            if cfg.precision.name == "tf32" and device_type == "cpu":
                console.print(warning("precision=tf32 on cpu is a no-op: matmuls run in fp32"))
            capability = cuda_capability() if device_type == "cuda" else None
            plan = precision_for_run(cfg, machine_probe(device_type, capability))
            console.print(f"precision: {cfg.precision.name} -> {plan.resolved} ({plan.reason})")
            return str(plan.resolved)  # what the ranks here resolve (None: decided elsewhere)
    if mismatch and cfg.launcher.name != "slurm" and cfg.cluster.name in ("local", "emulated"):
        console.print(warning(mismatch))
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
    """parallel=auto: each run's layout (chosen by ``choose_layouts`` when plan_runs has not
    already), said on the console with its reason, as precision is."""
    if cfg.parallel.name != "auto":
        return plans
    if any(plan.parallel is None for plan in plans):
        plans = choose_layouts(cfg, plans)
    for plan in plans:
        console.print(
            f"layout: auto -> {plan.parallel.name} at world size {plan.world_size} "
            f"({plan.layout_reason})",
        )
    return plans


def choose_layouts(cfg: RunConfig, plans: list) -> list:
    """parallel=auto: the performance model's best layout for each run, with its reason (the
    same question `python -m launch.project` answers for parts not at hand). The cpu profile
    has no datasheet: the model runs on this host's measured ceiling (launch.mamf's cache,
    attached here, before choosing) and its measured kernel times where cached; with no
    measured ceiling it is ddp, and the reason says how to measure one. Under weak scaling
    each run keeps the smallest run's sequences per device: the layouts compared at one world
    size, and the runs of the sweep, then share one workload (BatchRule.weak_per_device)."""
    if cfg.parallel.name != "auto":
        return plans
    rates = None
    if cfg.gpu.name == "cpu":
        cfg.gpu, _ = with_measured_peaks(cfg.gpu, cfg.cluster.cpu_threads_per_rank)
        if cfg.gpu.measured_peak_tflops.fp32:
            rates = _host_rates(cfg)
    chosen = []
    if cfg.sweep.name == "weak" and plans:
        batch = BatchRule.weak_per_device(cfg.train.global_batch, plans[0].world_size)
    else:
        batch = BatchRule(global_batch=cfg.train.global_batch)
    refused: ConfigError | None = None
    for plan in plans:
        try:
            parallel, degrees, reason = _pick(cfg, plan, batch, rates)
        except ConfigError as exc:
            if exc.key != "parallel":
                raise
            refused = refused or exc  # the first; the others are tried for the hint
            continue
        chosen.append(
            dataclasses.replace(
                plan,
                global_batch=batch.global_batch_for(degrees),
                parallel=parallel,
                layout_reason=reason,
            )
        )
    if refused:
        raise _sizes_that_fit(refused, [p.world_size for p in chosen])
    return chosen


def _sizes_that_fit(refused: ConfigError, fitting: list[int]) -> ConfigError:
    """A sweep's first world size where no layout fits, with the sweep that would run: its
    sizes where one does (a model too big for one GPU in a sweep that starts at one rank)."""
    if not fitting:
        return refused
    sizes = ",".join(map(str, fitting))
    return ConfigError(
        refused.key,
        f"{refused.message}; of this sweep's world sizes, {', '.join(map(str, fitting))} fit: "
        f"sweep.world_sizes=[{sizes}]",
    )


NO_CEILING = (
    "parallel=auto on cpu: no measured matmul ceiling for this CPU, so the performance model "
    "has no rate to compare layouts with (python -m launch.mamf measures one): ddp"
)


def _pick(cfg: RunConfig, plan, batch: BatchRule, rates: PartRates | None):
    """(parallel config, degrees, reason) of one run: the model's choice, or ddp on a cpu
    profile without a measured ceiling."""
    parallel = copy.deepcopy(cfg.parallel)
    if cfg.gpu.name == "cpu" and rates is None:
        return _ddp(parallel, plan, NO_CEILING)
    if cfg.precision.name == "fp8" and not cfg.gpu.fp8:
        # Refused by the driver's validation (it names the parts with fp8): no layout to rank.
        return _ddp(parallel, plan, f"parallel=auto: {cfg.gpu.name} has no fp8: ddp")
    try:
        where = Placement(plan.world_size, plan.nproc_per_node, plan.nodes)
        choice = choose_layout(cfg, where, batch=batch, rates=rates)
    except ConfigError as exc:
        if exc.key == "parallel":
            raise  # no layout fits: the model's own account of why
        if exc.key == "gpu.nic_gbits_per_s_per_gpu":
            # A missing input, not a rule: a ddp stand-in would pass validation and run a
            # layout nobody chose (llama_7b under ddp on 2 nodes of H200 NVL).
            raise ConfigError(
                exc.key,
                f"{exc.message}; parallel=auto ranks layouts across nodes on it: set "
                "gpu.nic_gbits_per_s_per_gpu=GBITS (the NIC line rate each GPU has) or name a "
                "layout (parallel=fsdp, hsdp, ...)",
            ) from None
        # A rule refuses every layout (fp8 without a wide enough layer, a sequence too long):
        # ddp stands in, and the driver's validation reports the rule in its usual order.
        return _ddp(parallel, plan, f"parallel=auto: every layout refused ({exc}): ddp")
    parallel.name = choice.name
    for key, value in choice.as_dict().items():
        if hasattr(parallel, key) and key != "name":
            setattr(parallel, key, value)
    reason = choice.reason
    if cfg.gpu.name == "cpu":
        reason += f"; {cpu_ranked_on(cfg)}"
    return parallel, choice.degrees, reason


# What a cpu profile's choice was ranked on. launch.mamf caches the ceiling; the kernel times at
# a run's own shapes are cached by `launch.mamf --host-shapes` or an fp32 sweep's report
# (launch/training.py), so a first run on a host may have only the ceiling, which prices every
# kernel as a matmul at it (HostRates: a shape not cached runs at the ceiling).
CPU_RANKED_ON_CEILING = (
    "ranked on this host's measured fp32 matmul ceiling alone: no kernel times at this run's "
    "shapes are cached (python -m launch.mamf --host-shapes CONFIG, or an fp32 sweep's report, "
    "measures them)"
)


def cpu_ranked_on(cfg: RunConfig) -> str:
    """What the cpu profile's layout choice was ranked on: how many of this run's kernel
    shapes (one rank, no TP: every candidate runs them) have measured times in the cache."""
    record = load_host(cpu_model_name(), cfg.cluster.cpu_threads_per_rank)
    shapes = HostWorkload(
        cfg.model, cfg.train.micro_batch, cfg.train.seq_len, (1,),
        cfg.cluster.cpu_threads_per_rank,
    )  # fmt: skip
    total = len(shapes.missing(None))
    measured = total - len(shapes.missing(record))
    if not measured:
        return CPU_RANKED_ON_CEILING
    rest = "" if measured == total else ", the others at its fp32 matmul ceiling"
    return f"ranked on this host's measured fp32 kernel times ({measured} of {total} shapes{rest})"


def _ddp(parallel, plan, reason: str):
    parallel.name = LayoutName.ddp
    parallel.dp_replicate, parallel.dp_shard, parallel.tp, parallel.pp = -1, 1, 1, 1
    return parallel, resolve_degrees(parallel, plan.world_size, plan.nproc_per_node), reason


def _host_rates(cfg: RunConfig) -> PartRates:
    """The cpu profile's rates: the measured ceiling, itemised over this workload's measured
    kernel times where launch.mamf --host-shapes cached them (a shape not cached runs at the
    ceiling)."""
    record = load_host(cpu_model_name(), cfg.cluster.cpu_threads_per_rank)
    ceiling = cfg.gpu.measured_peak_tflops.fp32
    host = HostRates.from_record(record, ceiling * 1e12) if record else None
    return part_rates(cfg.gpu, precision="fp32", host=host, link_gbps=emulated_link_gbps(cfg))
