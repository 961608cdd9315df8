"""summary.json of a finished run (rank 0): its set-up, its timed steps, where the step went.

Every key is named once, in one constructor call: the type (train/measure/summary.py) says
what each holds, and the report (launch/report/) reads the same type.
"""

from __future__ import annotations

import math

import torch

from train.measure.cluster_record import cluster_fields, fabric_fields
from train.measure.metrics import mfu, mfu_figures, model_tflops_per_device, step_time_stats
from train.measure.profiling import ProfileResult
from train.measure.routing import routing_summary
from train.measure.summary import RunSummary
from train.runtime.loop import Trained
from train.runtime.numerics import fp8_linears_built
from train.runtime.rank_setup import RankRun
from train.spec.config import config_digest
from train.spec.degrees import layout_record
from train.spec.devices import peaks_describe
from train.spec.shapes import count_active_params


def run_summary(run: RankRun, trained: Trained, profiled: ProfileResult | None) -> RunSummary:
    cfg, rank, work, sinks = run.cfg, run.rank, run.workload, run.sinks
    step_times = sinks.timed_step_times()
    stats = step_time_stats(step_times)
    tokens_per_s = work.tokens_per_step / stats["median"]
    per_device = tokens_per_s / rank.world_size
    profile = cfg.gpu if peaks_describe(cfg.gpu, rank.device.type) else None
    figures = mfu_figures(work.flops_per_token, per_device, profile, run.precision.resolved)
    return RunSummary(
        run_name=run.run_dir.name,
        sweep={
            "id": cfg.resolved.sweep_id,
            "name": cfg.sweep.name,
            "batch_held": cfg.resolved.batch_held,
        },
        world_size=rank.world_size,
        nodes=rank.nodes,
        nproc_per_node=rank.local_world_size,
        gpu=cfg.gpu.name,
        gpu_display_name=cfg.gpu.display_name,
        gpu_power_limit_w=cfg.gpu.power_limit_w,
        gpu_tdp_w=cfg.gpu.tdp_w,
        device_name=run.device_notes.device_name,
        backend=rank.backend,
        precision=_precision_record(run),
        parallel=cfg.parallel.name,
        layout=_layout_record(run),
        model={
            "name": cfg.model.name,
            "params": work.params,
            # What one token computes with (MoE: its top_k experts); FLOPs count these.
            "active_params": count_active_params(cfg.model),
            "flops_per_token": work.flops_per_token,
        },
        seq_len=cfg.train.seq_len,
        global_batch=cfg.train.global_batch,
        micro_batch=cfg.train.micro_batch,
        data_parallel_size=run.layout_plan.degrees.dp,
        grad_accum=run.steps.accum_steps,
        tokens_per_step=work.tokens_per_step,
        timed_steps=len(step_times),
        tokens_per_s=tokens_per_s,
        tokens_per_s_per_device=per_device,
        step_time_s=stats,
        model_tflops_per_device=model_tflops_per_device(work.flops_per_token, per_device),
        peak_tflops=figures.peak_tflops,
        mfu_peak_precision=figures.mfu_peak_precision,
        mfu=figures.mfu,
        measured_peak_tflops=figures.measured_peak_tflops,
        mfu_vs_measured=figures.mfu_vs_measured,
        mfu_vs_bf16_peak=figures.mfu_vs_bf16_peak,
        mfu_vs_fp8_peak=figures.mfu_vs_fp8_peak,
        gpu_warning=run.device_notes.gpu_warning,
        mfu_warning=figures.above_peak,
        hardware_flops_per_token=work.hardware_flops_per_token,
        hfu=mfu(work.hardware_flops_per_token, per_device, work.peak_tflops),
        peak_memory_bytes=trained.peak_memory_bytes,
        peak_memory_reserved_bytes=trained.peak_memory_reserved_bytes,
        memory=trained.memory,  # per rank, bytes: params, grads, optimizer state, masters, peak
        comm_bytes_per_step=run.comm.as_dict(),  # per rank, by collective kind
        moe=routing_summary(
            cfg.model, run.layout_plan.degrees.ep, [r.moe or {} for r in sinks.records if r.timed]
        ),
        pipeline=run.layout.pipeline_summary,  # pp layouts: schedule, stages, bubble, memory
        final_loss=_final_loss(run, trained),
        # Saves (seconds, bytes, GB/s per rank and job) and the step resumed from; null: off.
        checkpoint=trained.checkpoint,
        repeated_steps=sinks.repeated_steps(),  # run again after a restart
        # Profiled and twin steps come after it and are not in any timed figure.
        final_loss_from=f"last timed step ({cfg.train.steps})",
        breakdown=profiled.breakdown if profiled else None,
        achieved_bandwidth=profiled.achieved_bandwidth if profiled else None,
        profile=profiled.profile if profiled else None,
        torch_version=torch.__version__,
        config_digest=config_digest(cfg),
        cluster=cluster_fields(cfg, rank.device),  # link, restarts
        fabric=fabric_fields(cfg, rank.device, fabric_warnings=run.device_notes.fabric_warnings),
    )


def _layout_record(run: RankRun) -> dict:
    """The layout plan (degrees, checkpointed blocks, sequence parallel), what it resolved to
    and why."""
    record = layout_record(run.cfg, run.layout_plan)
    # parallel=auto: the performance model's reason (launch/perfmodel/choose.py).
    reason = run.cfg.resolved.layout_reason or f"requested parallel={run.layout_plan.name}"
    record.update(resolved=run.layout_plan.name, reason=reason)
    return record


def _final_loss(run: RankRun, trained: Trained) -> float:
    if math.isnan(trained.final_loss) and run.sinks.records:
        # Resumed at the last step (a restart after the final save): its loss was logged.
        return run.sinks.records[-1].loss
    return trained.final_loss


def _precision_record(run: RankRun) -> dict:
    """The precision plan, and under fp8 the fp8 Linear layers this rank (rank 0, the writer;
    a pipeline's first stages) built: what the plan's "n of m linears per block" became."""
    record = run.precision.as_dict()
    if run.precision.resolved == "fp8":
        record["fp8_linears_built_on_rank0"] = fp8_linears_built(run.layout.model)
    return record
