"""The training job: ranks run `python -m train`; a sweep ends with its scaling report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console

from launch import report
from launch.bench.host_kernels import cache_run_kernels
from launch.command_help import help_page
from launch.conf_tree import default_choices, group_choices
from launch.pipeline import Job
from launch.plan import RunPlan
from launch.terminal import plain_console
from train.measure.tracking import WandbRun
from train.spec.config import CheckpointConfig, RunConfig, TrainConfig, WandbConfig, WandbMode


def print_run(cfg: RunConfig, plan: RunPlan, summary: dict, console: Console) -> None:
    mfu = f"{100 * summary['mfu']:.1f}%" if summary["mfu"] is not None else "n/a"
    console.print(
        f"{plan.name}: {summary['tokens_per_s']:,.0f} tokens/s "
        f"({summary['tokens_per_s_per_device']:,.0f} per device), step "
        f"{summary['step_time_s']['median']:.3f}s, MFU {mfu}, loss "
        f"{summary['final_loss']:.4f} -> {plan.run_dir}",
    )
    if summary.get("mfu_warning"):  # MFU above 100%: not a true figure (train/measure/metrics.py)
        console.print(
            f"warning: {plan.name}: {summary['mfu_warning']}",
            highlight=False,
            soft_wrap=True,
        )


def report_sweep(cfg: RunConfig, sweep_id: str, summaries: list[dict], console: Console) -> None:
    """A sweep's report.md, results.json and plots, its table on the console and in wandb."""
    if cfg.sweep.name == "none":
        return
    root = Path(cfg.run_dir)
    paths, rows = write_sweep_report([root], root, console)
    log_scaling_to_wandb(cfg, sweep_id, rows, root)
    console.print("report: " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)


def write_sweep_report(
    dirs: list[Path], out: Path, console: Console
) -> tuple[dict[str, Path], list[dict]]:
    """The report of the runs under ``dirs`` written into ``out`` and its table printed. The
    report only reads kernel times (rendering never measures): the cpu runs that ran on this
    host have their shapes measured here first, for it to predict their steps from."""
    runs = report.load_runs(dirs)
    if cache_run_kernels(runs):
        console.print("measured this host's kernel times at the runs' shapes (launch.mamf cache)")
    rows = report.scaling_rows(runs)
    paths = report.write_files(runs, rows, out, report.failed_in(dirs))
    report.print_table(rows, console)
    return paths, rows


def log_scaling_to_wandb(cfg: RunConfig, sweep_id: str, rows: list[dict], root: Path) -> None:
    """The sweep's scaling table and efficiency curve, grouped with its runs in wandb."""
    if cfg.wandb.mode == "disabled":
        return
    import wandb  # here: seconds to import, and most sweeps log nothing to it

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


class MultirunReport(Callback):
    """A Hydra multirun (local, or Slurm jobs through submitit) ends with one report over
    every job's runs at the multirun root (hydra.sweep.dir); each job's own report stays."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        jobs = sorted(d for d in root.glob("*") if d.is_dir() and _holds_summaries(d))
        if not jobs:
            return  # dry runs, launch.comm / launch.project multiruns: nothing to compare
        console = plain_console()
        try:
            paths, _ = write_sweep_report(jobs, root, console)
        except report.ReportError as exc:
            console.print(f"multirun report: {exc}", highlight=False)
            return
        console.print(
            "multirun report: " + ", ".join(str(p) for p in paths.values()),
            soft_wrap=True,
            highlight=False,
        )


def _holds_summaries(job_dir: Path) -> bool:
    return (job_dir / "summary.json").is_file() or any(job_dir.glob("*/summary.json"))


def training_help() -> str:
    """--help of python -m launch: what it does, the keys most runs set, examples, then Hydra's
    groups and the whole config (every other key is an override too)."""
    t, default = TrainConfig(), default_choices()

    def group(name: str, what: str) -> tuple[str, str]:
        """``name=NAME``: what it sets, its options (auto's meaning in ``what``), its default."""
        options = ", ".join(c for c in group_choices(name) if c != "auto")
        return f"{name}=NAME", f"{what}{options} (default {default[name]})"

    keys = [
        group("gpu", "the part: its peaks (MFU), memory, links and precision=auto's choice. "
              "auto: this machine's, detected; or "),
        group("model", ""),
        group("parallel", "the layout (degrees: parallel.tp=N, parallel.pp=N, parallel.ep=N, "
              "...). auto: the performance model's choice for each run; or "),
        group("precision", "auto: bf16 where the part has it, fp8 on Hopper/Ada with an fp8 "
              "backend, else fp32; or "),
        group("sweep", "one run, or a run per world size (sweep.world_sizes=[1,2,...]) and a "
              "scaling report, weak (the batch per device held) or strong (the global batch): "),
        group("cluster", "where the ranks run, cluster.nodes=N x cluster.nproc_per_node=N: "),
        group("launcher", "what starts the ranks: "),
        (f"train.steps={t.steps}", f"timed steps, after train.warmup_steps={t.warmup_steps}"),
        (f"train.micro_batch={t.micro_batch}", f"sequences per rank and micro-step; also "
         f"train.global_batch={t.global_batch}, train.seq_len={t.seq_len}"),
        (f"checkpoint.every={CheckpointConfig().every}", "save every N steps (0: never); a "
         "restarted rank resumes from the last"),
        ("dry_run=true", "print every node's command and start nothing"),
        ("run_dir=DIR", "where the runs and the report go (default runs/DATE/TIME)"),
        ("resume=true", "with run_dir=DIR: run only the sweep's points without a result"),
        ("wandb.mode=" + "|".join(m.value for m in WandbMode),
         f"tracking (default {WandbConfig().mode.value})"),
    ]  # fmt: skip
    summary = (
        "python -m launch [KEY=VALUE ...]: runs the reference transformer on 1..N ranks "
        "(torchrun, the deepspeed launcher or Slurm) at each world size of a sweep, and writes "
        "each run's throughput, MFU, memory and communication, then a scaling report. Related: "
        "python -m launch.project (predicted scaling per GPU type, no ranks), python -m "
        "launch.comm (collective bandwidth), python -m launch.mamf (this machine's matmul "
        "ceiling), python -m launch.report RUN_DIR (the report again)."
    )
    examples = [
        "python -m launch                # weak sweep, 1 and 2 ranks, tiny model",
        "python -m launch sweep=none parallel=fsdp cluster.nproc_per_node=2",
        "python -m launch gpu=h800 model=gpt_1_3b cluster=slurm launcher=slurm dry_run=true",
        "python -m launch --multirun model=tiny,gpt_125m sweep=none",
    ]
    return help_page(summary, keys, examples, whole_config=True)


TRAINING = Job(
    driver_module="launch",
    rank_module="train",
    progress_file="metrics.jsonl",
    result_file="summary.json",
    total_steps=lambda cfg: cfg.train.steps,
    on_result=print_run,
    on_all=report_sweep,
    help_text=training_help,
)
