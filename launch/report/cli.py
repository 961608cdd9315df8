"""``python -m launch.report DIR [DIR ...] [--out OUT]``: the scaling report of one or more sweeps.

Reads the ``summary.json`` rank 0 wrote for each run, groups runs into series (same hardware,
model, parallelism and precision) and writes ``report.md``, ``results.json`` and
``scaling.png`` with the scaling efficiency of every world size against the series' smallest.
"""

from __future__ import annotations

import sys
from pathlib import Path

from launch.errors import DiskFull, OneLineArgumentParser, ReportError
from launch.report.console import print_table
from launch.report.load import load_runs
from launch.report.scaling import scaling_rows
from launch.report.write import failed_in, write_files
from launch.terminal import plain_console
from train.files.safe_files import unwritable_reason


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m launch.report", description=__doc__)
    parser.add_argument(
        "dirs",
        nargs="+",
        type=Path,
        metavar="DIR",
        help="sweep dir (one sub-dir per run) or run dir (with summary.json)",
    )
    parser.add_argument(
        "--out", help="where to write the report; defaults to DIR when only one is given"
    )
    args = parser.parse_args(argv)
    if args.out is None and len(args.dirs) > 1:
        print("error: --out is required when several dirs are given", file=sys.stderr)
        return 2
    file = next((d for d in args.dirs if d.is_file()), None)
    if file is not None:  # it was blamed on --out, which defaults to it
        print(f"error: DIR: {file} is a file; give its run or sweep dir", file=sys.stderr)
        return 2
    if args.out is not None and not args.out.strip():  # Path("") wrote into the cwd
        print("error: --out: is empty; give a directory", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out is not None else args.dirs[0]
    unwritable = unwritable_reason(out)
    if unwritable:
        print(f"error: --out: {unwritable}; give a directory", file=sys.stderr)
        return 2
    try:
        runs = load_runs(args.dirs)
        rows = scaling_rows(runs)
        failed = failed_in(args.dirs)
        paths = write_files(runs, rows, out, failed)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DiskFull as exc:  # the previous report, if any, is left whole
        print(f"error: {exc}", file=sys.stderr)
        return 1
    console = plain_console()
    print_table(rows, console)
    # soft_wrap: a path broken across lines cannot be copied.
    console.print("report: " + ", ".join(str(p) for p in paths.values()), soft_wrap=True)
    if failed:
        # A sweep with a hole is not a clean result: say which points, and exit 1.
        names = ", ".join(f"{p.get('name')} ({p.get('error') or 'failed'})" for p in failed)
        print(f"error: {len(failed)} point(s) without a summary: {names}", file=sys.stderr)
        return 1
    return 0
