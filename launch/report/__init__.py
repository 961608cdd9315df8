"""The scaling report: load summaries -> scaling rows -> markdown, JSON, plots, console.

load.py      summary.json of every run, each labelled with its series
scaling.py   efficiency per world size against the series' base
markdown.py  report.md          plot.py   scaling.png        console.py  rich tables
write.py     all files of one report;  cli.py  `python -m launch.report DIR...`
"""

from launch.errors import ReportError
from launch.report.cli import main
from launch.report.console import print_table
from launch.report.load import load_runs
from launch.report.scaling import scaling_rows
from launch.report.write import write_report

__all__ = ["ReportError", "load_runs", "main", "print_table", "scaling_rows", "write_report"]
