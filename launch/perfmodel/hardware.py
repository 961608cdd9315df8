"""What a gpu profile implies for the model: achievable compute, memory and link rates.

The profile (conf/gpu/*.yaml) gives datasheet figures; a step never reaches them. Each
fraction below is the share of a datasheet figure that published measurements reach, with
its source (docs/performance-model.md has the table). Where no measurement was found the
fraction is an assumption and says so. Nothing here is fitted to the training step times
the docs compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

from launch.perfmodel.host import HostRates
from launch.perfmodel.nccl_tuning import (
    NVLINK_LINE_GBYTES_PER_S,
    NVLINK_LINK_GBYTES_PER_S,
    NVLS_EFFICIENCY,
)
from train.spec.config import GpuConfig

GIB = 2**30

# Generation of each profile: the measured fractions below are per generation.
GENERATION = {
    "a100_40g": "ampere",
    "a100_80g": "ampere",
    "a800": "ampere",
    "h100_sxm": "hopper",
    "h100_hbm2e": "hopper",
    "h100_pcie": "hopper",
    "h800_pcie": "hopper",
    "h200_nvl": "hopper",
    "h800": "hopper",
    "h200": "hopper",
    "h20": "hopper",
    "l40s": "ada",
}

# Achievable matmul share of the dense peak when launch.mamf has not measured the part. Not the
# best case over a shape sweep (MAMF, stas00/ml-engineering "Maximum Achievable Matmul FLOPS
# comparison table": A100 SXM 271.2/312 = 0.869, H100 SXM 794.5/989 = 0.803), but one large
# square GEMM, which a step's mix of shapes does not beat: Hopper, bf16 8192^3 measured at
# 773-779 of 989 TFLOP/s on an H200 (shared/reference/anchors.md, this project, 2026-11-27):
# 0.78; launch.mamf on an H100 SXM 766.9 (0.775) and that run's own GEMMs at the step's shapes
# 0.787 (results/gpu/2026-11-28-h100-sxm, bench/h100_trace_constants.py) agree. Ampere: the MAMF
# table's A100 PCIe (the same GA100 and 312 TFLOP/s peak at a lower
# power limit) 252.9/312 = 0.81, ASSUMED to stand for an SXM part's typical large GEMM.
# Ada: no measurement, Hopper's assumed.
MATMUL_FRACTION = {"ampere": 0.81, "hopper": 0.78, "ada": 0.78}
# fp8 (torchao / TE scaled GEMMs): _scaled_mm 8192^3 at 1389-1408 of 1979 TFLOP/s on the same
# H200 (anchors.md): 0.70, against the MAMF table's best 0.709 (H100). Ada assumed alike.
FP8_MATMUL_FRACTION = {"hopper": 0.70, "ada": 0.70}
MATMUL_SOURCE = {
    "ampere": "assumed 0.81: MAMF A100 PCIe 252.9/312 (ml-engineering), not the SXM best 0.869",
    "hopper": "bf16 8192^3 773/989 on H200 (shared/reference/anchors.md), not the MAMF best",
    "ada": "assumed 0.78 (no published measurement for Ada)",
}
# Causal fused attention forward + backward (SDPA on CUDA: FlashAttention-2 or cuDNN), against
# the dense peak, its FLOPs counted as the FA2 paper counts them (Dao 2023: causal = half, the
# backward 2.5 x the forward). Ampere: 50-73% of the A100 peak in that paper, 0.6 taken.
# Hopper: this project's H100 trace (bench/h100_trace_constants.py: SDPA's cuDNN kernels,
# torch 2.11) 0.384, beside the FA3 paper's (Shah et al. 2024) FA2 at 35% of the H100 peak:
# 0.38. Ada assumed like Hopper's FA2 figure (0.35).
ATTENTION_FRACTION = {"ampere": 0.60, "hopper": 0.38, "ada": 0.35}
# Memory-bound kernels (norms, rope, SwiGLU, residual adds, casts, the loss, AdamW): the bytes
# compute.py counts stream at this share of the datasheet HBM rate. Measured on this
# project's own eager H100 run (bench/h100_trace_constants.py: 309 GB counted, 0.216 s of
# elementwise, reduction, copy and optimizer kernels per step): 0.43, far below a STREAM
# copy's 0.86-0.88 (the H200 device copy, anchors.md): the count misses fp32 intermediates
# and kernels run below bandwidth. Other parts ASSUMED alike (the same code runs there).
HBM_FRACTION = 0.43
# Bytes counted exactly, in kernels that only stream (fp8's casts, compute.py's sequence-
# parallel regrouping copies: torch.cat), at a device copy's share of the datasheet rate:
# 4.13-4.23 of 4.8 TB/s (read + write) on an H200 (shared/reference/anchors.md, 2026-11-27):
# 0.87. Other parts ASSUMED alike. Chosen for these after fp8 was first counted at
# HBM_FRACTION, which put torchtitan's compiled Float8 runs and this project's own H100
# fp8 run (results/gpu/2026-11-28-h100-sxm) 10-12% slow against bf16 (docs: the fp8 casts).
COPY_FRACTION = 0.87
DEFAULT_MATMUL_FRACTION = 0.78  # a part of no known generation (assumed)
# A board power limit below TDP (gpu.power_limit_w, e.g. Meta's Grand Teton H100s at 500 W of
# 700): throughput of LLM training relative to the TDP, by limit / TDP. H100: Mayr et al.
# 2026, "AI Application Benchmarking: Power-Aware Performance Analysis for Vision and Language
# Models" (arXiv:2603.16164), Table 4, "Pre-training / H100" (Llama 3 8B continued pre-training
# in LitGPT, bf16, 4 GPUs of one node, caps set with nvidia-smi): 200 W 0.320, 300 W 0.594,
# 400 W 0.821, 500 W 0.915, 600 W 0.966 of 700 W's tokens/s. Read as transcribed in a public
# repository's assumptions register, not in the paper itself (not reachable here); its cluster's
# H100s are, by the group's companion paper (arXiv:2604.11391), the 94 GiB HBM2e SXM part:
# h100_hbm2e. Taken for the other 700 W H100 dies (h100_sxm, h800: HBM3, ASSUMED alike); not for
# the H200, which the same paper finds behaves differently, nor for parts of another TDP.
# Linear between the rows; below the lowest the lowest share (no extrapolation). Applied to the
# achievable compute and memory rates alike (the measurement is of whole steps); links are not
# slowed. A measured ceiling (launch.mamf) already ran at the card's own limit and is not
# scaled. Parts without a curve: no slowdown is modelled and the rates' source says so. Chosen
# after torchtitan's 500 W rows were seen 24-30% optimistic; the figure is the paper's, not
# fitted to those rows.
H100_POWER_CURVE = (
    (200 / 700, 0.320),
    (300 / 700, 0.594),
    (400 / 700, 0.821),
    (500 / 700, 0.915),
    (600 / 700, 0.966),
    (1.0, 1.0),
)
POWER_LIMIT_THROUGHPUT = {
    "h100_hbm2e": H100_POWER_CURVE,
    "h100_sxm": H100_POWER_CURVE,
    "h800": H100_POWER_CURVE,
}
POWER_LIMIT_SOURCE = "Mayr et al. 2026 (arXiv:2603.16164) Table 4, H100 pre-training"
# Streaming multiprocessors per part (NVIDIA A100 and H100 whitepapers, L40S datasheet; H800,
# A800 and H200 share their twin's die; H20 78 reported, UNVERIFIED). NCCL runs each channel
# as a block on an SM of its own, which overlapped compute then lacks (overlap.py).
SMS = {
    "a100_40g": 108,
    "a100_80g": 108,
    "a800": 108,
    "h100_sxm": 132,
    "h100_hbm2e": 132,
    "h800": 132,
    "h200": 132,
    "h20": 78,
    "h100_pcie": 114,
    "h800_pcie": 114,
    "h200_nvl": 132,
    "l40s": 142,
}
# Idle time between consecutive GPU kernels of an eager step (launch latency the host did not
# hide): 2.6 us per kernel in this project's H100 trace (16.7 ms idle over 6391 kernels per
# step, bench/h100_trace_constants.py); NVIDIA's "Getting Started with CUDA Graphs" (2019)
# shows ~1 us per back-to-back kernel as the floor.
KERNEL_GAP_S = 2.6e-6
# Device memory: the "80GB" of an A100 or H100 is 80 GiB (A100 80GB: 81920 MiB in
# nvidia-smi), of which CUDA shows less; this project's H200 ("141 GB") shows 139 GiB (the
# device notes). The profile's hbm_gb is taken as GiB, 139/141 of it visible.
VISIBLE_MEMORY_SHARE = 139 / 141

# Links. Achievable share of the per-direction rate seen as nccl-tests busbw:
# NVLink: NCCL's topology model gives each NVLink 20.0 GB/s (sm80) or 20.6 GB/s (sm90) of the
# 25 GB/s line rate per direction (src/graph/topo.h): 0.80 and 0.824 (nccl_tuning.py). The
# maintainer's H100 figure (~370 GB/s ring busbw, nccl-tests #212) and DeepSeek-V3's H800
# (~160 of 200 GB/s, arXiv 2412.19437 sec. 3.2.2) agree. NIC: 4 x HDR (100 GB/s per node)
# measured 85-96 GB/s busbw (nccl-tests issue #119) -> 0.9. PCIe: 0.75 of the x16 rate
# assumed (p2p through the host bridge, UNVERIFIED).
NVLINK_FRACTION = {
    gen: rate / NVLINK_LINE_GBYTES_PER_S for gen, rate in NVLINK_LINK_GBYTES_PER_S.items()
}
DEFAULT_NVLINK_FRACTION = NVLINK_FRACTION["ampere"]
NIC_FRACTION = 0.90
PCIE_FRACTION = 0.75
# PCIe per direction, x16: Gen4 32 GB/s, Gen5 64 GB/s (shared reference gpus.md column "PCIe").
PCIE_GBYTES_PER_S = {"ampere": 32.0, "hopper": 64.0, "ada": 32.0}
# Ranks the NVLink of a part joins: NVSwitch parts the whole node; the PCIe cards' NVLink is
# a bridge (profile sources: H100/H800 PCIe pairs; H200 NVL 2- or 4-way, 2 taken), so a
# larger group in the node runs over PCIe, and without an NVSwitch there is no NVLink SHARP.
NVLINK_SPAN = {"h100_pcie": 2, "h800_pcie": 2, "h200_nvl": 2}

# CPU ranks talk through gloo over TCP; NCCL's latency model does not apply. Measured on this
# project's reference host (2-core AMD EPYC, torch 2.13 CPU, 2 ranks on one node), 3 runs of
#   python -m launch.comm sweep=none comm.ops=[all_reduce,all_gather,reduce_scatter]
#     comm.max_bytes=8388608 comm.seconds_per_op=6 comm.seconds_per_size=0.3
# median time per size, then t = alpha + bus bytes / busbw fitted over 1 KiB..8 MiB (least
# squares on relative error). Per op: (alpha s, busbw GB/s). A comm.json of another host
# replaces them (project.calibrate_comm).
GLOO_LOOPBACK = {
    "all_reduce": (475e-6, 1.81),
    "all_gather": (323e-6, 0.83),
    "reduce_scatter": (1333e-6, 1.03),
}
GLOO_LOOPBACK_SOURCE = "gloo on loopback, measured with launch.comm on the reference host"
# The emulated cluster's link: TCP over a veth pair shaped by tc tbf. Goodput: the tbf counts
# whole Ethernet frames (1514 bytes at MTU 1500) of which TCP carries MSS 1448 (20 IP + 32 TCP
# with timestamps + 14 Ethernet bytes of headers): 1448 / 1514 = 0.956 of the configured rate.
# That holds for a loss-based sender that keeps the tbf queue full: the node namespaces run
# cubic (cluster.link_congestion_control; bbr's ProbeRTT and gain cycling leave the link idle
# part of the time, docs/performance-model.md "Emulated link").
# Latency of one gloo collective across it: 1.7 ms, the median time of launch.comm's 1-4 KiB
# all-reduces at 200 and 20 Mbit/s (cluster=emulated cluster.nodes=2 cluster.nproc_per_node=1;
# size-independent there, so it is alpha, not bandwidth).
TCP_GOODPUT = 1448 / 1514
EMULATED_LINK_FRACTION = TCP_GOODPUT
GLOO_EMULATED_ALPHA_S = 1.7e-3
# Kept for a loopback link given only a measured busbw (intra_gbytes_per_s).
LOOPBACK_GBYTES_PER_S = GLOO_LOOPBACK["all_reduce"][1]
GLOO_STEP_US = GLOO_LOOPBACK["all_reduce"][0] * 1e6 / 2  # 2 ring steps for 2 ranks


RING_STEP_US = {"nvlink": 3.4, "pcie": 5.7, "net": 14.0}  # tuning.cc: ring, Simple


@dataclass(frozen=True)
class GlooCost:
    """One gloo collective: a fixed latency and a bus bandwidth (alpha-beta)."""

    alpha_s: float
    busbw_gbytes_per_s: float
    source: str


def gloo_loopback() -> dict[str, GlooCost]:
    return {
        op: GlooCost(alpha, busbw, GLOO_LOOPBACK_SOURCE)
        for op, (alpha, busbw) in GLOO_LOOPBACK.items()
    }


@dataclass(frozen=True)
class Link:
    """One kind of link, one direction: achievable GB/s and the latency of one ring step."""

    kind: str  # nvlink | pcie | net | loopback
    gbytes_per_s: float
    step_latency_s: float
    source: str


@dataclass(frozen=True)
class PartRates:
    """What the model reads of a part: peaks, achievable fractions and links."""

    name: str
    generation: str | None
    peak_tflops: dict[str, float | None]
    matmul_fraction: float
    attention_fraction: float
    compute_source: str
    hbm_bytes: float | None
    hbm_gbytes_per_s: float | None  # achievable by the counted elementwise work
    gpus_per_node: int
    intra: Link | None  # between ranks of one node joined by NVLink (or loopback on CPU)
    intra_span: int  # ranks the intra link joins (NVSwitch: the node)
    pcie: Link | None  # between ranks of one node beyond intra_span
    inter: Link | None  # the NIC of one GPU (rail), across nodes
    # What all ranks of one node together can send across nodes, when that is less than
    # ranks x inter (an emulated node's single link); None: each rank has its own NIC.
    inter_node_cap_gbytes_per_s: float | None = None
    # The cpu profile: kernel times measured at the workload's shapes (perfmodel/host.py).
    host: HostRates | None = None
    # Gloo's measured alpha-beta per collective on loopback / the emulated link (CPU ranks).
    gloo: dict[str, GlooCost] | None = None
    # NVLink SHARP: the share of the NVLink rate an NVLS all-reduce reaches (None: no NVLS:
    # no NVSwitch, or a generation without it).
    nvls_efficiency: float | None = None
    sms: int | None = None  # streaming multiprocessors (NCCL's channels take some)
    fp8_matmul_fraction: float | None = None  # of the fp8 peak (None: the bf16 fraction)
    copy_gbytes_per_s: float | None = None  # by kernels that only stream (COPY_FRACTION)

    def link_inside(self, group_ranks_in_node: int) -> Link | None:
        if self.intra is not None and group_ranks_in_node <= self.intra_span:
            return self.intra
        return self.pcie or self.intra


def part_rates(
    gpu: GpuConfig,
    *,
    compute_tflops: float | None = None,
    precision: str = "bf16",
    link_gbps: float | None = None,
    intra_gbytes_per_s: float | None = None,
    host: HostRates | None = None,
) -> PartRates:
    """The rates of ``gpu``. ``compute_tflops``: an achievable matmul rate that replaces the
    datasheet peak x fraction (a launch.mamf measurement, or a calibration); ``link_gbps``:
    the inter-node link per node in Gbit/s (the emulated cluster's ``cluster.link_gbps``);
    ``intra_gbytes_per_s``: a measured busbw inside a node; ``host``: the cpu profile's
    kernel times measured at the workload's shapes (compute is then itemised over them)."""
    generation = GENERATION.get(gpu.name)
    peaks = {p: getattr(gpu.peak_tflops, p) for p in ("fp32", "tf32", "bf16", "fp16", "fp8")}
    matmul, attention, source = _compute_fractions(
        gpu, generation, peaks, compute_tflops, precision
    )
    power, power_source = power_limit_share(gpu)
    measured = compute_tflops is not None or getattr(gpu.measured_peak_tflops, precision, None)
    if not measured:
        matmul, attention = matmul * power, attention * power
    if power_source:
        source = f"{source}; {power_source}"
    hbm = gpu.hbm_gbytes_per_s * HBM_FRACTION * power if gpu.hbm_gbytes_per_s else None
    copy = gpu.hbm_gbytes_per_s * COPY_FRACTION * power if gpu.hbm_gbytes_per_s else None
    span = NVLINK_SPAN.get(gpu.name, gpu.gpus_per_node)
    nvswitch = bool(gpu.nvlink_gbytes_per_s_bidir) and span == gpu.gpus_per_node
    return PartRates(
        name=gpu.name,
        generation=generation,
        peak_tflops=peaks,
        matmul_fraction=matmul,
        attention_fraction=attention,
        compute_source=source,
        hbm_bytes=gpu.hbm_gb * GIB * VISIBLE_MEMORY_SHARE if gpu.hbm_gb else None,
        hbm_gbytes_per_s=hbm,
        gpus_per_node=gpu.gpus_per_node,
        intra=_intra_link(gpu, generation, intra_gbytes_per_s),
        intra_span=span,
        pcie=_pcie_link(gpu, generation),
        inter=_inter_link(gpu, link_gbps),
        inter_node_cap_gbytes_per_s=link_gbps / 8 * EMULATED_LINK_FRACTION if link_gbps else None,
        host=host if gpu.name == "cpu" else None,
        gloo=gloo_loopback() if gpu.name == "cpu" and not intra_gbytes_per_s else None,
        nvls_efficiency=NVLS_EFFICIENCY.get(generation or "") if nvswitch else None,
        sms=SMS.get(gpu.name),
        fp8_matmul_fraction=_fp8_fraction(generation, matmul),
        copy_gbytes_per_s=copy,
    )


def power_limit_share(gpu: GpuConfig) -> tuple[float, str]:
    """(throughput share at gpu.power_limit_w of its TDP, what says so; "" at the TDP).
    POWER_LIMIT_THROUGHPUT's curve, linear between its rows; 1 where no curve is published."""
    limit, tdp = gpu.power_limit_w, gpu.tdp_w
    if limit is None or not tdp or not 0 < limit < tdp:  # rules.check_gpu refuses the rest
        return 1.0, ""
    curve = POWER_LIMIT_THROUGHPUT.get(gpu.name)
    if curve is None:
        return 1.0, f"{limit:g} W of {tdp:g} W: not modelled (no published curve for this part)"
    ratio = limit / tdp
    share = curve[0][1]
    for (low_r, low_s), (high_r, high_s) in zip(curve[:-1], curve[1:], strict=True):
        if low_r <= ratio <= high_r:
            share = low_s + (high_s - low_s) * (ratio - low_r) / (high_r - low_r)
    return share, f"{limit:g} W of {tdp:g} W: x{share:.3f} ({POWER_LIMIT_SOURCE})"


def _fp8_fraction(generation: str | None, matmul: float) -> float | None:
    """fp8's share of its peak: the generation's, scaled as bf16's was when a measured ceiling
    replaced the default (the ratio of the two is kept)."""
    default = FP8_MATMUL_FRACTION.get(generation or "")
    if default is None:
        return None
    return default * matmul / MATMUL_FRACTION.get(generation, DEFAULT_MATMUL_FRACTION)


def _compute_fractions(
    gpu: GpuConfig,
    generation: str | None,
    peaks: dict[str, float | None],
    compute_tflops: float | None,
    precision: str,
) -> tuple[float, float, str]:
    """(matmul fraction, attention fraction, source). A measured ceiling (the argument, else
    launch.mamf's gpu.measured_peak_tflops) is already achievable: it replaces peak x the
    generation's fraction; the cpu profile's becomes its peak, at fraction 1."""
    matmul = MATMUL_FRACTION.get(generation, DEFAULT_MATMUL_FRACTION)
    attention = ATTENTION_FRACTION.get(generation, matmul)
    source = MATMUL_SOURCE.get(generation, f"assumed {DEFAULT_MATMUL_FRACTION}")
    measured = getattr(gpu.measured_peak_tflops, precision, None)
    if compute_tflops is None and measured:
        compute_tflops, source = measured, gpu.measured_source or "launch.mamf measurement"
    if compute_tflops is None:
        return matmul, attention, source
    peak = peaks.get(precision)
    if not peak or gpu.name == "cpu":
        peaks[precision] = compute_tflops
        matmul = 1.0
    else:
        matmul = compute_tflops / peak
    attention = matmul if generation is None else min(attention, matmul)
    source = source if source.startswith(("launch", "MAMF")) else f"measured: {source}"
    return matmul, attention, source


def _intra_link(gpu: GpuConfig, generation: str | None, measured: float | None) -> Link | None:
    if measured:
        kind = "nvlink" if gpu.nvlink_gbytes_per_s_bidir else "loopback"
        step = RING_STEP_US["nvlink"] if kind == "nvlink" else GLOO_STEP_US
        return Link(kind, measured, step * 1e-6, "measured busbw inside a node")
    if gpu.nvlink_gbytes_per_s_bidir:
        fraction = NVLINK_FRACTION.get(generation or "", DEFAULT_NVLINK_FRACTION)
        rate = gpu.nvlink_gbytes_per_s_bidir / 2 * fraction
        source = f"NVLink {gpu.nvlink_gbytes_per_s_bidir / 2:g} GB/s/dir x {fraction:.3f}"
        return Link("nvlink", rate, RING_STEP_US["nvlink"] * 1e-6, source)
    if gpu.name == "cpu":
        source = f"gloo over loopback, assumed {LOOPBACK_GBYTES_PER_S} GB/s"
        return Link("loopback", LOOPBACK_GBYTES_PER_S, GLOO_STEP_US * 1e-6, source)
    return None


def _pcie_link(gpu: GpuConfig, generation: str | None) -> Link | None:
    if generation is None:
        return None
    rate = PCIE_GBYTES_PER_S[generation]
    source = f"PCIe {rate:g} GB/s/dir x {PCIE_FRACTION}"
    return Link("pcie", rate * PCIE_FRACTION, RING_STEP_US["pcie"] * 1e-6, source)


def _inter_link(gpu: GpuConfig, link_gbps: float | None) -> Link | None:
    if link_gbps:
        # One link per node (the emulated cluster's tc tbf): a rank alone may use all of it;
        # the ranks of a node share it (PartRates.inter_node_cap_gbytes_per_s).
        step = GLOO_STEP_US if gpu.name == "cpu" else RING_STEP_US["net"]
        rate = link_gbps / 8 * EMULATED_LINK_FRACTION
        return Link("net", rate, step * 1e-6, f"link {link_gbps:g} Gbit/s per node")
    if gpu.nic_gbits_per_s_per_gpu:
        rate = gpu.nic_gbits_per_s_per_gpu / 8 * NIC_FRACTION
        source = f"NIC {gpu.nic_gbits_per_s_per_gpu:g} Gbit/s per GPU x {NIC_FRACTION}"
        return Link("net", rate, RING_STEP_US["net"] * 1e-6, source)
    return None


def has_nvlink(gpu: GpuConfig) -> bool:
    return bool(gpu.nvlink_gbytes_per_s_bidir)
