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
from train.spec.config import GpuConfig

# Generation of each profile: the measured fractions below are per generation.
GENERATION = {
    "a100_40g": "ampere",
    "a100_80g": "ampere",
    "a800": "ampere",
    "h100_sxm": "hopper",
    "h100_pcie": "hopper",
    "h800_pcie": "hopper",
    "h200_nvl": "hopper",
    "h800": "hopper",
    "h200": "hopper",
    "h20": "hopper",
    "l40s": "ada",
}

# Best bf16 matmul over a sweep of shapes / dense datasheet peak (MAMF, stas00/ml-engineering
# compute/accelerator/README.md, "Maximum Achievable Matmul FLOPS comparison table"):
# A100 SXM 271.2 of 312 (86.9%), H100 SXM 794.5 of 989 (80.3%). Ada: no entry; 0.80 assumed.
MATMUL_FRACTION = {"ampere": 0.869, "hopper": 0.803, "ada": 0.80}
MATMUL_SOURCE = {
    "ampere": "MAMF A100 SXM 271.2/312 (ml-engineering)",
    "hopper": "MAMF H100 SXM 794.5/989 (ml-engineering)",
    "ada": "assumed 0.80 (no published MAMF for Ada)",
}
# Causal attention forward + backward through SDPA's FlashAttention-2 kernels: FA2 paper
# (Dao 2023) reaches 50-73% of A100 peak (0.6 taken); the FA3 paper (Shah et al. 2024) says
# FA2 reaches 35% of H100 peak. Ada assumed like Hopper (FA2 is not tuned for either).
ATTENTION_FRACTION = {"ampere": 0.60, "hopper": 0.35, "ada": 0.35}
# Elementwise kernels (norms, rope, SwiGLU, residual adds, casts, AdamW) stream HBM; 0.8 of
# the datasheet bandwidth is assumed (STREAM-like copies reach 80-90% on A100/H100).
HBM_FRACTION = 0.8
DEFAULT_MATMUL_FRACTION = 0.80  # a part of no known generation (assumed)

# Links. Achievable share of the per-direction rate seen as nccl-tests busbw:
# NVLink: NCCL's own tuning model caps A100 (sm80) ring busbw at 235 GB/s of 300 (0.78,
# src/graph/tuning.cc); DeepSeek-V3 (arXiv 2412.19437, sec. 3.2.2) measured about 160 of the
# H800's 200 GB/s (0.80). NIC: 4 x HDR (100 GB/s per node) measured 85-96 GB/s busbw
# (nccl-tests issue #119) -> 0.9. PCIe: 0.75 of the x16 rate assumed (p2p through the host
# bridge, UNVERIFIED).
NVLINK_FRACTION = 0.80
NIC_FRACTION = 0.90
PCIE_FRACTION = 0.75
# PCIe per direction, x16: Gen4 32 GB/s, Gen5 64 GB/s (shared reference gpus.md column "PCIe").
PCIE_GBYTES_PER_S = {"ampere": 32.0, "hopper": 64.0, "ada": 32.0}
# Ranks the NVLink of a part joins: NVSwitch parts the whole node; the PCIe cards' NVLink is
# a bridge (profile sources: H100/H800 PCIe pairs; H200 NVL 2- or 4-way, 2 taken), so a
# larger group in the node runs over PCIe.
NVLINK_SPAN = {"h100_pcie": 2, "h800_pcie": 2, "h200_nvl": 2}

# NCCL's latency model (src/graph/tuning.cc, Simple protocol for the ring, LL128 for the
# tree): microseconds of base latency per collective and per step on each kind of link.
RING_BASE_US = 8.4
RING_STEP_US = {"nvlink": 3.4, "pcie": 5.7, "net": 9.6}
TREE_BASE_US = 4.4
TREE_STEP_US = {"nvlink": 1.2, "pcie": 1.9, "net": 8.5}
TREE_BANDWIDTH_SHARE = 0.9  # NCCL: tree busbw = 0.9 x ring's (tuning.cc "busBw*.9")

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
# Latency of one gloo collective across it: 1.7 ms, the median time of launch.comm's 1-4 KiB
# all-reduces at 200 and 20 Mbit/s (cluster=emulated cluster.nodes=2 cluster.nproc_per_node=1;
# size-independent there, so it is alpha, not bandwidth).
TCP_GOODPUT = 1448 / 1514
EMULATED_LINK_FRACTION = TCP_GOODPUT
GLOO_EMULATED_ALPHA_S = 1.7e-3
# Kept for a loopback link given only a measured busbw (intra_gbytes_per_s).
LOOPBACK_GBYTES_PER_S = GLOO_LOOPBACK["all_reduce"][1]
GLOO_STEP_US = GLOO_LOOPBACK["all_reduce"][0] * 1e6 / 2  # 2 ring steps for 2 ranks


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


GIB = 2**30


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
    hbm_gbytes_per_s: float | None  # achievable
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
    matmul = MATMUL_FRACTION.get(generation, DEFAULT_MATMUL_FRACTION)
    attention = ATTENTION_FRACTION.get(generation, matmul)
    source = MATMUL_SOURCE.get(generation, f"assumed {DEFAULT_MATMUL_FRACTION}")
    measured = getattr(gpu.measured_peak_tflops, precision, None)
    if compute_tflops is None and measured:
        compute_tflops, source = measured, gpu.measured_source or "launch.mamf measurement"
    if compute_tflops is not None:
        # A measured ceiling is already achievable: it becomes the peak, at fraction 1.
        peak = peaks.get(precision)
        if not peak or gpu.name == "cpu":
            peaks[precision] = compute_tflops
            matmul = 1.0
        else:
            matmul = compute_tflops / peak
        attention = matmul if generation is None else min(attention, matmul)
        source = source if source.startswith(("launch", "MAMF")) else f"measured: {source}"
    hbm = gpu.hbm_gbytes_per_s * HBM_FRACTION if gpu.hbm_gbytes_per_s else None
    return PartRates(
        name=gpu.name,
        generation=generation,
        peak_tflops=peaks,
        matmul_fraction=matmul,
        attention_fraction=attention,
        compute_source=source,
        hbm_bytes=gpu.hbm_gb * 1e9 if gpu.hbm_gb else None,
        hbm_gbytes_per_s=hbm,
        gpus_per_node=gpu.gpus_per_node,
        intra=_intra_link(gpu, intra_gbytes_per_s),
        intra_span=NVLINK_SPAN.get(gpu.name, gpu.gpus_per_node),
        pcie=_pcie_link(gpu, generation),
        inter=_inter_link(gpu, link_gbps),
        inter_node_cap_gbytes_per_s=link_gbps / 8 * EMULATED_LINK_FRACTION if link_gbps else None,
        host=host if gpu.name == "cpu" else None,
        gloo=gloo_loopback() if gpu.name == "cpu" and not intra_gbytes_per_s else None,
    )


def _intra_link(gpu: GpuConfig, measured: float | None) -> Link | None:
    if measured:
        kind = "nvlink" if gpu.nvlink_gbytes_per_s_bidir else "loopback"
        step = RING_STEP_US["nvlink"] if kind == "nvlink" else GLOO_STEP_US
        return Link(kind, measured, step * 1e-6, "measured busbw inside a node")
    if gpu.nvlink_gbytes_per_s_bidir:
        rate = gpu.nvlink_gbytes_per_s_bidir / 2 * NVLINK_FRACTION
        source = f"NVLink {gpu.nvlink_gbytes_per_s_bidir / 2:g} GB/s/dir x {NVLINK_FRACTION}"
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
