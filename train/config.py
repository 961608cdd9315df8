"""The run configuration: one schema shared by the driver and the ranks.

The driver registers these dataclasses with Hydra's ConfigStore (so a typo or a wrong
type fails at compose time); a rank loads the resolved ``config.yaml`` into the same
dataclasses with OmegaConf alone, so `train/` never imports Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16", "fp8")


@dataclass
class PeakTflops:
    """Dense (no 2:4 sparsity) peak TFLOP/s per precision; null when unknown."""

    fp32: float | None = None
    tf32: float | None = None
    bf16: float | None = None
    fp16: float | None = None
    fp8: float | None = None


@dataclass
class GpuConfig:
    """One accelerator profile (conf/gpu/<name>.yaml)."""

    name: str = MISSING
    display_name: str = MISSING
    peak_tflops: PeakTflops = field(default_factory=PeakTflops)
    hbm_gb: float | None = None
    hbm_gbytes_per_s: float | None = None
    # Per GPU, both directions added; a ring collective sees half of it per direction.
    nvlink_gbytes_per_s_bidir: float | None = None
    nic_gbits_per_s_per_gpu: float | None = None
    gpus_per_node: int = 8
    fp8: bool = False
    # Substrings of torch.cuda.get_device_name() that identify this part (gpu=auto).
    device_name_patterns: list[str] = field(default_factory=list)
    # Total device memory in GiB, to tell apart parts that share a name (A100 40 vs 80 GB).
    memory_gib_range: list[float] | None = None
    source: str = ""
    verified: bool = False
    # Achievable matmul TFLOP/s measured on this part by `python -m launch.mamf` (the driver
    # fills it from the cache when the local device matches); runs report mfu_vs_measured.
    measured_peak_tflops: PeakTflops = field(default_factory=PeakTflops)
    measured_source: str | None = None


@dataclass
class ModelConfig:
    """A Llama-style decoder shape (conf/model/<name>.yaml)."""

    name: str = MISSING
    n_layers: int = MISSING
    d_model: int = MISSING
    n_heads: int = MISSING
    n_kv_heads: int = MISSING
    ffn_hidden: int = MISSING  # SwiGLU hidden width
    vocab_size: int = MISSING
    max_seq_len: int = MISSING
    tie_embeddings: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    source: str = ""


@dataclass
class Fp8Config:
    """How fp8 runs: which library, which scaling recipe, and which layers it pays for."""

    # auto: Transformer Engine when it imports, else torchao.
    backend: str = "auto"
    # te: delayed or current; torchao: tensorwise or rowwise.
    # null: current (te), tensorwise (torchao).
    recipe: str | None = None
    # Linear layers narrower than this (min of in/out features) stay in bf16. Measured on an
    # H200 (shared reference anchors.md): torchao fp8 was 0.97x bf16 at d 2048 and 1.32x at
    # d 4096, so 4096 is the smallest width measured to gain.
    min_dim: int = 4096


@dataclass
class PrecisionConfig:
    """Numeric format of the matmuls; `auto` decides from the gpu profile and the machine."""

    name: str = "auto"
    fp8: Fp8Config = field(default_factory=Fp8Config)
    # fp16 dynamic loss scaling
    loss_scale_init: float = 65536.0
    loss_scale_growth_interval: int = 2000


@dataclass
class ParallelConfig:
    """How the model and the batch are spread over ranks (conf/parallel/<name>.yaml).

    world size = dp_replicate x dp_shard x tp; -1 means "the rest" (train/parallel/degrees.py).
    """

    # ddp | fsdp | hsdp | zero1 | zero2 | zero3 | tp | tp_fsdp
    name: str = "ddp"
    # Gradient bucket size: the unit DDP all-reduces in while backward runs; for zero* also
    # DeepSpeed's reduce / all-gather / prefetch bucket sizes (converted to elements).
    bucket_mb: float = 25.0
    # Model replicas: gradients are all-reduced between them (ddp; hsdp across nodes).
    dp_replicate: int = -1
    # Ranks that split parameters, gradients and optimizer state (fsdp, hsdp in a node, zero*).
    dp_shard: int = 1
    # Ranks that split every attention and MLP matmul (tp, tp_fsdp).
    tp: int = 1
    # tp: also split the norms and residual stream along the sequence, so the activation
    # all-reduces become reduce-scatter + all-gather pairs (Korthikanti et al. 2022).
    sequence_parallel: bool = False
    # none | full (recompute every block in backward) | selective (every k-th block).
    activation_checkpoint: str = "none"
    # selective: checkpoint blocks k-1, 2k-1, ... (every k-th); trades memory for recompute.
    checkpoint_every: int = 2
    # zero*: keep optimizer state and fp32 master weights in host memory (ZeRO-Offload).
    offload_optimizer: bool = False
    # zero3: keep the parameter partitions in host memory between uses (ZeRO-Infinity).
    offload_params: bool = False
    # zero3: parameters smaller than this many elements stay whole on every rank (DeepSpeed's
    # default is 100000, which would leave a small model unpartitioned); 0 partitions all.
    zero3_persistence_threshold: int = 0


@dataclass
class ClusterConfig:
    """Where the ranks run."""

    name: str = "local"
    nodes: int = 1
    nproc_per_node: int = 2
    # CPU ranks: intra-op threads each rank may use (OMP_NUM_THREADS). One core per rank
    # makes a CPU rank behave like one device, so per-device throughput compares across N.
    cpu_threads_per_rank: int = 1
    master_addr: str = "127.0.0.1"
    # Rendezvous port on the head node (torchrun c10d, deepspeed --master_port, Slurm).
    master_port: int = 29500
    # torchrun restarts every rank of a node up to this many times after one fails.
    max_restarts: int = 0
    # cluster=multinode: host names in node-rank order; hosts[0] is the head (rendezvous).
    hosts: list[str] = field(default_factory=list)
    # ... or a DeepSpeed-style hostfile (`host slots=N` per line) instead of `hosts`.
    hostfile: str | None = None
    # The address of each host on the training fabric, where its hostname resolves to
    # another interface: the head's is the rendezvous endpoint, each node's its --local-addr.
    fabric_addrs: list[str] = field(default_factory=list)
    # cluster=multinode: which node this machine is; the driver starts only that node's
    # torchrun (run the same command line on every node with its own node_rank).
    node_rank: int = 0
    # cluster=emulated: each node's link rate in Gbit/s per direction (tc tbf); 0 = unlimited.
    link_gbps: float = 0.0
    # cluster=emulated: one-way delay added per link; needs sch_netem, skipped where missing.
    link_latency_ms: float = 0.0
    # cluster=emulated: set link_gbps so comm:compute matches this gpu profile (null: off).
    link_match_gpu: str | None = None
    # Which of that profile's links the emulated link stands for: `nic` or `nvlink`.
    link_match: str = "nic"
    # Filled in by the driver (cluster=emulated): the link it applied, for summary.json.
    applied_link: dict[str, Any] | None = None


@dataclass
class LauncherConfig:
    """How a run's ranks are started: torchrun, the deepspeed CLI, or an sbatch script."""

    name: str = "torchrun"
    # launcher=deepspeed: how the deepspeed CLI reaches the other nodes (its --launcher).
    runner: str = "pdsh"
    # launcher=slurm: sbatch --partition / --account (null: the cluster's default).
    partition: str | None = None
    account: str | None = None
    # launcher=slurm: sbatch --time limit, Slurm's format ([D-]HH:MM:SS or minutes).
    time: str = "01:00:00"


@dataclass
class FabricConfig:
    """The interconnect of a GPU cluster: the NCCL variables that make NCCL use it well."""

    name: str = "none"
    description: str = ""
    # Exported to every rank (and written to .deepspeed_env, the sbatch script).
    nccl_env: dict[str, str] = field(default_factory=dict)
    # On GPU nodes: record `nvidia-smi topo -m` and the InfiniBand port states with each run.
    capture_topology: bool = True


@dataclass
class CommConfig:
    """`python -m launch.comm`: the collective benchmark's sweep."""

    ops: list[str] = field(
        default_factory=lambda: [
            "all_reduce",
            "all_gather",
            "reduce_scatter",
            "all_to_all",
            "broadcast",
        ]
    )
    # Message sizes double from min_bytes to max_bytes (nccl-tests' -b/-e/-f 2).
    min_bytes: int = 1024
    max_bytes: int = 64 * 1024 * 1024
    # Wall-clock budget per op and group; larger sizes are skipped once it is spent.
    seconds_per_op: float = 10.0
    # Timed iterations per size stop at this count or at ~seconds_per_size, whichever first.
    max_iters: int = 50
    seconds_per_size: float = 1.0
    warmup_iters: int = 2


@dataclass
class SweepConfig:
    """`none`: one run at cluster.*; `strong`/`weak`: one run per world size, then a report."""

    name: str = "none"
    world_sizes: list[int] = field(default_factory=list)


@dataclass
class DataConfig:
    """`synthetic` tokens (nothing downloaded) or a memory-mapped token file."""

    source: str = "synthetic"
    path: str | None = None
    dtype: str = "uint16"


@dataclass
class TrainConfig:
    steps: int = 20
    warmup_steps: int = 5
    micro_batch: int = 4
    global_batch: int = 8
    seq_len: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    compile: bool = False


@dataclass
class WandbConfig:
    mode: str = "offline"
    project: str = "scaleprobe"
    entity: str | None = None


@dataclass
class RunConfig:
    gpu: GpuConfig = field(default_factory=GpuConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    fabric: FabricConfig = field(default_factory=FabricConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    name: str = "scaleprobe"
    run_dir: str = MISSING
    seed: int = 0
    dry_run: bool = False
    overwrite: bool = False
    # Filled in by the driver for each launched run; a rank reads them, a user does not set them.
    sweep_id: str | None = None


def load_run_config(path: str | Path) -> RunConfig:
    """Load a resolved config.yaml into the typed schema (raises on unknown keys or types)."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg)
