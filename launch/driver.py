"""The driver's job after Hydra composed the config: validate, plan, launch, report."""

from __future__ import annotations

import shlex
import sys
import uuid
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from launch import report
from launch.gpu_detect import detect_local, local_device_name, with_measured_peaks
from launch.launchers import (
    commands_run_here,
    launch_commands,
    set_up_cluster,
    submit_slurm_jobs,
)
from launch.plan import RunPlan, config_for, plan_runs
from launch.runner import progress_bar, run_nodes
from launch.validate import validate
from train.config import RunConfig
from train.hardware import probe_machine, profile_mismatch
from train.precision import resolve_precision


def new_sweep_id(cfg: RunConfig) -> str:
    return f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def write_run_config(cfg: RunConfig, plan: RunPlan, sweep_id: str) -> Path:
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    path = plan.run_dir / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config_for(cfg, plan, sweep_id))))
    return path


def report_precision_choice(cfg: RunConfig, console: Console) -> None:
    """Say what this machine would pick; each rank decides again for its own device."""
    import torch

    device_type, device_name = local_device_name()
    mismatch = profile_mismatch(cfg.gpu, device_type, device_name)
    if mismatch:
        console.print(f"[yellow]warning:[/] {mismatch}")
    else:
        cfg.gpu, measured = with_measured_peaks(cfg.gpu, cfg.cluster.cpu_threads_per_rank)
        if measured:
            console.print(f"peak: {measured}")
    if cfg.precision.name == "tf32" and device_type == "cpu":
        console.print("[yellow]warning:[/] precision=tf32 on cpu is a no-op: matmuls run in fp32")
    probe = probe_machine(torch.device(device_type))
    plan = resolve_precision(cfg.precision.name, cfg.precision.fp8, cfg.gpu, cfg.model, probe)
    console.print(f"precision: {cfg.precision.name} -> {plan.resolved} ({plan.reason})")


def drive(cfg: RunConfig, overrides: list[str], console: Console) -> int:
    if cfg.gpu.name == "auto":
        cfg.gpu, detected = detect_local()
        console.print(f"gpu=auto: {detected}")
    plans = plan_runs(cfg)
    validate(cfg, plans)  # raises ConfigError before anything is written or started
    setup = set_up_cluster(cfg, plans, console)  # nodes, emulated links; ConfigError too
    report_precision_choice(cfg, console)

    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    sweep_id = new_sweep_id(cfg)
    reproduce = shlex.join([sys.executable, "-m", "launch", *overrides])
    (root / "command.sh").write_text(f"#!/bin/sh\n# reproduces this run or sweep\n{reproduce}\n")

    node_commands, config_paths = {}, {}
    for plan in plans:
        config_paths[plan.name] = write_run_config(cfg, plan, sweep_id)
        if cfg.launcher.name != "slurm":
            node_commands[plan.name] = launch_commands(cfg, plan, config_paths[plan.name], setup)
    if cfg.launcher.name == "slurm":
        return submit_slurm_jobs(cfg, plans, config_paths)

    if cfg.dry_run:
        for plan in plans:
            print(
                f"# {plan.name}: world size {plan.world_size} = {plan.nodes} node(s) x "
                f"{plan.nproc_per_node}, global batch {plan.global_batch}"
            )
            for node in node_commands[plan.name]:
                if len(node_commands[plan.name]) > 1:
                    print(f"# node {node.node_rank}")
                print(node.shell_line())
        return 0

    summaries = []
    # The emulated cluster's namespaces exist only inside this block, Ctrl-C or not.
    with setup.running(), progress_bar() as progress:
        for plan in plans:
            here = commands_run_here(cfg, node_commands[plan.name])
            if not here:
                continue  # cluster=multinode: this node has no part in a smaller run
            # On a real multi-node cluster rank 0 may write its summary on another node.
            summary = run_nodes(
                here, plan, cfg.train.steps, progress, require_summary=len(here) == plan.nodes
            )
            if summary is None:
                progress.console.print(f"{plan.name}: this node's ranks finished")
                continue
            summaries.append(summary)
            mfu = f"{100 * summary['mfu']:.1f}%" if summary["mfu"] is not None else "n/a"
            progress.console.print(
                f"{plan.name}: {summary['tokens_per_s']:,.0f} tokens/s "
                f"({summary['tokens_per_s_per_device']:,.0f} per device), step "
                f"{summary['step_time_s']['median']:.3f}s, MFU {mfu}, loss "
                f"{summary['final_loss']:.4f} -> {plan.run_dir}"
            )

    if cfg.sweep.name != "none" and len(summaries) == len(plans):
        paths = report.write_report([root], root)
        rows = report.scaling_rows(report.load_runs([root]))
        report.print_table(rows)
        log_scaling_to_wandb(cfg, sweep_id, rows, root)
        console.print("report: " + ", ".join(str(p) for p in paths.values()))
    return 0


def log_scaling_to_wandb(cfg: RunConfig, sweep_id: str, rows: list[dict], root: Path) -> None:
    """The sweep's scaling table and efficiency curve, grouped with its runs in wandb."""
    if cfg.wandb.mode == "disabled":
        return
    import wandb

    from train.tracking import WandbRun

    columns = [
        "world_size",
        "nodes",
        "tokens_per_s",
        "tokens_per_s_per_device",
        "step_time_median_s",
        "mfu",
        "scaling_efficiency",
    ]
    table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
    run = WandbRun(
        cfg.wandb.mode,
        cfg.wandb.project,
        cfg.wandb.entity,
        root,
        "scaling",
        sweep_id,
        cfg.gpu.name,
        {"sweep": cfg.sweep.name},
    )
    run.log(
        {
            "scaling_table": table,
            "scaling_efficiency": wandb.plot.line(
                table,
                "world_size",
                "scaling_efficiency",
                title=f"{cfg.gpu.name} scaling efficiency",
            ),
        }
    )
    run.finish()
