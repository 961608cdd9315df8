"""Predicted beside measured: the performance model's step for the machine a run ran on.

The run's own config.yaml says what ran (layout, batch, precision resolved on its device);
the cpu profile's compute rate is the measured matmul ceiling (launch.mamf) the driver put
there, the emulated cluster's link its configured rate. A cpu run's compute is itemised over
kernel times measured at its own shapes (launch.mamf --host-shapes, cached): read from the
cache, or measured now (a few seconds) when the report runs on the host the run ran on. Where
the model has nothing to go on (a cpu run without a measured ceiling) the row says why
instead of guessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launch.errors import ConfigError
from train.spec.config import load_run_config


def predicted_for(run: dict[str, Any]) -> dict[str, Any] | None:
    """{step_time_s, compute_s, exposed_comm_s, measured_over_predicted}, {unavailable: why},
    or None for a summary without its run's config.yaml (copied out of its run dir)."""
    from launch.perfmodel.step import predict_run

    config = Path(run["run_dir"]) / "config.yaml"
    if not config.is_file():
        return None
    try:
        cfg = load_run_config(config)
        prediction = predict_run(
            cfg,
            run,
            precision=run["precision"]["resolved"],
            host=host_rates_for(cfg, run),
        )
    except ConfigError as exc:
        return {"unavailable": str(exc)}
    except Exception as exc:  # noqa: BLE001 - an old config the schema no longer reads
        return {"unavailable": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    measured = run["step_time_s"]["median"]
    return {
        "step_time_s": prediction.step_time_s,
        "compute_s": prediction.compute_s,
        "exposed_comm_s": prediction.exposed_comm_s,
        "measured_over_predicted": measured / prediction.step_time_s,
    }


def host_rates_for(cfg, run: dict[str, Any]):
    """The cpu profile's measured kernel times for this run's shapes, or None (a GPU run, an
    fp32-less ceiling, or a run from another host whose measurement is not cached here)."""
    from launch.bench import matmul_ceiling as mamf
    from launch.perfmodel.host import HostRates
    from launch.perfmodel.step import plan_for

    ceiling = cfg.gpu.measured_peak_tflops.fp32
    if cfg.gpu.name != "cpu" or not ceiling or run["precision"]["resolved"] != "fp32":
        return None
    threads = cfg.cluster.cpu_threads_per_rank
    tp = plan_for(cfg, run["world_size"], run["nproc_per_node"]).degrees.tp
    record = mamf.load_host(run.get("device_name") or "", threads)
    rates = HostRates.from_record(record, ceiling * 1e12) if record else None
    if rates is None or rates.missing(cfg.model, cfg.train.micro_batch, cfg.train.seq_len, tp):
        from train.runtime.distributed import cpu_model_name

        if cpu_model_name() != run.get("device_name"):
            return rates  # another host's run: the ceiling stands in for what is missing
        record = mamf.ensure_host(
            cfg.model, cfg.train.micro_batch, cfg.train.seq_len, sorted({1, tp}), threads
        )
        rates = HostRates.from_record(record, ceiling * 1e12)
    return rates


def predicted_section(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: measured step beside the predicted one, per run of a series."""
    lines = [
        "",
        "Measured beside predicted (launch/perfmodel/, docs/performance-model.md):",
        "",
        "| world size | measured step (s) | predicted step (s) | measured ÷ predicted "
        "| predicted compute (s) | predicted exposed comm (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        p = row.get("predicted") or {}
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
    return lines
