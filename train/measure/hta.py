"""summary.json's ``breakdown.hta``: Holistic Trace Analysis' breakdown of the GPU traces
(optional: ``pip install HolisticTraceAnalysis``).

Rank 0 runs it after training, so whatever HTA does is recorded, never raised: a missing
package, a trace HTA cannot parse or a column renamed between its releases becomes
``unavailable`` with the reason (an exception here would lose summary.json while the other
ranks wait in the final barrier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.measure.step_parts import median_breakdown, shares


def hta_breakdown(trace_dir: str | Path, profiled_steps: int) -> dict:
    """HTA's temporal breakdown and comm/comp overlap, per rank, divided over the profiled
    steps; the headline is the rank with the median exposed comm."""
    try:
        # Deferred: an optional dependency (pandas, plotly) that only GPU runs use.
        from hta.trace_analysis import TraceAnalysis
    except ImportError:
        return _unavailable("holistictraceanalysis is not installed")
    except Exception as exc:  # an install broken against this pandas/plotly: still no crash
        return _unavailable(f"HTA failed to import: {type(exc).__name__}: {exc}")
    try:
        ranks = _rank_seconds(TraceAnalysis(trace_dir=str(trace_dir)), profiled_steps)
    except Exception as exc:  # HTA raises bare Exceptions on traces it cannot parse
        return _unavailable(f"HTA failed: {type(exc).__name__}: {exc}")
    if not ranks:
        return _unavailable("HTA found no GPU kernels")
    return {
        "method": "hta",
        "how": "HTA temporal breakdown and comm/comp overlap over the whole profiled window",
        **median_breakdown(list(ranks.values())),
        "ranks": ranks,
    }


def _unavailable(reason: str) -> dict:
    return {"method": "hta", "unavailable": reason}


def _rank_seconds(analysis: Any, profiled_steps: int) -> dict[str, dict]:
    """Per rank, seconds of each part of an average profiled step. Every HTA call and every
    read of its output is in here, inside the caller's ``try``."""
    temporal = analysis.get_temporal_breakdown(visualize=False).to_dict("records")
    overlap = analysis.get_comm_comp_overlap(visualize=False).to_dict("records")
    # (kernel types over all ranks, kernels per rank): the second has a rank column.
    kernels = analysis.get_gpu_kernel_breakdown(visualize=False)[1].to_dict("records")
    hidden = {int(r["rank"]): float(r["comp_comm_overlap_pctg"]) / 100 for r in overlap}
    per_step = 1e6 * profiled_steps  # HTA's figures are microseconds over the whole window
    ranks = {}
    for row in temporal:
        rank = int(row["rank"])
        comm_us = sum(
            _microseconds(k, "sum")
            for k in kernels
            if int(k["rank"]) == rank and k["kernel_type"] == "COMMUNICATION"
        )
        seconds = {
            "step_s": _microseconds(row, "kernel_time") / per_step,
            "compute_s": _microseconds(row, "compute_time") / per_step,
            "comm_s": comm_us / per_step,
            "overlapped_comm_s": comm_us * hidden[rank] / per_step,
            "exposed_comm_s": comm_us * (1 - hidden[rank]) / per_step,
            "idle_s": _microseconds(row, "idle_time") / per_step,
        }
        ranks[str(rank)] = {**seconds, **shares(seconds)}
    return ranks


def _microseconds(row: dict, name: str) -> float:
    """A time column of an HTA table. HTA 0.5.0 names them with their unit ("sum (us)",
    "kernel_time(us)"); earlier releases wrote "sum" bare: either is read."""
    for key in (f"{name} (us)", f"{name}(us)", name):
        if key in row:
            return float(row[key])
    raise KeyError(f"no {name!r} column in HTA's table (it has: {', '.join(map(str, row))})")
