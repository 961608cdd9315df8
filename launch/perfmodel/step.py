"""One training step predicted: compute, each collective kind, exposed comm, throughput, MFU.

step time = compute (matmuls + attention + memory-bound work + kernel gaps) + exposed
communication + the SMs hidden collectives take from compute (contention) + for pipelines
the stage-to-stage sends and the schedule's bubble (pipelined.py: the busiest rank's step).
tokens/s per device = tokens of the step / world size / step time. MFU = model FLOPs per
token (6N + 12 L H Q T, no recompute) x tokens/s per device / the datasheet peak of the
precision. Scaling efficiency = tokens/s per device / that of one device doing the same
per-device work with no communication (weak scaling against a single-device base, the
README's definition with base 1); a layout that replicates work (TP's head) or communicates
loses against it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from launch.errors import ConfigError
from launch.perfmodel.compute import (
    RUNTIME_KERNELS,
    ComputeTime,
    Kernels,
    compute_time,
    layout_optimizer_split,
    with_sequence_regroups,
)
from launch.perfmodel.fp8 import Fp8Casts
from launch.perfmodel.hardware import PartRates, part_rates
from launch.perfmodel.host import HostRates
from launch.perfmodel.memory import MemoryEstimate, estimate_memory
from launch.perfmodel.overlap import CommTime, comm_time
from launch.perfmodel.pipelined import stage_memory, stage_steps
from train.spec.config import Fp8Backend, Fp8Recipe, RunConfig
from train.spec.degrees import (
    BatchPlan,
    Degrees,
    LayoutPlan,
    layout_record,
    plan_batch,
    plan_layout,
)
from train.spec.stages import plan_pipeline
from train.spec.traffic import StepShape, step_collectives


@dataclass(frozen=True)
class Prediction:
    gpu: str
    nodes: int
    nproc_per_node: int
    world_size: int
    layout: dict
    precision: str
    micro_batch: int
    accum_steps: int
    tokens_per_step: int
    compute: ComputeTime
    comm_s: dict[str, float]
    comm_by_role: dict[str, float]
    exposed_comm_s: float
    memory: MemoryEstimate
    peak_tflops: float | None
    base_tokens_per_s_per_device: float
    notes: list[str] = field(default_factory=list)
    contention_s: float = 0.0  # compute slowed by the SMs of hidden NCCL collectives
    pipeline_s: float = 0.0  # stage-to-stage sends (pipelines)
    bubble_s: float = 0.0  # the pipeline schedule's idle time
    kernels: Kernels = RUNTIME_KERNELS

    @property
    def degrees(self) -> Degrees:
        # ep too: EP ranks are data-parallel ranks (Degrees.dp), which weak scaling counts.
        keys = ("dp_replicate", "dp_shard", "tp", "pp", "ep")
        return Degrees(**{k: self.layout[k] for k in keys})

    @property
    def compute_s(self) -> float:
        return self.compute.total_s

    @property
    def step_time_s(self) -> float:
        return (
            self.compute.total_s
            + self.exposed_comm_s
            + self.contention_s
            + self.pipeline_s
            + self.bubble_s
        )

    @property
    def tokens_per_s_per_device(self) -> float:
        return self.tokens_per_step / self.world_size / self.step_time_s

    @property
    def mfu(self) -> float | None:
        if not self.peak_tflops:
            return None
        flops = self.compute.model_flops / self.step_time_s
        return flops / (self.peak_tflops * 1e12)

    @property
    def hfu(self) -> float | None:
        if not self.peak_tflops:
            return None
        return self.compute.hardware_flops / self.step_time_s / (self.peak_tflops * 1e12)

    @property
    def scaling_efficiency(self) -> float:
        return self.tokens_per_s_per_device / self.base_tokens_per_s_per_device

    @property
    def exposed_share(self) -> float:
        return (self.exposed_comm_s + self.pipeline_s) / self.step_time_s

    @property
    def fits(self) -> bool:
        return self.memory.fits

    def as_dict(self) -> dict:
        """projection.json's run object (names other checks rely on: keep them)."""
        return {
            "gpu": self.gpu,
            "nodes": self.nodes,
            "nproc_per_node": self.nproc_per_node,
            "world_size": self.world_size,
            "layout": self.layout,
            "precision": self.precision,
            "micro_batch": self.micro_batch,
            "grad_accum": self.accum_steps,
            "tokens_per_step": self.tokens_per_step,
            "step_time_s": self.step_time_s,
            "compute_s": self.compute_s,
            "compute_breakdown_s": {
                "matmul": self.compute.matmul_s,
                "attention": self.compute.attention_s,
                "memory_bound": self.compute.memory_s,
                "kernel_gaps": self.compute.gaps_s,
                "fp8_casts": self.compute.fp8_casts_s,  # part of memory_bound
                "sequence_regroups": self.compute.regroup_s,  # part of memory_bound
            },
            "attention_kernel": self.kernels.attention,
            "contention_s": self.contention_s,
            "pipeline_send_s": self.pipeline_s,
            "pipeline_bubble_s": self.bubble_s,
            "comm_s": dict(self.comm_s),
            "comm_by_role_s": dict(self.comm_by_role),
            "exposed_comm_s": self.exposed_comm_s,
            "exposed_comm_share": self.exposed_share,
            "tokens_per_s_per_device": self.tokens_per_s_per_device,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "memory_bytes_per_rank": self.memory.peak_bytes,
            "memory": self.memory.as_dict(),
            "fits": self.fits,
            "scaling_efficiency": self.scaling_efficiency,
            "notes": list(self.notes),
        }


def projected_precision(requested: str, gpu_name: str, has_fp8: bool) -> tuple[str, str]:
    """(precision, reason) the model assumes. `auto` needs the machine's libraries to decide
    fp8 (train/runtime/numerics.py); without a machine the projection takes bf16 on a GPU and
    fp32 on the CPU (no native bf16 on this project's reference CPU)."""
    if requested == "auto":
        if gpu_name == "cpu":
            return "fp32", "auto on cpu: fp32 assumed (the run records what it resolved)"
        return "bf16", f"auto on {gpu_name}: bf16 assumed (fp8 depends on installed libraries)"
    if requested == "fp8" and not has_fp8:
        return "bf16", f"fp8 requested but {gpu_name} has no fp8: bf16"
    return requested, f"requested {requested}"


@dataclass(frozen=True)
class Placement:
    """Where a step runs: its ranks, how many share a node, how many nodes."""

    world_size: int
    nproc_per_node: int
    nodes: int


def predict(
    cfg: RunConfig,
    plan: LayoutPlan,
    where: Placement,
    *,
    global_batch: int,
    precision: str,
    rates: PartRates,
    kernels: Kernels = RUNTIME_KERNELS,
) -> Prediction:
    """One step of ``cfg`` under ``plan`` at ``where``, ``global_batch`` sequences over the
    data-parallel ranks: compute, then the collectives it issues and what of them overlap
    leaves exposed, memory per rank, and the single-device base of its efficiency.
    ``kernels``: the attention kernel, block and loss that run (compute.Kernels)."""
    m, train = cfg.model, cfg.train
    batch = plan_batch(global_batch, train.micro_batch, plan.degrees.dp, where.world_size)
    accum = batch.accum_steps
    fp8 = Fp8Casts.of_run(cfg, plan) if precision == "fp8" else None
    shape = StepShape.of_run(
        cfg,
        accum_steps=accum,
        precision=precision,
        fp8_all_gather_min_dim=fp8.min_dim if fp8 and fp8.weights_gathered_in_fp8 else None,
        fp8_delayed_min_dim=fp8.min_dim if fp8 and fp8.amaxes_all_reduced else None,
        fp8_tp_min_dim=fp8.min_dim if fp8 and fp8.tp_gathers_in_fp8 else None,
    )
    if plan.pipeline is not None:
        plan = _with_batch_pipeline(cfg, plan, global_batch)
        compute, comm, bubble_s, memory = _pipeline_parts(
            cfg, plan, shape, where, precision, rates, kernels
        )
    else:
        compute = _compute_time(cfg, plan, accum, precision, rates, kernels=kernels)
        collectives = step_collectives(m, plan, shape)
        compute = with_sequence_regroups(compute, collectives, train.micro_batch, rates)
        comm = comm_time(
            collectives,
            compute,
            degrees=plan.degrees,
            nproc_per_node=where.nproc_per_node,
            n_layers=m.n_layers,
            accum_steps=accum,
            bucket_bytes=int(cfg.parallel.bucket_mb * 2**20),
            rates=rates,
            async_tp=cfg.parallel.async_tp and plan.sequence_parallel,
        )
        bubble_s = 0.0
        memory = _memory(cfg, plan, accum, precision, rates)
    tokens = global_batch * train.seq_len
    return Prediction(
        gpu=rates.name,
        nodes=where.nodes,
        nproc_per_node=where.nproc_per_node,
        world_size=where.world_size,
        layout=layout_record(cfg, plan),
        precision=precision,
        micro_batch=train.micro_batch,
        accum_steps=accum,
        tokens_per_step=tokens,
        compute=compute,
        comm_s=comm.comm_s,
        comm_by_role=comm.by_role,
        exposed_comm_s=comm.exposed_s,
        memory=memory,
        peak_tflops=rates.peak_tflops.get(precision),
        base_tokens_per_s_per_device=_base_tokens_per_s(
            cfg, plan, tokens / where.world_size, precision, rates, kernels
        ),
        contention_s=comm.contention_s,
        pipeline_s=comm.pipeline_s,
        bubble_s=bubble_s,
        kernels=kernels,
    )


def _with_batch_pipeline(cfg: RunConfig, plan: LayoutPlan, global_batch: int) -> LayoutPlan:
    """The plan's pipeline re-planned for this global batch (a projection's weak scaling
    changes the rows each data-parallel rank splits into microbatches)."""
    d = plan.degrees
    batch = BatchPlan(global_batch, cfg.train.micro_batch, d.dp)
    parallel = dataclasses.replace(
        cfg.parallel,
        pp_schedule=plan.pipeline.schedule,
        pp_stages_per_rank=plan.pipeline.stages_per_rank,
    )
    pipeline = plan_pipeline(parallel, cfg.model, d.pp, batch.rows_per_rank, batch.accum_steps)
    return dataclasses.replace(plan, pipeline=pipeline)


def _pipeline_parts(
    cfg: RunConfig,
    plan: LayoutPlan,
    shape: StepShape,
    where: Placement,
    precision: str,
    rates: PartRates,
    kernels: Kernels,
) -> tuple[ComputeTime, CommTime, float, MemoryEstimate]:
    """The busiest pipeline rank's compute, comm and bubble (pipelined.py), its compute's
    FLOPs replaced by the whole model's over the pipeline ranks (MFU's per-device share)."""
    steps = stage_steps(
        cfg,
        plan,
        shape,
        nproc_per_node=where.nproc_per_node,
        precision=precision,
        rates=rates,
        kernels=kernels,
    )
    busiest = max(steps, key=lambda s: s.step_s)
    whole = _compute_time(cfg, plan, shape.accum_steps, precision, rates, kernels=kernels)
    pp = plan.degrees.pp
    compute = dataclasses.replace(
        busiest.compute,
        model_flops=whole.model_flops / pp,
        hardware_flops=whole.hardware_flops / pp,
    )
    memory = stage_memory(cfg.model, plan, shape, rates.hbm_bytes)
    return compute, busiest.comm, busiest.bubble_s, memory


def _memory(
    cfg: RunConfig, plan: LayoutPlan, accum: int, precision: str, rates: PartRates
) -> MemoryEstimate:
    shape = StepShape.of_run(cfg, accum_steps=accum, precision=precision)
    fsdp2 = plan.row.shards_parameters or plan.row.expert_parallel  # ep: FSDP2 units too
    unsharded = fsdp2 and not shape.fsdp_reduce_each
    return estimate_memory(
        cfg.model,
        plan,
        micro_batch=cfg.train.micro_batch,
        seq_len=cfg.train.seq_len,
        precision=precision,
        hbm_bytes=rates.hbm_bytes,
        unsharded_grads=unsharded and accum > 1,
        reduce_width=shape.reduce_width,
    )


def _compute_time(
    cfg: RunConfig,
    plan: LayoutPlan,
    accum: int,
    precision: str,
    rates: PartRates,
    optimizer_split: int | None = None,
    kernels: Kernels = RUNTIME_KERNELS,
    per_step_split: int = 1,
) -> ComputeTime:
    shape = StepShape.of_run(cfg, accum_steps=accum, precision=precision)
    return compute_time(
        cfg.model,
        plan,
        micro_batch=cfg.train.micro_batch,
        seq_len=cfg.train.seq_len,
        accum_steps=accum,
        precision=precision,
        rates=rates,
        fp8=Fp8Casts.of_run(cfg, plan),
        optimizer_split=optimizer_split,
        kernels=kernels,
        compiled=cfg.train.compile,
        per_step_split=per_step_split,
        fsdp_reduce_each=shape.fsdp_reduce_each,
        fsdp_reduce_width=shape.reduce_width,
    )


def _base_tokens_per_s(
    cfg: RunConfig,
    plan: LayoutPlan,
    tokens_per_device: float,
    precision: str,
    rates: PartRates,
    kernels: Kernels = RUNTIME_KERNELS,
) -> float:
    """One device, no communication, the same per-device tokens, the optimizer step split
    as the layout splits it (sharding it is not a scaling gain); memory not checked."""
    # The same kind of layout on one rank (FSDP2 and DeepSpeed handle 16-bit weights their
    # own way), no TP, the same checkpointing; EP's experts split as the layout splits them
    # (each rank steps only its own: like a sharded optimizer, not a scaling gain).
    experts = Degrees(1, 1, 1, ep=plan.degrees.ep)
    one = LayoutPlan(plan.row.base_layout, experts, False, list(plan.checkpointed))
    # TP and pipelines split the optimizer step too: each rank steps only its TP shard of its
    # stage's parameters, so the base steps 1/(tp x pp) of them (as a sharded optimizer's
    # shard). Left whole, the base's step held the whole model's AdamW against a rank's part
    # and TP and pipelines scored above 100% where the optimizer dominates (small batches).
    per_step_split = plan.degrees.tp * plan.degrees.pp
    split = layout_optimizer_split(plan, cfg.model) * per_step_split
    micro = cfg.train.micro_batch
    sequences = tokens_per_device / cfg.train.seq_len
    accum = max(1, round(sequences / micro))
    t = _compute_time(cfg, one, accum, precision, rates, split, kernels, per_step_split)
    return micro * accum * cfg.train.seq_len / t.total_s


def emulated_link_gbps(cfg: RunConfig) -> float | None:
    """The emulated cluster's inter-node link (cluster.link_gbps), which stands for the NIC a
    profile's nodes would have; None elsewhere."""
    if cfg.cluster.name == "emulated" and cfg.cluster.link_gbps > 0:
        return cfg.cluster.link_gbps
    return None


def predict_run(
    cfg: RunConfig,
    ran: Mapping[str, int],
    *,
    compute_tflops: float | None = None,
    link_gbps: float | None = None,
    precision: str | None = None,
    intra_gbytes_per_s: float | None = None,
    host: HostRates | None = None,
    fp8_resolved: Mapping[str, str] | None = None,
) -> Prediction:
    """The prediction for a run of ``cfg`` as it ran (its global batch, its layout), for the
    report to set beside the measurement. ``ran``: where it ran (summary.json's world_size,
    nproc_per_node and nodes). ``precision``: the run's resolved one (summary.json
    precision.resolved); ``compute_tflops``: the achievable matmul TFLOP/s of the device
    (default: gpu.measured_peak_tflops, which the driver fills from launch.mamf's cache, else
    the profile's peak x the generation's fraction); ``link_gbps``: the emulated link (default:
    cluster.link_gbps when cluster=emulated); ``host``: the cpu profile's kernel times measured
    at this workload's shapes (launch.mamf --host-shapes), which itemise its compute;
    ``fp8_resolved``: the fp8 backend and recipe the run resolved (summary.json precision's
    fp8_backend, fp8_recipe), in place of the config's (auto)."""
    if fp8_resolved and fp8_resolved.get("fp8_backend"):
        recipe = fp8_resolved.get("fp8_recipe")
        fp8 = dataclasses.replace(
            cfg.precision.fp8,
            backend=Fp8Backend(fp8_resolved["fp8_backend"]),
            recipe=Fp8Recipe(recipe) if recipe else None,
        )
        cfg = dataclasses.replace(cfg, precision=dataclasses.replace(cfg.precision, fp8=fp8))
    where = Placement(ran["world_size"], ran["nproc_per_node"], ran["nodes"])
    if where.nodes <= 0:
        raise ConfigError("cluster.nodes", f"{where.nodes}: must be >= 1")
    if precision is None:
        precision, _ = projected_precision(cfg.precision.name, cfg.gpu.name, cfg.gpu.fp8)
    if link_gbps is None:
        link_gbps = emulated_link_gbps(cfg)
    width = "bf16" if precision == "fp8" else precision
    rates = part_rates(
        cfg.gpu,
        compute_tflops=compute_tflops,
        precision=width,
        link_gbps=link_gbps,
        intra_gbytes_per_s=intra_gbytes_per_s,
        host=host,
    )
    if not rates.peak_tflops.get(width):
        raise ConfigError(
            "gpu.measured_peak_tflops",
            f"{cfg.gpu.name} has no {width} peak to predict compute from: run python -m "
            "launch.mamf on this machine, or pass compute_tflops",
        )
    plan = plan_layout(cfg, where.world_size, where.nproc_per_node)
    return predict(
        cfg, plan, where, global_batch=cfg.train.global_batch, precision=precision, rates=rates
    )
