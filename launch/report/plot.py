"""scaling.png: efficiency and throughput against world size, node boundaries marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_scaling(rows: list[dict[str, Any]], path: Path) -> None:
    # Imported here so the launcher, which imports this module, starts without matplotlib.
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    fig = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_eff, ax_tps = fig.subplots(1, 2)
    sizes = sorted({r["world_size"] for r in rows})
    log_x = len(sizes) > 2
    cycle = [c["color"] for c in rcParams["axes.prop_cycle"]]

    boundaries: list[tuple[int, str]] = []
    for i, label in enumerate(dict.fromkeys(r["series"] for r in rows)):
        color = cycle[i % len(cycle)]
        series = [r for r in rows if r["series"] == label]
        xs = [r["world_size"] for r in series]
        ax_eff.plot(
            xs,
            [100 * (r["scaling_efficiency"] or 0) for r in series],
            "o-",
            color=color,
            label=label,
        )
        ax_tps.plot(xs, [r["tokens_per_s"] for r in series], "o-", color=color, label=label)
        base = series[0]
        ax_tps.plot(
            xs,
            [base["tokens_per_s"] * x / base["world_size"] for x in xs],
            "--",
            color=color,
            alpha=0.5,
            linewidth=1,
        )
        boundaries += [(r["world_size"], color) for r in series if r["crosses_node_boundary"]]

    # Drawn after the series so the legend lists the curves first.
    for i, (size, color) in enumerate(boundaries):
        for ax in (ax_eff, ax_tps):
            ax.axvline(
                size,
                linestyle=":",
                color=color,
                linewidth=1.5,
                label=None if i else "first multi-node size",
            )
    ax_eff.axhline(100, linestyle="--", color="grey", linewidth=1, label="ideal (100%)")
    ax_eff.set(
        title="Scaling efficiency", xlabel="devices (world size)", ylabel="efficiency vs. base (%)"
    )
    top = max([100] + [100 * (r["scaling_efficiency"] or 0) for r in rows])
    ax_eff.set_ylim(0, top * 1.1)
    ax_tps.set(
        title="Throughput (dashed: ideal linear from base)",
        xlabel="devices (world size)",
        ylabel="tokens/s",
    )
    for ax in (ax_eff, ax_tps):
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(True, alpha=0.3)
        ax.margins(x=0.08)  # keep an end-of-sweep boundary line off the frame
    if log_x:
        # Log-log keeps the ideal line straight, so a sag away from it reads at a glance.
        ax_tps.set_yscale("log")
    ax_eff.legend(fontsize="small", loc="lower left")
    ax_tps.legend(fontsize="small", loc="upper left")
    fig.savefig(path, dpi=120)
