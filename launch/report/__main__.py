"""``python -m launch.report DIR [DIR ...] [--out OUT]`` (launch/report/cli.py)."""

from launch.report.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
