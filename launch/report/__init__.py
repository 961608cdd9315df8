"""The scaling report: load summaries -> scaling rows -> markdown, JSON, plots, console.

load.py      summary.json of every run, each labelled with its series
scaling.py   efficiency per world size against the series' base
markdown.py  report.md          plot.py   scaling.png        console.py  rich tables
predicted.py the performance model's step beside each measured one (reads, never measures)
breakdown.py "Where the time went"     write.py  all files of one report
cli.py       `python -m launch.report DIR...`
projected.py the projection's files and table (`python -m launch.project`)
"""

from launch.errors import ReportError
from launch.report.cli import main
from launch.report.console import print_table
from launch.report.load import load_runs
from launch.report.scaling import scaling_rows
from launch.report.write import failed_in, write_files, write_report

__all__ = [
    "ReportError",
    "failed_in",
    "load_runs",
    "main",
    "print_table",
    "scaling_rows",
    "write_files",
    "write_report",
]
