"""The scaling table on the console (rich), one per series."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from launch.report.markdown import layout_cells, pct
from launch.terminal import plain_console


def print_table(rows: list[dict[str, Any]], console: Console | None = None) -> None:
    """One rich table per series: a shared table's series column would wrap at 80 columns."""
    console = console or plain_console()
    for label in dict.fromkeys(r["series"] for r in rows):
        series = [r for r in rows if r["series"] == label]
        caption = (
            "† first world size across a node boundary"
            if any(r["crosses_node_boundary"] for r in series)
            else None
        )
        # On the driver's plain console (launch/terminal.py) a label's "[seq 32, ...]" (load.py:
        # what tells two workloads of one series apart) stays in the title.
        table = Table(title=label, caption=caption)
        for name in (
            "world size",
            "nodes",
            "tokens/s",
            "tok/s/device",
            "step (s)",
            "MFU",
            "efficiency",
        ):
            table.add_column(name, justify="right")
        for row in series:
            size = str(row["world_size"]) + (" †" if row["crosses_node_boundary"] else "")
            table.add_row(
                size,
                str(row["nodes"]),
                f"{row['tokens_per_s']:,.0f}",
                f"{row['tokens_per_s_per_device']:,.0f}",
                f"{row['step_time_median_s']:.3f}",
                pct(row["mfu"]),
                pct(row["scaling_efficiency"]),
            )
        console.print(table)
        for row in series:
            if row.get("mfu_warning"):
                console.print(
                    f"warning: world size {row['world_size']}: {row['mfu_warning']}",
                    highlight=False,
                    soft_wrap=True,
                )
        if any(row.get("memory") for row in series):
            # A second table: the first already fills 80 columns.
            layout = Table(title=f"{label}: per rank")
            for name in ("world size", "params", "grads", "optimizer", "peak mem", "comm/step"):
                layout.add_column(name, justify="right")
            for row in series:
                layout.add_row(str(row["world_size"]), *layout_cells(row))
            console.print(layout)
