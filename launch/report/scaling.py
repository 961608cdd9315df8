"""Scaling efficiency per series: each world size against the series' smallest."""

from __future__ import annotations

from typing import Any

from launch.report.predicted import predicted_for


def group_series(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        series.setdefault(run["series"], []).append(run)
    return series


def scaling_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run, grouped by series and sorted by world size within each."""
    rows = []
    for label, members in group_series(runs).items():
        members = sorted(members, key=lambda r: (r["world_size"], r.get("run_name", "")))
        base = members[0]
        # Strong scaling fixes the global batch, weak scaling the batch per data-parallel rank
        # (per device under data parallelism; under TP or a pipeline the ranks of a group
        # share theirs; under parallel=auto per device, sweep.batch_held); measured in
        # tokens/s both ask the same question, "how much of each
        # added device's throughput survives", so one formula serves both: per-device
        # tokens/s relative to the base's (README: Scaling efficiency).
        base_per_device = base["tokens_per_s"] / base["world_size"]
        crossed = False
        for run in members:
            per_device = run["tokens_per_s"] / run["world_size"]
            # The first multi-node size is where gradients leave NVLink for the NIC; flag only
            # that one, the later ones pay the same price.
            crosses = not crossed and run["nodes"] > base["nodes"]
            crossed = crossed or crosses
            rows.append(
                {
                    "series": label,
                    "gpu": run["gpu"],
                    "world_size": run["world_size"],
                    "nodes": run["nodes"],
                    "nproc_per_node": run["nproc_per_node"],
                    "tokens_per_s": run["tokens_per_s"],
                    "tokens_per_s_per_device": run["tokens_per_s_per_device"],
                    "step_time_median_s": run["step_time_s"]["median"],
                    "mfu": run["mfu"],
                    "mfu_vs_bf16_peak": run.get("mfu_vs_bf16_peak"),
                    "mfu_vs_measured": run.get("mfu_vs_measured"),
                    "gpu_warning": run.get("gpu_warning"),
                    # MFU above 100%: not a true figure, and the likely cause.
                    "mfu_warning": run.get("mfu_warning"),
                    "scaling_efficiency": per_device / base_per_device if base_per_device else None,
                    # Per rank (the busiest), from the layout; absent in older summaries.
                    "memory": run.get("memory"),
                    "comm_bytes_per_step": run.get("comm_bytes_per_step"),
                    "hfu": run.get("hfu"),
                    "crosses_node_boundary": crosses,
                    # The performance model's step for this run (launch/report/predicted.py).
                    "predicted": predicted_for(run) if "run_dir" in run else None,
                    "sweep": run["sweep"]["name"],
                    "run_dir": run["run_dir"],
                }
            )
    return rows
