"""The report's "Where the time went" section: per world size, compute / exposed comm / other
from each measurement that ran (trace, twin, HTA), and a label with the rule that decided it.

Input: the summary.json dicts of a sweep (their ``breakdown`` key,
train/measure/trace_events.py).
A run without a usable breakdown says "breakdown unavailable (why)", never a made-up share.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

# Exposed comm at or above this share of the step: interconnect-bound (the same threshold as
# project.interconnect_bound_share, so the projection and the measurement label alike).
INTERCONNECT_BOUND_SHARE = 0.30
# Contention (twin step − the 1-rank step, per-rank work equalised) at or above this share of
# the step: contention-bound (shared memory bandwidth, cores), when not interconnect-bound.
CONTENTION_BOUND_SHARE = 0.20
# The trace and twin methods agree when their exposed comm differs by at most this fraction
# of the larger of the two.
AGREEMENT = 0.25
METHODS = ("trace", "hta", "twin")


class Unavailable(Exception):
    """A breakdown that cannot be read: the report shows the reason instead of shares."""


def _number(method: dict, key: str) -> float:
    value = method.get(key)
    if not isinstance(value, int | float) or value != value or value < 0:
        raise Unavailable(f"{key} is {value!r}")
    return float(value)


def method_shares(name: str, method: Any) -> dict:
    """compute / exposed comm / other shares of the step from one method's dict.

    trace and hta split the step three ways; the twin only knows exposed comm, the rest of
    its step (compute, idle) is one part, ``not_split``.
    """
    if not isinstance(method, dict):
        raise Unavailable(f"{name} breakdown is not a mapping")
    if method.get("unavailable"):
        raise Unavailable(str(method["unavailable"]))
    step = _number(method, "step_s")
    if step <= 0:
        raise Unavailable("step_s is 0")
    exposed = _number(method, "exposed_comm_s")
    if name == "twin":
        return {
            "step_s": step,
            "exposed_comm_s": exposed,
            "compute": None,
            "exposed": exposed / step,
            "other": None,
            "not_split": max(0.0, 1 - exposed / step),
            "twin_step_s": _number(method, "twin_step_s"),
        }
    compute = _number(method, "compute_s")
    if compute + exposed > step * 1.05:
        raise Unavailable(f"compute + exposed comm exceed the step ({compute + exposed:.4g} s)")
    return {
        "step_s": step,
        "exposed_comm_s": exposed,
        "compute": compute / step,
        "exposed": exposed / step,
        "other": max(0.0, 1 - (compute + exposed) / step),
        "not_split": None,
    }


def _per_rank_work(run: dict) -> float:
    return run["tokens_per_step"] / run["world_size"]


def breakdown_rows(runs: list[dict]) -> list[dict]:
    """One row per run and method (sorted by series, world size), with its label."""
    rows = []
    by_series: dict[str, list[dict]] = {}
    for run in runs:
        by_series.setdefault(run.get("series", ""), []).append(run)
    for series, members in by_series.items():
        members = sorted(members, key=lambda r: r["world_size"])
        one_rank = next((r for r in members if r["world_size"] == 1), None)
        for run in members:
            rows += _run_rows(series, run, one_rank)
    return rows


def _run_rows(series: str, run: dict, one_rank: dict | None) -> list[dict]:
    base = {"series": series, "world_size": run["world_size"], "run": run.get("run_name")}
    breakdown = run.get("breakdown")
    if not breakdown:
        return [{**base, "method": None, "unavailable": "not profiled (profile.enabled=false)"}]
    if not isinstance(breakdown, dict):
        return [{**base, "method": None, "unavailable": "breakdown is not a mapping"}]
    rows = []
    for name in METHODS:
        if name not in breakdown:
            continue
        try:
            rows.append({**base, "method": name, **method_shares(name, breakdown[name])})
        except Unavailable as exc:
            rows.append({**base, "method": name, "unavailable": str(exc)})
    contention = _contention(run, one_rank, rows)
    label, rule = _label(rows, contention)
    agree = _agreement(rows)
    for row in rows:
        row.update(label=label, rule=rule, contention=contention, agree=agree)
    return rows


def _contention(run: dict, one_rank: dict | None, rows: list[dict]) -> float | None:
    """(twin step − the 1-rank step scaled to this run's work per rank) / timed step."""
    twin = next((r for r in rows if r["method"] == "twin" and "unavailable" not in r), None)
    if twin is None or one_rank is None or run["world_size"] == 1:
        return None
    try:
        scaled = one_rank["step_time_s"]["median"] * _per_rank_work(run) / _per_rank_work(one_rank)
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return (twin["twin_step_s"] - scaled) / twin["step_s"]


def _label(rows: list[dict], contention: float | None) -> tuple[str | None, str]:
    usable = [r for r in rows if "unavailable" not in r]
    if not usable:
        why = "; ".join(f"{r['method']}: {r['unavailable']}" for r in rows) or "no method ran"
        return None, f"breakdown unavailable ({why})"
    # The trace (or HTA) sees the comm directly; the twin is the fallback.
    first = min(usable, key=lambda r: METHODS.index(r["method"]))
    exposed = first["exposed"]
    said = f"exposed comm {100 * exposed:.0f}% of the step ({first['method']})"
    if exposed >= INTERCONNECT_BOUND_SHARE:
        return "interconnect-bound", f"{said} ≥ {100 * INTERCONNECT_BOUND_SHARE:.0f}%"
    rule = f"{said} < {100 * INTERCONNECT_BOUND_SHARE:.0f}%"
    if contention is not None and contention >= CONTENTION_BOUND_SHARE:
        return "contention-bound", (
            f"{rule}; twin step − 1-rank step {100 * contention:.0f}% of the step "
            f"≥ {100 * CONTENTION_BOUND_SHARE:.0f}%"
        )
    if contention is not None:
        rule += (
            f"; twin step − 1-rank step {100 * contention:.0f}% < "
            f"{100 * CONTENTION_BOUND_SHARE:.0f}%"
        )
    return "compute-bound", rule


def _agreement(rows: list[dict]) -> bool | None:
    got = {r["method"]: r for r in rows if "unavailable" not in r}
    if "twin" not in got or not ({"trace", "hta"} & set(got)):
        return None
    direct = got.get("trace") or got["hta"]
    a, b = direct["exposed_comm_s"], got["twin"]["exposed_comm_s"]
    return abs(a - b) <= AGREEMENT * max(a, b) if max(a, b) > 0 else True


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def where_the_time_went(runs: list[dict]) -> list[str]:
    """Markdown lines of the "Where the time went" section."""
    rows = breakdown_rows(runs)
    lines = ["## Where the time went", ""]
    if not rows:
        return lines + ["No runs.", ""]
    lines += [
        "| series | world size | method | step (s) | compute | exposed comm | other "
        "| exposed comm (s) | methods agree | label | rule |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        head = f"| {row['series']} | {row['world_size']} | {row['method'] or '–'} "
        if "unavailable" in row:
            lines.append(
                head + f"| breakdown unavailable ({row['unavailable']}) | | | | | | "
                f"{row.get('label') or '–'} | {row.get('rule', '')} |"
            )
            continue
        other = row["other"] if row["method"] != "twin" else None
        compute = (
            _pct(row["compute"])
            if row["method"] != "twin"
            else f"{_pct(row['not_split'])} (compute + other, not split)"
        )
        agree = {None: "–", True: "yes", False: "no"}[row["agree"]]
        lines.append(
            head + f"| {row['step_s']:.4f} | {compute} | {_pct(row['exposed'])} | {_pct(other)} "
            f"| {row['exposed_comm_s']:.4f} | {agree} | {row['label']} | {row['rule']} |"
        )
    lines += [
        "",
        "trace: interval arithmetic over the profiled steps' torch.profiler events "
        "(train/measure/trace_events.py; profiled steps run after the timed ones and run "
        "slower under the profiler, so shares are of the profiled step); hta: Holistic Trace "
        "Analysis on GPU traces; twin: a synchronised step minus a step with gradient sync "
        "skipped, run in alternating pairs after the timed steps (no-sync twin: trains nothing "
        "useful, not a timed figure; its step is not split into compute and other).",
        f"Label: interconnect-bound when exposed comm ≥ {100 * INTERCONNECT_BOUND_SHARE:.0f}% "
        "of the step (trace, else HTA, else twin); otherwise contention-bound when the twin "
        "step exceeds the 1-rank step (scaled to the same work per rank) by "
        f"≥ {100 * CONTENTION_BOUND_SHARE:.0f}% of the step (only where a 1-rank run of the "
        "series exists); otherwise compute-bound. Methods agree when their exposed comm "
        f"differs by ≤ {100 * AGREEMENT:.0f}% of the larger.",
        "",
    ]
    return lines


def plot_breakdown(rows: list[dict], path: str | Path) -> Path | None:
    """Stacked bars per world size (one per method): compute / exposed comm / other, one panel
    per series. Nothing is drawn for a run without a usable breakdown; None when no bar is
    left."""
    # Imported here: matplotlib takes a second to import and only the plots need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    bars = [r for r in rows if r.get("method") and "unavailable" not in r]
    if not bars:
        return None
    series = list(dict.fromkeys(r["series"] for r in bars))
    fig = Figure(figsize=(max(6, 1.1 * len(bars) + 3.5), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(series), sharey=True, squeeze=False)[0]
    drawn: set[str] = set()

    def part(ax, x, bottom, height, color, name, hatch=None):
        ax.bar(
            x,
            100 * height,
            bottom=100 * bottom,
            color=color,
            hatch=hatch,
            label=None if name in drawn else name,
        )
        drawn.add(name)

    for ax, label in zip(axes, series, strict=True):
        mine = [r for r in bars if r["series"] == label]
        for x, row in enumerate(mine):
            if row["method"] == "twin":
                part(ax, x, 0, row["not_split"], "#9ecae1", "compute + other (twin)", "//")
                part(ax, x, row["not_split"], row["exposed"], "#d62728", "exposed comm")
            else:
                part(ax, x, 0, row["compute"], "#1f77b4", "compute")
                part(ax, x, row["compute"], row["exposed"], "#d62728", "exposed comm")
                top = row["compute"] + row["exposed"]
                part(ax, x, top, row["other"], "#bdbdbd", "other (idle)")
        ticks = [f"N={r['world_size']}\n{r['method']}" for r in mine]
        ax.set_xticks(range(len(mine)), ticks, fontsize="small")
        ax.set_title(textwrap.fill(label or "runs", 28), fontsize="small")
        ax.set_ylim(0, 105)
    axes[0].set_ylabel("share of the step (%)")
    fig.suptitle("Where the time went")
    fig.legend(fontsize="small", loc="outside right upper")
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path
