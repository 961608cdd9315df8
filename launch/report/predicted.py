"""Predicted beside measured: the performance model's step for the machine a run ran on.

The run's own config.yaml says what ran (layout, batch, precision resolved on its device);
the cpu profile's compute rate is the measured matmul ceiling (launch.mamf) the driver put
there, the emulated cluster's link its configured rate. A cpu run's compute is itemised over
kernel times measured at its own shapes, read from launch.mamf's cache: the training job
measures them before a sweep's report (launch/bench/host_kernels.py), ``python -m launch.mamf
--host-shapes`` does by hand; this module never measures. Where the model has nothing to go on
(a cpu run without a measured ceiling, or without its kernel times) the row says why instead
of guessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launch.bench.cache import load_host
from launch.errors import ConfigError
from launch.perfmodel.host import HostRates, host_workload
from launch.perfmodel.step import predict_run
from train.spec.config import RunConfig, load_run_config


class NotMeasured(Exception):
    """A cpu run whose kernel times are not in the cache: the row says which command fills it."""


def predicted_for(run: dict[str, Any]) -> dict[str, Any] | None:
    """{step_time_s, compute_s, exposed_comm_s, measured_over_predicted}, {unavailable: why},
    or None for a summary without its run's config.yaml (copied out of its run dir)."""
    config = Path(run["run_dir"]) / "config.yaml"
    if not config.is_file():
        return None
    layout = run.get("layout") or {}
    chosen = {"layout": layout.get("resolved"), "layout_reason": layout.get("reason")}
    if (run.get("cluster") or {}).get("oversubscribed"):
        # The host model times each rank on a core of its own; sharing them is outside what
        # it was checked on (a 2-core host at 4 ranks measured 2.2-2.8 x its prediction).
        return {
            "unavailable": "oversubscribed: CPU rank threads outnumbered the cores, and the "
            "model times each rank on cores of its own",
            **chosen,
        }
    try:
        cfg = load_run_config(config)
        prediction = predict_run(
            cfg,
            run,
            precision=run["precision"]["resolved"],
            host=host_rates_for(cfg, run, config),
            fp8_resolved=run["precision"],
        )
    except (ConfigError, NotMeasured) as exc:
        return {"unavailable": str(exc), **chosen}
    except Exception as exc:  # noqa: BLE001 - an old config the schema no longer reads
        return {"unavailable": f"{type(exc).__name__}: {exc}".splitlines()[0], **chosen}
    measured = run["step_time_s"]["median"]
    return {
        **chosen,
        "step_time_s": prediction.step_time_s,
        "compute_s": prediction.compute_s,
        "exposed_comm_s": prediction.exposed_comm_s,
        "measured_over_predicted": measured / prediction.step_time_s,
    }


def host_rates_for(cfg: RunConfig, run: dict[str, Any], config: Path) -> HostRates | None:
    """The cpu profile's cached kernel times for this run's shapes; None where the model
    needs none (a GPU run, no measured fp32 ceiling, a run not in fp32). NotMeasured when the
    cache on this machine lacks any of them."""
    if cfg.gpu.name == "cpu" and run["precision"]["resolved"] != "fp32":
        raise NotMeasured(
            f"the host model times this CPU's fp32 kernels, and the run ran "
            f"{run['precision']['resolved']}: outside what the model was validated for, so no "
            "prediction (precision=fp32 gets one)"
        )
    work = host_workload(cfg, run)
    if work is None:
        return None
    device = run.get("device_name") or ""
    record = load_host(device, work.cpu_threads)
    missing = work.missing(record)
    if missing:
        raise NotMeasured(
            f"kernel times at {len(missing)} of its shapes not measured on {device or 'its CPU'} "
            f"({work.cpu_threads} thread(s)): python -m launch.mamf --host-shapes {config} "
            f"--cpu-threads {work.cpu_threads} on that host"
        )
    return HostRates.from_record(record, cfg.gpu.measured_peak_tflops.fp32 * 1e12)


def predicted_section(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: measured step beside the predicted one, per run of a series, then the layout
    each run resolved to and why (parallel=auto's choice, as precision's is stated)."""
    lines = [
        "",
        "Measured beside predicted (launch/perfmodel/, docs/performance-model.md):",
        "",
        "| world size | measured step (s) | predicted step (s) | measured ÷ predicted "
        "| predicted compute (s) | predicted exposed comm (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    layouts = []
    for row in rows:
        p = row.get("predicted") or {}
        if p.get("layout"):
            layouts.append(
                f"- world size {row['world_size']}: {p['layout']} ({p['layout_reason']})"
            )
        if "unavailable" in p:
            lines.append(
                f"| {row['world_size']} | {row['step_time_median_s']:.3f} | n/a "
                f"({p['unavailable']}) | | | |"
            )
            continue
        lines.append(
            f"| {row['world_size']} | {row['step_time_median_s']:.3f} | {p['step_time_s']:.3f} "
            f"| {p['measured_over_predicted']:.2f} | {p['compute_s']:.3f} "
            f"| {p['exposed_comm_s']:.3f} |"
        )
    if layouts:
        lines += ["", "Layout (layout.resolved, layout.reason):", "", *layouts]
    return lines
