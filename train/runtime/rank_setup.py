"""A rank's set-up, in the order it happens: its precision, the driver's rules again, the model
placed on the ranks, the bytes a step moves, loss scaling, the checkpoint to resume from, the
data and rank 0's outputs.

``set_up`` returns them as one ``RankRun``: what the loop (train/runtime/loop.py), the
profiler (train/measure/profiling.py) and the summary (train/runtime/summarize.py) read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from train.checkpoint.checkpointer import Checkpointer
from train.measure.cluster_record import gather_fabric_warnings
from train.measure.sinks import MetricsSinks
from train.measure.tracking import WandbRun
from train.parallel.build import build_layout, build_model, fsdp_float8_all_gather
from train.parallel.layout import Layout
from train.runtime import distributed
from train.runtime.agreement import agreed_precision, mixed_devices
from train.runtime.data import SyntheticTokens, TokenFile
from train.runtime.machine import probe_machine
from train.runtime.numerics import apply_backend_flags, fp8_linears_built, prepare_model
from train.runtime.rank_step import RankSteps
from train.runtime.shared_folders import check_shared_folders, folders_to_share
from train.spec.config import RunConfig
from train.spec.degrees import LayoutPlan
from train.spec.devices import peaks_describe, profile_mismatch
from train.spec.precision import (
    PrecisionPlan,
    compiles_blocks,
    peak_tflops_for,
    precision_for_run,
    tp_gathers_in_fp8,
)
from train.spec.rules import check_run
from train.spec.shapes import count_params, flops_per_token, recompute_flops_per_token
from train.spec.traffic import Collective, CommVolume, StepShape, step_collectives


@dataclass(frozen=True)
class Workload:
    """What the model asks per token and per step (train/spec/shapes.py), and the peak the
    precision in use is measured against."""

    params: int
    flops_per_token: float  # the model's (MFU)
    # Also the second forward of every checkpointed block (HFU); MFU does not count it.
    hardware_flops_per_token: float
    tokens_per_step: int
    peak_tflops: float | None  # the profile's dense peak for the resolved precision


@dataclass(frozen=True)
class DeviceNotes:
    """What this rank found about the machine it runs on, for the summary."""

    device_name: str
    gpu_warning: str | None  # the gpu profile does not describe this device
    fabric_warnings: list[str]  # every node's (NCCL_IB_HCA naming HCAs a node lacks)


@dataclass(frozen=True)
class RankRun:
    """One rank's run, set up: everything the loop, the profiler and the summary need."""

    cfg: RunConfig
    run_dir: Path
    rank: distributed.RankInfo
    precision: PrecisionPlan
    layout_plan: LayoutPlan
    layout: Layout
    steps: RankSteps  # draw, step, reduce the loss: the loop's and the profiler's
    checkpoints: Checkpointer
    start_step: int  # the loop starts after it (a resumed checkpoint's step; else 0)
    after_restart: bool  # an attempt after torchrun's restart or a resume
    collectives: list[Collective]  # what the layout issues per step (train/spec/traffic.py)
    workload: Workload
    device_notes: DeviceNotes
    sinks: MetricsSinks | None  # rank 0 only

    @property
    def comm(self) -> CommVolume:
        """Bytes per rank per step, by collective kind (summary.json comm_bytes_per_step)."""
        return CommVolume.of(self.collectives)


def set_up(cfg: RunConfig, run_dir: Path, rank: distributed.RankInfo) -> RankRun:
    # Resolved on this rank's machine, then compared: ranks that differ stop, all of them.
    plan = agreed_precision(precision_for_run(cfg, probe_machine(rank.device)))
    apply_backend_flags(plan)
    notes = _device_notes(cfg, rank, plan)
    if rank.nodes > 1:  # the checkpoint (and profiling's run) dir must be one across nodes
        check_shared_folders(
            folders_to_share(cfg, run_dir), rank=rank.rank, local_rank=rank.local_rank
        )
    torch.manual_seed(cfg.seed)
    # The driver's rules again, on the config this rank was given (one source: train/spec).
    checked = check_run(cfg, rank.world_size, cfg.cluster.nproc_per_node)
    layout_plan, accum_steps = checked.layout, checked.batch.accum_steps
    layout, fp8_all_gather = _place_model(cfg, layout_plan, plan, accum_steps, rank.device)
    shape = StepShape.of_run(
        cfg,
        accum_steps=accum_steps,
        precision=plan.resolved,
        fp8_all_gather_min_dim=plan.fp8_min_dim if fp8_all_gather else None,
        fp8_delayed_min_dim=plan.fp8_min_dim if _te_delayed(plan) else None,
        fp8_tp_min_dim=plan.fp8_min_dim if _fp8_tp(plan, rank.device) else None,
    )
    scaler = _loss_scaler(cfg, plan, layout, layout_plan, rank.device)
    # Resumes from the latest complete checkpoint (train/checkpoint/checkpointer.py).
    checkpoints = Checkpointer(
        cfg,
        run_dir,
        layout=layout,
        rank=rank.rank,
        layout_plan=layout_plan,
        world_size=rank.world_size,
        scaler=scaler,
        device=rank.device,
        precision=plan.resolved,
    )
    start_step = checkpoints.resume()
    restart_count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    after_restart = restart_count > 0 or checkpoints.resumed_from_step is not None
    steps = RankSteps(
        layout=layout,
        scaler=scaler,
        plan=plan,
        device=rank.device,
        data=build_data(cfg),
        micro_batch=cfg.train.micro_batch,
        accum_steps=accum_steps,
        grad_clip=cfg.train.grad_clip,
    )
    sinks = _sinks(cfg, run_dir, resume=after_restart) if rank.is_main else None
    if rank.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rank.device)
    return RankRun(
        cfg,
        run_dir,
        rank,
        precision=plan,
        collectives=step_collectives(cfg.model, layout_plan, shape),
        layout_plan=layout_plan,
        layout=layout,
        steps=steps,
        checkpoints=checkpoints,
        workload=_workload(cfg, layout_plan, plan, rank.device.type),
        start_step=start_step,
        after_restart=after_restart,
        device_notes=notes,
        sinks=sinks,
    )


def _fp8_tp(plan: PrecisionPlan, device: torch.device) -> bool:
    """torchao's float8 TP styles (train/parallel/build.py): fp8 sequence-parallel gathers."""
    return plan.resolved == "fp8" and tp_gathers_in_fp8(
        plan.fp8_backend, on_gpu=device.type == "cuda"
    )


def _te_delayed(plan: PrecisionPlan) -> bool:
    """Transformer Engine's delayed scaling, whose amaxes are all-reduced every micro-step."""
    return plan.fp8_backend == "te" and plan.fp8_recipe == "delayed"


def _device_notes(cfg: RunConfig, rank: distributed.RankInfo, plan: PrecisionPlan) -> DeviceNotes:
    """What this rank runs on, said by rank 0 before anything is built."""
    device_name = distributed.device_name(rank.device)
    mismatch = profile_mismatch(cfg.gpu, rank.device.type, device_name)
    gpu_warning = "; ".join(w for w in (mismatch, mixed_devices(device_name)) if w) or None
    if rank.is_main:
        print(f"precision: {plan.resolved} ({plan.reason})", flush=True)
        if gpu_warning:
            print(f"warning: {gpu_warning}", flush=True)
    # NCCL_IB_HCA naming HCAs a node lacks silently turns InfiniBand into sockets: each node
    # checks its own, rank 0 prints and records them all (fabric.warnings).
    fabric_warnings = gather_fabric_warnings(local_rank=rank.local_rank, backend=rank.backend)
    if rank.is_main:
        for warning in fabric_warnings:
            print(f"warning: {warning}", flush=True)
    return DeviceNotes(device_name, gpu_warning, fabric_warnings)


def _place_model(
    cfg: RunConfig,
    layout_plan: LayoutPlan,
    plan: PrecisionPlan,
    accum_steps: int,
    device: torch.device,
) -> tuple[Layout, bool]:
    """The model on this rank's device under its layout, and whether FSDP gathers fp8."""
    # Shapes only (meta device; zero3: partitioned by zero.Init) until the layout has sharded
    # it: no rank builds the whole model. Weights depend on cfg.seed only (train/model/weights.py).
    model = build_model(cfg, layout_plan, plan.resolved, accum_steps, device)
    fp8_all_gather = fsdp_float8_all_gather(layout_plan, plan.fp8_backend, plan.fp8_recipe)
    model = prepare_model(model, plan, device, fsdp_float8_all_gather=fp8_all_gather)
    layout = build_layout(
        model,
        cfg,
        layout_plan,
        plan.resolved,
        accum_steps,
        device,
        compile_blocks=compiles_blocks(
            cfg.train.compile, plan.fp8_backend, on_gpu=device.type == "cuda"
        ),
        fp8_backend=plan.fp8_backend,
        fp8_recipe=plan.fp8_recipe,
    )
    if plan.resolved == "fp8" and not fp8_linears_built(layout.model):
        raise RuntimeError(
            f"precision resolved to fp8 ({plan.reason}), but this rank's model under "
            f"parallel={cfg.parallel.name} holds no fp8 Linear layer: it would run bf16"
        )
    return layout, fp8_all_gather


def _loss_scaler(
    cfg: RunConfig,
    plan: PrecisionPlan,
    layout: Layout,
    layout_plan: LayoutPlan,
    device: torch.device,
) -> torch.amp.GradScaler | None:
    """fp16's loss scaling, unless the layout's engine does it itself."""
    # DeepSpeed scales fp16 losses inside its engine; a GradScaler on top would scale twice.
    if not plan.loss_scaling or layout.scales_loss:
        return None
    # Where ranks hold different parts of the gradients (FSDP, TP), each finds an overflow
    # only in its own part: ShardedGradScaler all-reduces the found-inf flag over every rank,
    # so all of them skip the same steps (torch.amp's scaler would let TP peers disagree).
    scaler = ShardedGradScaler if layout_plan.splits_gradients else torch.amp.GradScaler
    return scaler(
        device.type,
        init_scale=cfg.precision.loss_scale_init,
        growth_interval=cfg.precision.loss_scale_growth_interval,
    )


def _workload(
    cfg: RunConfig, layout_plan: LayoutPlan, plan: PrecisionPlan, device_type: str
) -> Workload:
    model_flops = flops_per_token(cfg.model, cfg.train.seq_len)
    recomputed = recompute_flops_per_token(cfg.model, cfg.train.seq_len, layout_plan.checkpointed)
    return Workload(
        params=count_params(cfg.model),
        flops_per_token=model_flops,
        hardware_flops_per_token=model_flops + recomputed,
        tokens_per_step=cfg.train.global_batch * cfg.train.seq_len,
        peak_tflops=(
            peak_tflops_for(cfg.gpu, plan.resolved)
            if peaks_describe(cfg.gpu, device_type)
            else None
        ),
    )


def build_data(cfg: RunConfig) -> SyntheticTokens | TokenFile:
    if cfg.data.source == "file":
        return TokenFile(cfg.data.path, cfg.data.dtype, cfg.train.seq_len, cfg.seed)
    return SyntheticTokens(cfg.model.vocab_size, cfg.train.seq_len, cfg.seed)


def _sinks(cfg: RunConfig, run_dir: Path, *, resume: bool) -> MetricsSinks:
    """Rank 0's outputs: metrics.jsonl, wandb, the console line per step, summary.json."""
    tracker = WandbRun(
        cfg.wandb.mode,
        cfg.wandb.project,
        cfg.wandb.entity,
        run_dir,
        run_dir.name,
        cfg.resolved.sweep_id,
        cfg.gpu.name,
        OmegaConf.to_container(OmegaConf.structured(cfg)),
    )
    return MetricsSinks(
        run_dir=run_dir, total_steps=cfg.train.steps, tracker=tracker, resume=resume
    )
