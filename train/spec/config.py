"""The run configuration: one schema shared by the driver and the ranks.

The driver registers these dataclasses with Hydra's ConfigStore (so a typo or a wrong
type fails at compose time); a rank loads the resolved ``config.yaml`` into the same
dataclasses with OmegaConf alone, so `train/` never imports Hydra.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf


class Choice(str, Enum):
    """A closed choice: a bad value fails at compose time naming the key and the choices.

    A str, so code and JSON treat it as its value ("ddp" == Layout.ddp, json.dumps writes
    "ddp"); member names equal values, which is how OmegaConf reads them from YAML.
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def closed_choice(name: str, values: str) -> type[Choice]:
    """A Choice whose members are the space-separated ``values``, each named as its value."""
    choice = Choice(name, [(v, v) for v in values.split()], module=__name__, qualname=name)
    choice.__doc__ = f"One of: {', '.join(values.split())}."
    return choice


Precision = closed_choice("Precision", "auto fp32 tf32 bf16 fp16 fp8")
Fp8Backend = closed_choice("Fp8Backend", "auto te torchao")
# te: current, delayed; torchao: tensorwise, rowwise (train/spec/precision.py FP8_RECIPES).
Fp8Recipe = closed_choice("Fp8Recipe", "current delayed tensorwise rowwise")
# parallel.name: a row of train/spec/catalog.py, or auto (the driver picks one per run with
# the performance model, launch/perfmodel/choose.py).
LayoutName = closed_choice(
    "LayoutName", "auto ddp fsdp hsdp zero1 zero2 zero3 tp tp_fsdp pp pp_fsdp ep ep_fsdp"
)
# model.router_score: how a router turns its logits into expert scores (train/model/moe.py).
RouterScore = closed_choice("RouterScore", "softmax sigmoid")
# torch.distributed.pipelining's schedules (train/spec/stages.py TORCH_SCHEDULES): ScheduleGPipe,
# Schedule1F1B, ScheduleInterleaved1F1B, ScheduleInterleavedZeroBubble (ZB1P),
# ScheduleZBVZeroBubble (exactly 2 stages per rank, V-shaped).
PipelineSchedule = closed_choice(
    "PipelineSchedule",
    "gpipe one_f_one_b interleaved_one_f_one_b interleaved_zero_bubble zero_bubble_v",
)
ActivationCheckpoint = closed_choice("ActivationCheckpoint", "none full selective")
ClusterName = closed_choice("ClusterName", "local multinode emulated slurm")
LinkKind = closed_choice("LinkKind", "nic nvlink")
# cluster.link_congestion_control: Linux TCP congestion controls, `loss_based` (cubic where a
# network namespace may set it, else reno), or `host` (inherit).
CongestionControl = closed_choice("CongestionControl", "loss_based cubic reno bbr host")
LauncherName = closed_choice("LauncherName", "torchrun deepspeed slurm")
# DeepSpeed's --launcher choices (deepspeed/launcher/runner.py).
DeepSpeedRunner = closed_choice("DeepSpeedRunner", "pdsh openmpi mvapich mpich impi slurm")
SweepName = closed_choice("SweepName", "none strong weak")
DataSource = closed_choice("DataSource", "synthetic file")
TokenDtype = closed_choice("TokenDtype", "uint16 uint32")
WandbMode = closed_choice("WandbMode", "offline online disabled")
ReduceDtype = closed_choice("ReduceDtype", "fp32 bf16")
ProjectMode = closed_choice("ProjectMode", "runs comm")


PRECISIONS = tuple(p.value for p in Precision)


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
    # Words that, in a device name matching the patterns, mean another part ("PCIe", "NVL"):
    # an "NVIDIA H800 PCIe" must not borrow the H800 SXM profile's peak.
    device_name_excludes: list[str] = field(default_factory=list)
    # Total device memory in GiB, to tell apart parts that share a name (A100 40 vs 80 GB).
    memory_gib_range: list[float] | None = None
    # Board power at the datasheet's TDP, watts (shared reference gpus.md's "TDP W" column).
    tdp_w: float | None = None
    # The board power limit the part runs at when set below its TDP (nvidia-smi -pl), watts;
    # null: the TDP. The model slows the part's achievable compute and memory rates by the
    # throughput measured at that limit (launch/perfmodel/hardware.py POWER_LIMIT_THROUGHPUT).
    # In (0, tdp_w].
    power_limit_w: float | None = None
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
    # -- mixture of experts (train/model/moe.py); n_experts 0 is a dense model, and the fields
    # below are then unused. Block i routes its FFN to experts when i >= n_dense_layers and
    # (i - n_dense_layers + 1) % moe_every == 0; the other blocks keep the dense ffn_hidden FFN.
    n_experts: int = 0  # routed SwiGLU experts per MoE block
    top_k: int = 2  # experts each token is sent to
    # Experts every token goes through besides the routed ones (DeepSeek), each
    # expert_ffn_hidden wide.
    n_shared_experts: int = 0
    expert_ffn_hidden: int | None = None  # each expert's SwiGLU width; null: ffn_hidden
    moe_every: int = 1
    n_dense_layers: int = 0  # the first blocks stay dense (DeepSeek's first_k_dense_replace)
    # softmax (Mixtral, OLMoE, DeepSeek-V2) or sigmoid (DeepSeek-V3) scores.
    router_score: RouterScore = RouterScore.softmax
    route_norm: bool = False  # rescale the top-k weights to sum to 1 (Mixtral; V3's sigmoid)
    route_scale: float = 1.0  # then multiply them by this (DeepSeek's routed_scaling_factor)
    # null: dropless (every assignment computed, uneven all-to-all). A number: each expert
    # takes at most ceil(capacity_factor x tokens x top_k / n_experts) of a micro-batch's
    # assignments on each rank (first choices first, then by position); the rest are dropped
    # (the token keeps its residual) and every expert's slots are padded to that capacity.
    capacity_factor: float | None = None
    # Switch/GShard load-balancing loss n_experts x sum_i f_i P_i (f: share of assignments,
    # P: mean routing probability), per micro-batch and MoE block, added to the gradient only:
    # the logged loss stays the language-model loss (its value is in metrics' moe.aux_loss).
    aux_loss_weight: float = 0.01
    # DeepSeek-V3's auxiliary-loss-free balancing: a per-expert bias added to the scores for
    # the choice only, moved by this much after each optimizer step towards the mean load
    # (sign of mean - load, over every rank's tokens); 0 turns it off (V3: 0.001).
    router_bias_update: float = 0.0
    # Node-limited routing (DeepSeek-V3): the experts form route_groups contiguous groups and
    # a token's top_k come from its route_max_nodes best groups (group score: the sum of its
    # two best expert scores). Under EP across nodes each group must lie inside one node, so
    # a token is sent to at most route_max_nodes nodes. null: no limit.
    route_groups: int = 1
    route_max_nodes: int | None = None


@dataclass
class Fp8Config:
    """How fp8 runs: which library, which scaling recipe, and which layers it pays for."""

    # auto: Transformer Engine when it imports, else torchao.
    backend: Fp8Backend = Fp8Backend.auto
    # te: delayed or current; torchao: tensorwise or rowwise.
    # null: current (te), tensorwise (torchao).
    recipe: Fp8Recipe | None = None
    # Linear layers narrower than this (min of in/out features) stay in bf16. Measured on an
    # H200 (shared reference anchors.md): torchao fp8 was 0.97x bf16 at d 2048 and 1.32x at
    # d 4096, so 4096 is the smallest width measured to gain.
    min_dim: int = 4096


@dataclass
class PrecisionConfig:
    """Numeric format of the matmuls; `auto` decides from the gpu profile and the machine."""

    name: Precision = Precision.auto
    fp8: Fp8Config = field(default_factory=Fp8Config)
    # fp16 dynamic loss scaling
    loss_scale_init: float = 65536.0
    loss_scale_growth_interval: int = 2000


@dataclass
class ParallelConfig:
    """How the model and the batch are spread over ranks (conf/parallel/<name>.yaml).

    world size = pp x dp_replicate x dp_shard x ep x tp; -1 means "the rest"
    (train/spec/degrees.py).
    """

    name: LayoutName = LayoutName.ddp
    # Gradient bucket size: the unit DDP all-reduces in while backward runs; for zero* also
    # DeepSpeed's reduce / all-gather / prefetch bucket sizes (converted to elements).
    bucket_mb: float = 25.0
    # Model replicas: gradients are all-reduced between them (ddp; hsdp across nodes).
    dp_replicate: int = -1
    # Ranks that split parameters, gradients and optimizer state (fsdp, hsdp in a node, zero*).
    dp_shard: int = 1
    # Ranks that split every attention and MLP matmul and the vocabulary (tp, tp_fsdp). A TP
    # group stays inside a node: -1 means cluster.nproc_per_node, and a tp that does not
    # divide it is refused.
    tp: int = 1
    # Expert parallelism (ep, ep_fsdp; MoE models): ranks that split each MoE block's experts
    # and exchange tokens with all-to-all. They are data-parallel ranks too (each trains its
    # own rows), the innermost data-parallel dim, so an EP group is consecutive ranks of one
    # node by default; an ep above cluster.nproc_per_node spans whole nodes (EP across the NIC).
    ep: int = 1
    # Pipeline stage groups (pp, pp_fsdp): each holds a contiguous run of blocks and passes
    # activations forward and their gradients back to its neighbours. Outermost mesh dim.
    pp: int = 1
    # pp*: the order microbatches go through the stages (train/spec/stages.py).
    pp_schedule: PipelineSchedule = PipelineSchedule.one_f_one_b
    # pp*: microbatches per step (the gradient accumulation); -1: global_batch / (micro_batch
    # x data-parallel size), one per train.micro_batch. Another value re-splits each
    # data-parallel rank's rows into this many equal microbatches.
    pp_microbatches: int = -1
    # pp*: model chunks per rank; interleaved schedules need >= 2, zero_bubble_v exactly 2.
    pp_stages_per_rank: int = 1
    # tp, tp_fsdp: also split the norms and the residual stream along the sequence, so each
    # activation all-reduce becomes a reduce-scatter + all-gather pair (Korthikanti et al.
    # 2022). null: on under TP, as Megatron-LM and torchtitan run it; false turns it off.
    sequence_parallel: bool | None = None
    # tp, tp_fsdp on CUDA: async TP (torchtitan's), the compiler splits each SP all-gather /
    # reduce-scatter and its matmul into chunks that overlap through symmetric memory. Needs
    # sequence parallelism and train.compile=true; refused on CPU ranks (gloo).
    async_tp: bool = False
    # none | full (recompute every block in backward) | selective (every k-th block).
    activation_checkpoint: ActivationCheckpoint = ActivationCheckpoint.none
    # selective: checkpoint blocks k-1, 2k-1, ... (every k-th); trades memory for recompute.
    checkpoint_every: int = 2
    # zero*: keep optimizer state and fp32 master weights in host memory (ZeRO-Offload).
    offload_optimizer: bool = False
    # zero3: keep the parameter partitions in host memory between uses (ZeRO-Infinity).
    offload_params: bool = False
    # zero3: parameters smaller than this many elements stay whole on every rank (DeepSpeed's
    # default is 100000, which would leave a small model unpartitioned); 0 partitions all.
    zero3_persistence_threshold: int = 0
    # fsdp/hsdp/tp_fsdp/ep* under bf16/fp16/fp8: the dtype gradients are reduce-scattered (and
    # HSDP-all-reduced) in: fp32 (torchtitan's default: exact sums, twice the bytes of the
    # 16-bit parameter all-gathers) or bf16 (half the bytes, rounding in the sum). fp32 runs
    # reduce in fp32 whatever this says.
    fsdp_reduce_dtype: ReduceDtype = ReduceDtype.fp32
    # FSDP layouts with gradient accumulation: reduce-scatter every micro-step (true,
    # torchtitan's way: FSDP2 adds each result to the shard's gradient, nothing unsharded is
    # kept) or keep every micro-step's unsharded gradients, in the fp32 reduce dtype, and
    # reduce once per step (false: a quarter of the traffic at 4 micro-steps, like Megatron's
    # fp32 gradient buffers, for 4 bytes per parameter of the model on every rank). HSDP's
    # all-reduce across the replicas runs once per step either way. parallel=auto chooses it
    # with the layout.
    fsdp_reduce_every_micro_step: bool = True


@dataclass
class ClusterConfig:
    """Where the ranks run."""

    name: ClusterName = ClusterName.local
    nodes: int = 1
    nproc_per_node: int = 2
    # CPU ranks: intra-op threads each rank may use (OMP_NUM_THREADS). One core per rank
    # makes a CPU rank behave like one device, so per-device throughput compares across N.
    cpu_threads_per_rank: int = 1
    # CPU ranks x threads above this machine's cores measure contention, not devices: refused
    # unless allowed, and then every figure is marked oversubscribed.
    allow_oversubscribe: bool = False
    master_addr: str = "127.0.0.1"
    # Rendezvous port on the head node (torchrun c10d, deepspeed --master_port, Slurm).
    master_port: int = 29500
    # torchrun restarts every rank of a node up to this many times after one fails.
    max_restarts: int = 0
    # Every process group's timeout: a collective that waits longer fails its rank. null:
    # 600 s under NCCL (its own default), 300 s under gloo (CPU ranks; gloo's is 30 min).
    collective_timeout_s: float | None = None
    # The driver's watchdog (train/files/heartbeat.py): a rank whose heartbeat has not changed
    # for this long while no rank finished a step (stopped, frozen, lost) ends the run: named
    # with its last step, every process stopped, failed.json, exit 1. Ranks that beat but
    # finish no step (a long compile or save) are left to the collective timeout. null: 180 s;
    # 0: off.
    stall_timeout_s: float | None = None
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
    # cluster=multinode (torchrun): the rendezvous id every node's driver passes; null: one
    # derived from the run's workload, the same on every node (never a path or a timestamp).
    rdzv_id: str | None = None
    # cluster=emulated: each node's link rate in Gbit/s per direction (tc tbf); 0 = unlimited.
    # cluster=slurm or multinode: the nodes' link as you know it, recorded (not applied), so
    # sweeps over different links are separate curves in the report.
    link_gbps: float = 0.0
    # cluster=emulated: one-way delay added per link; needs sch_netem, skipped where missing.
    link_latency_ms: float = 0.0
    # cluster=emulated: set link_gbps so comm:compute matches this gpu profile (null: off).
    link_match_gpu: str | None = None
    # Which of that profile's links the emulated link stands for: `nic` or `nvlink`.
    link_match: LinkKind = LinkKind.nic
    # cluster=emulated: the TCP congestion control inside every node namespace. cubic (Linux's
    # default) keeps a tbf-shaped link full and steady, every step at the same rate; so does
    # reno, loss-based too. loss_based: cubic where the host lets a namespace set it, else reno
    # (launch/cluster/emulated.py; the record names the one set). bbr (v1),
    # which some hosts set as theirs, paces at 1.25x and 0.75x its bandwidth estimate in turn
    # and every 10 s drops to 4 packets in flight for 200 ms (ProbeRTT), so the same
    # all-reduce takes 0-26% longer from one step to the next (docs/performance-model.md,
    # "Emulated link"). `host`: whatever a new namespace inherits from the host.
    link_congestion_control: CongestionControl = CongestionControl.loss_based


@dataclass
class LauncherConfig:
    """How a run's ranks are started: torchrun, the deepspeed CLI, or an sbatch script."""

    name: LauncherName = LauncherName.torchrun
    # launcher=deepspeed: how the deepspeed CLI reaches the other nodes (its --launcher).
    runner: DeepSpeedRunner = DeepSpeedRunner.pdsh
    # launcher=slurm: sbatch --partition / --account (null: the cluster's default).
    partition: str | None = None
    account: str | None = None
    # launcher=slurm: sbatch --time limit, Slurm's format ([D-]HH:MM:SS or minutes).
    time: str = "01:00:00"
    # launcher=slurm: follow the jobs until they end (holding the run dir), then write the
    # report; false: submit, print the job ids and exit. null: true unless the driver itself
    # runs inside a Slurm job (SLURM_JOB_ID set).
    wait: bool | None = None
    # launcher=slurm: CPUs of the one task per node (torchrun and its ranks); null: the
    # node's ranks x cluster.cpu_threads_per_rank (CPU) or x cpus_per_gpu (GPU).
    cpus_per_task: int | None = None
    # launcher=slurm on GPU nodes: CPU cores per GPU rank (data, compile workers, NCCL's
    # proxy threads); HGX/DGX H100 nodes have 14 or more per GPU.
    cpus_per_gpu: int = 8


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

    name: SweepName = SweepName.none
    world_sizes: list[int] = field(default_factory=list)
    # A failed point is recorded (exit code, last log lines) and the sweep goes on, unless set.
    stop_on_failure: bool = False


@dataclass
class DataConfig:
    """`synthetic` tokens (nothing downloaded) or a memory-mapped token file."""

    source: DataSource = DataSource.synthetic
    path: str | None = None
    dtype: TokenDtype = TokenDtype.uint16


@dataclass
class TrainConfig:
    """The optimizer steps a run takes and the batch of each (train/spec/degrees.py BatchPlan)."""

    steps: int = 20
    # Steps before the timed ones (compile, allocator and NCCL warm-up); not in any figure.
    warmup_steps: int = 5
    # Sequences per forward on one data-parallel rank.
    micro_batch: int = 4
    # Sequences per optimizer step, over all data-parallel ranks: gradient accumulation is
    # global_batch / (micro_batch x data-parallel size), refused where it does not divide.
    # The ranks of one TP group (or one pipeline) share their sequences. Under sweep=weak this
    # is the batch at the smallest world size, and the batch per data-parallel rank stays.
    global_batch: int = 8
    seq_len: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    compile: bool = False
    # AdamW as one fused kernel per step (true), or torch's foreach kernels (false); null:
    # fused on CUDA. Every layout builds the same AdamW (train/parallel/layout.py).
    fused_adamw: bool | None = None
    # MoE models: all of a rank's experts in one torch._grouped_mm per projection (true) or a
    # loop of one matmul per expert (false); null: grouped on CUDA devices of compute
    # capability 9.0 and up (Hopper), where the kernel is built for it, the loop elsewhere.
    grouped_mm: bool | None = None


@dataclass
class CheckpointConfig:
    """Saving a run's state as it trains, and resuming from it (train/checkpoint/checkpointer.py).

    Model, optimizer, loss scaler and step go through torch.distributed.checkpoint (sharded:
    each rank writes its own part) or, for zero*, DeepSpeed's own checkpoint. Saves happen
    between steps, outside every timed figure.
    """

    # Save every N steps; 0: never save and never resume (short benchmark runs).
    every: int = 0
    # Where the step_000012/ folders go; null: RUN_DIR/checkpoints. A run resumes from the
    # latest complete checkpoint here (one with its marker and every file the marker lists).
    dir: str | None = None
    # Write in a background thread (torch.distributed.checkpoint.async_save): the loop only
    # waits for the copy to host memory. zero* layouts save synchronously whatever this says.
    async_save: bool = False
    # Complete checkpoints kept: the last K; older ones are removed after each save.
    keep: int = 2


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline
    project: str = "scaleprobe"
    entity: str | None = None


@dataclass
class ProfileConfig:
    """Trace capture and the step breakdown (compute / exposed comm / idle) of a run."""

    # Capture a torch.profiler trace of `steps` extra steps after the timed ones.
    enabled: bool = False
    # How many profiled steps follow the timed steps (never inside the timed window).
    steps: int = 3
    # Ranks that write trace_rank<k>.json.gz; null: rank 0 and the last rank.
    ranks: list[int] | None = None
    # Also run a few steps with gradient synchronisation skipped (a no-sync twin): exposed
    # comm ~ step - twin step. Twin steps train nothing useful and are not timed figures.
    twin: bool = False
    twin_steps: int = 3


@dataclass
class ProjectConfig:
    """`python -m launch.project`: projected scaling per GPU type from the performance model."""

    # Profiles to project; empty: every profile in conf/gpu except auto and cpu.
    gpus: list[str] = field(default_factory=list)
    # Node counts to project (each node holds gpu.gpus_per_node devices).
    nodes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    # runs: projected training steps; comm: projected collectives (the launch.comm sweep).
    mode: ProjectMode = ProjectMode.runs
    # A measured run dir: its achieved compute fraction (and comm.json's busbw) calibrate
    # the projection of the same workload onto the other profiles.
    calibrate: str | None = None
    # comm.json from `python -m launch.comm`, for calibration of the collective model.
    calibrate_comm: str | None = None
    # User-supplied price per GPU-hour by profile name (no invented defaults).
    price_per_gpu_hour: dict[str, float] = field(default_factory=dict)
    # Exposed comm at or above this share of the step is labelled interconnect-bound.
    interconnect_bound_share: float = 0.3
    # The attention kernel the projected runs use (launch/perfmodel/compute.py): flash (what
    # SDPA runs on CUDA), math (unfused: the whole score matrix, e.g. Megatron-LM before FA)
    # flash_triton (FlashAttention in Triton, as llm-foundry's MPT ran it in 2023) or flash_v1
    # (FlashAttention 1, flash-attn 1.x, 2022-23 stacks).
    attention: str = "flash"
    # Where projection.md/json/png go; null: the run dir.
    out: str | None = None


@dataclass
class ResolvedConfig:
    """Filled in by the driver for each launched run; a rank reads it, a user never sets it
    (an override of resolved.* is refused)."""

    # The sweep (or single run) this run belongs to: groups its runs in reports and wandb.
    sweep_id: str | None = None
    # gpu=auto: what was detected, and so which profile the run uses.
    gpu_detected: str | None = None
    # cluster=emulated: the link the driver applied (rate, qdisc, latency, link match);
    # slurm/multinode: the link cluster.link_gbps declares (`declared: true`).
    applied_link: dict[str, Any] | None = None
    # parallel=auto: the layout the performance model chose, and why.
    layout_reason: str | None = None
    # What the sweep holds fixed as the world grows (train/spec/degrees.py BATCH_HELD):
    # global_batch, sequences_per_dp_rank (weak, one layout) or sequences_per_device (weak,
    # parallel=auto). summary.json's sweep.batch_held; the report's curves follow it.
    batch_held: str | None = None


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
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    project: ProjectConfig = field(default_factory=ProjectConfig)
    name: str = "scaleprobe"
    run_dir: str = MISSING
    seed: int = 0
    dry_run: bool = False
    overwrite: bool = False
    # Continue the sweep in run_dir: run only the points without a summary.json of this same
    # workload (config digest); finished points are kept untouched.
    resume: bool = False
    resolved: ResolvedConfig = field(default_factory=ResolvedConfig)


# Not part of the workload: where it was written, how it was started, how wide it ran.
DIGEST_EXCLUDES = (
    "run_dir",
    "resolved",
    "dry_run",
    "overwrite",
    "resume",
    "wandb",
    "cluster",
    "project",
    # Saves happen between steps, outside the timed figures: the same workload.
    "checkpoint",
)


def workload(cfg: RunConfig) -> dict[str, Any]:
    """What determines the workload (not where it was written or how wide it ran), as plain
    data: what ``config_digest`` hashes, and what a refused resume lists the differences of."""
    content = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    for key in DIGEST_EXCLUDES:
        content.pop(key, None)
    # A matmul ceiling measured later (launch.mamf) changes MFU's denominator, not the work.
    for key in ("measured_peak_tflops", "measured_source", "peak_tflops"):
        content["gpu"].pop(key, None)
    return content


def config_digest(cfg: RunConfig) -> str:
    """Hash of what determines the workload (not where it was written or how wide it ran)."""
    return hashlib.sha256(json.dumps(workload(cfg), sort_keys=True).encode()).hexdigest()[:12]


def load_run_config(path: str | Path) -> RunConfig:
    """Load a resolved config.yaml into the typed schema (raises on unknown keys or types)."""
    merged = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path))
    return OmegaConf.to_object(merged)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg)
