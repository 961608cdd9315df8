"""The training loop of one rank: build, wrap, step, measure; rank 0 writes the results."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from train import distributed
from train.cluster_record import cluster_record
from train.comm_volume import comm_bytes_per_step
from train.config import RunConfig, load_run_config
from train.data import SyntheticTokens, TokenFile, rank_micro_batches
from train.hardware import probe_machine, profile_mismatch
from train.memory import memory_summary
from train.metrics import (
    MetricsWriter,
    StepRecord,
    format_step_line,
    mfu,
    mfu_figures,
    model_tflops_per_device,
    peak_memory_bytes,
    step_time_stats,
)
from train.model import Transformer, count_params, flops_per_token
from train.parallel.build import build_layout
from train.parallel.checkpointing import recompute_flops_per_token
from train.parallel.degrees import plan_layout
from train.parallel.layout import Layout
from train.precision import PrecisionPlan, peak_tflops_for, prepare_model, resolve_precision
from train.tracking import WandbRun


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
) -> torch.Tensor:
    """One optimizer step over accum_steps micro-batches; returns the mean loss (a tensor)."""
    loss_sum = torch.zeros((), device=device)
    for i, (inputs, targets) in enumerate(micro_batches):
        # Data-parallel layouts reduce gradients once per step, on the last micro-step.
        with layout.gradient_sync(enabled=i == accum_steps - 1):
            with layout.autocast(plan, device):
                loss = layout.model(
                    inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
                )
            scaled = loss / accum_steps
            layout.backward(scaler.scale(scaled) if scaler else scaled)
        loss_sum += loss.detach()
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


def config_digest(cfg: RunConfig) -> str:
    """Hash of what determines the workload (not where it was written or how wide it ran)."""
    content = OmegaConf.to_container(OmegaConf.structured(cfg))
    for key in ("run_dir", "sweep_id", "dry_run", "overwrite", "wandb"):
        content.pop(key, None)
    content.pop("cluster", None)
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def run(config_path: str | Path) -> dict | None:
    config_path = Path(config_path)
    cfg = load_run_config(config_path)
    run_dir = config_path.parent
    rank = distributed.init_distributed()
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
    plan = resolve_precision(cfg.precision.name, cfg.precision.fp8, cfg.gpu, cfg.model, probe)
    plan.apply_backend_flags()
    device_name = distributed.device_name(rank.device)
    gpu_warning = profile_mismatch(cfg.gpu, rank.device.type, device_name)
    if rank.is_main:
        print(f"precision: {plan.resolved} ({plan.reason})", flush=True)
        if gpu_warning:
            print(f"warning: {gpu_warning}", flush=True)

    torch.manual_seed(cfg.seed)
    model = prepare_model(Transformer(cfg.model).to(rank.device), plan, rank.device)
    n_params = count_params(cfg.model)
    model_flops_per_token = flops_per_token(cfg.model, cfg.train.seq_len)
    layout_plan = plan_layout(cfg, rank.world_size, cfg.cluster.nproc_per_node)
    # HFU also counts the second forward of every checkpointed block; MFU does not.
    hardware_flops_per_token = model_flops_per_token + recompute_flops_per_token(
        cfg.model, cfg.train.seq_len, len(layout_plan.checkpointed)
    )
    accum_steps = cfg.train.global_batch // (cfg.train.micro_batch * layout_plan.degrees.dp)
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
    )
    comm = comm_bytes_per_step(
        cfg.model,
        layout_plan,
        cfg.train.micro_batch,
        cfg.train.seq_len,
        accum_steps,
        cfg.train.grad_clip > 0,
        plan.resolved,
    )
    scaler = None
    # DeepSpeed scales fp16 losses inside its engine; a GradScaler on top would scale twice.
    if plan.loss_scaling and not layout.scales_loss:
        scaler = torch.amp.GradScaler(
            rank.device.type,
            init_scale=cfg.precision.loss_scale_init,
            growth_interval=cfg.precision.loss_scale_growth_interval,
        )

    data = build_data(cfg)
    tokens_per_step = cfg.train.global_batch * cfg.train.seq_len
    peak = peak_tflops_for(cfg.gpu, plan.resolved)

    writer = MetricsWriter(run_dir / "metrics.jsonl") if rank.is_main else None
    tracker = None
    if rank.is_main:
        tracker = WandbRun(
            cfg.wandb.mode,
            cfg.wandb.project,
            cfg.wandb.entity,
            run_dir,
            run_dir.name,
            cfg.sweep_id,
            cfg.gpu.name,
            OmegaConf.to_container(OmegaConf.structured(cfg)),
        )
    if rank.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rank.device)

    loss_value = float("nan")
    for step in range(1, cfg.train.steps + 1):
        started = time.perf_counter()
        global_tokens = data.global_batch(step, cfg.train.global_batch)
        batches = rank_micro_batches(
            global_tokens, layout.dp_rank, layout.dp_size, cfg.train.micro_batch
        )
        loss = train_step(
            layout, scaler, batches, accum_steps, plan, rank.device, cfg.train.grad_clip
        )
        loss_value = mean_over_ranks(loss)  # also waits for the device: the step is done
        step_time = time.perf_counter() - started
        if not rank.is_main:
            continue
        tokens_per_s = tokens_per_step / step_time
        per_device = tokens_per_s / rank.world_size
        record = StepRecord(
            step=step,
            loss=loss_value,
            step_time_s=step_time,
            tokens_per_s=tokens_per_s,
            tokens_per_s_per_device=per_device,
            model_tflops_per_device=model_tflops_per_device(model_flops_per_token, per_device),
            mfu=mfu(model_flops_per_token, per_device, peak),
            memory_bytes=peak_memory_bytes(rank.device),
            timed=step > cfg.train.warmup_steps,
            loss_scale=scaler.get_scale() if scaler else None,
        )
        writer.log(record)
        tracker.log({k: v for k, v in record.__dict__.items() if k != "step"}, step=step)
        print(format_step_line(record, cfg.train.steps), flush=True)

    # Every rank takes part: the summary shows the busiest rank's bytes.
    memory = memory_summary(layout.held_memory(), peak_memory_bytes(rank.device))
    if not rank.is_main:
        return None
    stats = step_time_stats(writer.timed_step_times())
    tokens_per_s = tokens_per_step / stats["median"]
    per_device = tokens_per_s / rank.world_size
    summary = {
        "run_name": run_dir.name,
        "sweep": {"id": cfg.sweep_id, "name": cfg.sweep.name},
        "world_size": rank.world_size,
        "nodes": rank.nodes,
        "nproc_per_node": rank.local_world_size,
        "gpu": cfg.gpu.name,
        "gpu_display_name": cfg.gpu.display_name,
        "device_name": device_name,
        "backend": rank.backend,
        "precision": plan.as_dict(),
        "parallel": cfg.parallel.name,
        "layout": layout_plan.as_dict(),
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
        "timed_steps": len(writer.timed_step_times()),
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_device": per_device,
        "step_time_s": stats,
        "model_tflops_per_device": model_tflops_per_device(model_flops_per_token, per_device),
        **mfu_figures(model_flops_per_token, per_device, cfg.gpu, plan.resolved),
        "gpu_warning": gpu_warning,
        "hardware_flops_per_token": hardware_flops_per_token,
        "hfu": mfu(hardware_flops_per_token, per_device, peak),
        "peak_memory_bytes": peak_memory_bytes(rank.device),
        "memory": memory,  # per rank, bytes: params, grads, optimizer state, masters, peak
        "comm_bytes_per_step": comm.as_dict(),  # per rank, by collective kind
        "final_loss": loss_value,
        "torch_version": torch.__version__,
        "config_digest": config_digest(cfg),
        **cluster_record(cfg, rank.device),  # "cluster" (link, restarts) and "fabric" (NCCL)
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    tracker.log_summary({k: v for k, v in summary.items() if not isinstance(v, dict)})
    tracker.finish()
    return summary
