"""The training job: ranks run `python -m train`; a sweep ends with its scaling report."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from launch import report
from launch.pipeline import Job
from launch.plan import RunPlan
from train.spec.config import RunConfig


def print_run(cfg: RunConfig, plan: RunPlan, summary: dict, console: Console) -> None:
    mfu = f"{100 * summary['mfu']:.1f}%" if summary["mfu"] is not None else "n/a"
    console.print(
        f"{plan.name}: {summary['tokens_per_s']:,.0f} tokens/s "
        f"({summary['tokens_per_s_per_device']:,.0f} per device), step "
        f"{summary['step_time_s']['median']:.3f}s, MFU {mfu}, loss "
        f"{summary['final_loss']:.4f} -> {plan.run_dir}"
    )


def report_sweep(cfg: RunConfig, sweep_id: str, summaries: list[dict], console: Console) -> None:
    """A sweep's report.md, results.json and plots, its table on the console and in wandb."""
    if cfg.sweep.name == "none":
        return
    root = Path(cfg.run_dir)
    paths = report.write_report([root], root)
    rows = report.scaling_rows(report.load_runs([root]))
    report.print_table(rows, console)
    log_scaling_to_wandb(cfg, sweep_id, rows, root)
    console.print("report: " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)


def log_scaling_to_wandb(cfg: RunConfig, sweep_id: str, rows: list[dict], root: Path) -> None:
    """The sweep's scaling table and efficiency curve, grouped with its runs in wandb."""
    if cfg.wandb.mode == "disabled":
        return
    import wandb

    from train.measure.tracking import WandbRun

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
    title = f"{cfg.gpu.name} scaling efficiency"
    line = wandb.plot.line(table, "world_size", "scaling_efficiency", title=title)
    run.log({"scaling_table": table, "scaling_efficiency": line})
    run.finish()


TRAINING = Job(
    driver_module="launch",
    rank_module="train",
    progress_file="metrics.jsonl",
    result_file="summary.json",
    total_steps=lambda cfg: cfg.train.steps,
    on_result=print_run,
    on_all=report_sweep,
)
