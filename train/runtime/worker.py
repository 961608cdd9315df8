"""The training loop of one rank: build, wrap, step, measure; rank 0 writes the results."""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from train.checkpoint.checkpointer import Checkpointer
from train.measure.cluster_record import cluster_record, gather_fabric_warnings
from train.measure.held_memory import memory_summary
from train.measure.metrics import (
    StepRecord,
    mfu,
    mfu_figures,
    model_tflops_per_device,
    peak_memory_bytes,
    peak_memory_reserved_bytes,
    step_time_stats,
)
from train.measure.profiling import StepFunctions, mark, profile_after_timed
from train.measure.sinks import MetricsSinks
from train.measure.summary import RunSummary
from train.measure.trace_breakdown import link_rate
from train.measure.tracking import WandbRun
from train.parallel.build import build_layout, build_model, fsdp_float8_all_gather
from train.parallel.layout import Layout
from train.runtime import distributed
from train.runtime.data import SyntheticTokens, TokenFile, draw_rank_batches
from train.runtime.machine import probe_machine
from train.runtime.numerics import apply_backend_flags, prepare_model
from train.spec.checks import check_run
from train.spec.config import RunConfig, config_digest, load_run_config
from train.spec.devices import profile_mismatch
from train.spec.precision import PrecisionPlan, peak_tflops_for, resolve_precision
from train.spec.shapes import count_params, flops_per_token, recompute_flops_per_token
from train.spec.traffic import StepShape, comm_bytes_per_step


def build_data(cfg: RunConfig):
    if cfg.data.source == "file":
        return TokenFile(cfg.data.path, cfg.data.dtype, cfg.train.seq_len, cfg.seed)
    return SyntheticTokens(cfg.model.vocab_size, cfg.train.seq_len, cfg.seed)


def train_step(
    layout: Layout,
    scaler,
    micro_batches,
    accum_steps,
    plan: PrecisionPlan,
    device: torch.device,
    grad_clip: float,
    sync: bool = True,
) -> torch.Tensor:
    """One optimizer step over accum_steps micro-batches; returns the mean loss (a tensor).

    ``sync=False`` is the no-sync twin (train/measure/profiling.py): gradients are never reduced.
    """
    if layout.runs_whole_step:  # a pipeline: its schedule runs every micro-batch
        return layout.train_step(micro_batches, plan, device, grad_clip)
    loss_sum = torch.zeros((), device=device)
    for i, (inputs, targets) in enumerate(micro_batches):
        # Data-parallel layouts reduce gradients once per step, on the last micro-step.
        with layout.gradient_sync(enabled=sync and i == accum_steps - 1):
            with mark("forward"), layout.autocast(plan, device):
                loss = layout.model(
                    inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                )
            scaled = loss / accum_steps
            with mark("backward"):
                layout.backward(scaler.scale(scaled) if scaler else scaled)
        loss_sum += loss.detach()
    with mark("optimizer"):
        if scaler:
            scaler.unscale_(layout.optimizer)
        layout.finish_gradients(grad_clip)  # clips to grad_clip (0: off), notes gradient bytes
        if scaler:
            scaler.step(layout.optimizer)  # skips the update when the gradients overflowed
            scaler.update()
        else:
            layout.step()
        layout.zero_grad()
    return loss_sum / accum_steps


def mean_over_ranks(value: torch.Tensor) -> float:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)  # SUM: gloo has no AVG
        value /= dist.get_world_size()
    return float(value)


def run(config_path: str | Path) -> dict | None:
    config_path = Path(config_path)
    cfg = load_run_config(config_path)
    run_dir = config_path.parent
    rank = distributed.init_distributed(cfg.fabric.nccl_env)
    try:
        summary = _run(cfg, run_dir, rank)
        # Leave together: a gloo rank that tears down while rank 0 still writes the summary
        # can abort ("terminate called without an active exception").
        if dist.is_initialized():
            dist.barrier()
        return summary
    finally:
        distributed.shutdown()


def _run(cfg: RunConfig, run_dir: Path, rank: distributed.RankInfo) -> dict | None:
    probe = probe_machine(rank.device)
    plan = resolve_precision(
        cfg.precision.name,
        cfg.precision.fp8,
        cfg.gpu,
        cfg.model,
        probe,
        layout_name=cfg.parallel.name,
        tokens_per_micro_batch=cfg.train.micro_batch * cfg.train.seq_len,
    )
    apply_backend_flags(plan)
    device_name = distributed.device_name(rank.device)
    gpu_warning = profile_mismatch(cfg.gpu, rank.device.type, device_name)
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

    torch.manual_seed(cfg.seed)
    n_params = count_params(cfg.model)
    model_flops_per_token = flops_per_token(cfg.model, cfg.train.seq_len)
    # The driver's rules again, on the config this rank was given (one source: train/spec).
    checked = check_run(cfg, rank.world_size, cfg.cluster.nproc_per_node)
    layout_plan = checked.layout
    # HFU also counts the second forward of every checkpointed block; MFU does not.
    hardware_flops_per_token = model_flops_per_token + recompute_flops_per_token(
        cfg.model, cfg.train.seq_len, len(layout_plan.checkpointed)
    )
    accum_steps = checked.batch.accum_steps
    # Shapes only (meta device; zero3: partitioned by zero.Init) until the layout has sharded
    # it: no rank builds the whole model. Weights depend on cfg.seed only (train/model/weights.py).
    model = build_model(cfg, layout_plan, plan.resolved, accum_steps, rank.device)
    fp8_all_gather = fsdp_float8_all_gather(layout_plan, plan.fp8_backend, plan.fp8_recipe)
    model = prepare_model(model, plan, rank.device, fsdp_float8_all_gather=fp8_all_gather)
    # torchao's fp8 casts are only fast once fused by the compiler.
    fp8_needs_compile = plan.fp8_backend == "torchao" and rank.device.type == "cuda"
    layout = build_layout(
        model,
        cfg,
        layout_plan,
        plan.resolved,
        accum_steps,
        rank.device,
        compile_blocks=cfg.train.compile or fp8_needs_compile,
        fp8_backend=plan.fp8_backend,
        fp8_recipe=plan.fp8_recipe,
    )
    comm = comm_bytes_per_step(
        cfg.model,
        layout_plan,
        StepShape(
            micro_batch=cfg.train.micro_batch,
            seq_len=cfg.train.seq_len,
            accum_steps=accum_steps,
            grad_clip=cfg.train.grad_clip > 0,
            precision=plan.resolved,
            fsdp_reduce_dtype=cfg.parallel.fsdp_reduce_dtype,
            fp8_all_gather_min_dim=plan.fp8_min_dim if fp8_all_gather else None,
        ),
    )
    scaler = None
    # DeepSpeed scales fp16 losses inside its engine; a GradScaler on top would scale twice.
    if plan.loss_scaling and not layout.scales_loss:
        scaler = torch.amp.GradScaler(
            rank.device.type,
            init_scale=cfg.precision.loss_scale_init,
            growth_interval=cfg.precision.loss_scale_growth_interval,
        )

    # Resumes from the latest complete checkpoint (train/checkpoint/checkpointer.py): the loop starts after it.
    checkpoints = Checkpointer(
        cfg,
        run_dir,
        layout=layout,
        layout_plan=layout_plan,
        scaler=scaler,
        precision=plan.resolved,
        rank=rank.rank,
        world_size=rank.world_size,
        device=rank.device,
    )
    start_step = checkpoints.resume()
    restart_count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    after_restart = restart_count > 0 or checkpoints.resumed_from_step is not None

    data = build_data(cfg)
    tokens_per_step = cfg.train.global_batch * cfg.train.seq_len
    peak = peak_tflops_for(cfg.gpu, plan.resolved)

    sinks = None  # rank 0 only
    if rank.is_main:
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
        sinks = MetricsSinks(
            run_dir=run_dir, total_steps=cfg.train.steps, tracker=tracker, resume=after_restart
        )
    if rank.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rank.device)

    loss_value = float("nan")
    loop_started = time.perf_counter()
    for step in range(start_step + 1, cfg.train.steps + 1):
        # This rank's rows only, drawn before the clock starts: the step times training, not
        # data generation. Drawn here rather than by a background thread, which would compete
        # with the step for the same CPU cores; one step's rows are held at a time.
        batches = draw_rank_batches(
            data,
            step,
            dp_rank=layout.dp_rank,
            dp_size=layout.dp_size,
            micro_batch=cfg.train.micro_batch,
            accum_steps=accum_steps,
            pin=rank.device.type == "cuda",
        )
        started = time.perf_counter()
        loss = train_step(
            layout, scaler, batches, accum_steps, plan, rank.device, cfg.train.grad_clip
        )
        loss_value = mean_over_ranks(loss)  # also waits for the device: the step is done
        step_time = time.perf_counter() - started
        if sinks is not None:
            sinks.log_step(
                StepRecord.measured(
                    step=step,
                    loss=loss_value,
                    step_time_s=step_time,
                    tokens_per_step=tokens_per_step,
                    world_size=rank.world_size,
                    flops_per_token=model_flops_per_token,
                    peak_tflops=peak,
                    memory_bytes=peak_memory_bytes(rank.device),
                    timed=step > cfg.train.warmup_steps,
                    loss_scale=scaler.get_scale() if scaler else None,
                    after_restart=after_restart,
                    repeated=step in sinks.earlier_steps,
                )
            )
        checkpoints.after_step(step)  # every rank: saves are collective; outside the step time

    timed_loop_s = time.perf_counter() - loop_started - checkpoints.waited_s
    checkpoint_record = checkpoints.finish()  # an async save in flight completes here
    # Every rank takes part: the summary shows the busiest rank's bytes.
    peak_bytes = peak_memory_bytes(rank.device)  # before the profiler adds its own
    peak_reserved = peak_memory_reserved_bytes(rank.device)  # None on CPU
    memory = memory_summary(layout.held_memory(), peak_bytes, peak_reserved)

    # Where the step went (train/measure/profiling.py): extra steps after the timed ones and after
    # final_loss was taken, so neither changes; every rank runs them (they are collectives).
    profiled = None
    if cfg.profile.enabled or cfg.profile.twin:

        def draw(step: int):
            return draw_rank_batches(
                data,
                step,
                dp_rank=layout.dp_rank,
                dp_size=layout.dp_size,
                micro_batch=cfg.train.micro_batch,
                accum_steps=accum_steps,
                pin=rank.device.type == "cuda",
            )

        def one_step(batches, sync: bool) -> torch.Tensor:
            return train_step(
                layout, scaler, batches, accum_steps, plan, rank.device, cfg.train.grad_clip, sync
            )

        gpu = cfg.gpu if rank.device.type == "cuda" else None
        profiled = profile_after_timed(
            cfg.profile,
            StepFunctions(draw=draw, step=one_step, reduce_loss=mean_over_ranks),
            rank=rank.rank,
            world_size=rank.world_size,
            first_step=cfg.train.steps + 1,
            run_dir=run_dir,
            device=rank.device,
            layout_name=layout_plan.name,
            timed_step_s=statistics.median(sinks.timed_step_times()) if sinks else None,
            timed_loop_s=timed_loop_s,
            comm_bytes=comm.as_dict(),
            link=link_rate(
                cluster_name=cfg.cluster.name,
                applied_link=cfg.resolved.applied_link,
                nodes=rank.nodes,
                gpu_profile=None
                if gpu is None
                else {
                    "nic_gbits_per_s_per_gpu": gpu.nic_gbits_per_s_per_gpu,
                    "nvlink_gbytes_per_s_bidir": gpu.nvlink_gbytes_per_s_bidir,
                },
            ),
        )
    if not rank.is_main:
        return None
    if math.isnan(loss_value) and sinks.records:
        # Resumed at the last step (a restart after the final save): its loss was logged.
        loss_value = sinks.records[-1].loss
    stats = step_time_stats(sinks.timed_step_times())
    tokens_per_s = tokens_per_step / stats["median"]
    per_device = tokens_per_s / rank.world_size
    fields = {
        "run_name": run_dir.name,
        "sweep": {"id": cfg.resolved.sweep_id, "name": cfg.sweep.name},
        "world_size": rank.world_size,
        "nodes": rank.nodes,
        "nproc_per_node": rank.local_world_size,
        "gpu": cfg.gpu.name,
        "gpu_display_name": cfg.gpu.display_name,
        "device_name": device_name,
        "backend": rank.backend,
        "precision": plan.as_dict(),
        "parallel": cfg.parallel.name,
        "layout": {
            **layout_plan.as_dict(),
            "resolved": layout_plan.name,
            # parallel=auto: the performance model's reason (launch/perfmodel/choose.py).
            "reason": cfg.resolved.layout_reason or f"requested parallel={layout_plan.name}",
        },
        "model": {
            "name": cfg.model.name,
            "params": n_params,
            "flops_per_token": model_flops_per_token,
        },
        "seq_len": cfg.train.seq_len,
        "global_batch": cfg.train.global_batch,
        "micro_batch": cfg.train.micro_batch,
        "grad_accum": accum_steps,
        "tokens_per_step": tokens_per_step,
        "timed_steps": len(sinks.timed_step_times()),
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": per_device,
        "step_time_s": stats,
        "model_tflops_per_device": model_tflops_per_device(model_flops_per_token, per_device),
        **mfu_figures(model_flops_per_token, per_device, cfg.gpu, plan.resolved),
        "gpu_warning": gpu_warning,
        "hardware_flops_per_token": hardware_flops_per_token,
        "hfu": mfu(hardware_flops_per_token, per_device, peak),
        # Allocated (live tensors; RSS on CPU), then reserved by the caching allocator (adds
        # its cache and fragmentation; null on CPU). NCCL buffers are in neither.
        "peak_memory_bytes": peak_bytes,
        "peak_memory_reserved_bytes": peak_reserved,
        "memory": memory,  # per rank, bytes: params, grads, optimizer state, masters, peak
        "comm_bytes_per_step": comm.as_dict(),  # per rank, by collective kind
        "pipeline": layout.pipeline_summary,  # pp layouts: schedule, stages, bubble, memory
        "final_loss": loss_value,
        # Saves (seconds, bytes, GB/s per rank and job) and the step resumed from; null: off.
        "checkpoint": checkpoint_record,
        "repeated_steps": sinks.repeated_steps(),  # run again after a restart
        # Profiled and twin steps (below) come after it and are not in any timed figure.
        "final_loss_from": f"last timed step ({cfg.train.steps})",
        **(profiled or {}),  # breakdown (per method), achieved_bandwidth, profile
        "torch_version": torch.__version__,
        "config_digest": config_digest(cfg),
        # "cluster" (link, restarts) and "fabric" (NCCL variables, warnings)
        **cluster_record(cfg, rank.device, fabric_warnings=fabric_warnings),
    }
    summary = RunSummary(**fields)
    sinks.log_summary(summary, run_dir / "summary.json")
    return summary.to_dict()
