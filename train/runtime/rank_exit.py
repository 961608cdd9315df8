"""How a rank process ends on input it cannot run or a disk it cannot write: one line.

A rank that rechecks the driver's rules (train/spec/rules.py), finds a checkpoint of another
shape, or meets a full disk prints ``error: ...`` once and exits with the code the driver
uses for the same error (2: the config; 1: a full disk), instead of a traceback per rank. The
driver shows the failing rank's lines (launch/launchers/local.py), so that line is what the
user reads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from train.files.safe_files import DiskFull, is_disk_full
from train.spec.config_error import ConfigError


def run_or_exit(entry: Callable[[], object]) -> None:
    try:
        entry()
    except (ConfigError, DiskFull) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        # Written by a library (a checkpoint shard, a trace): its path, and the one line.
        print(f"error: {DiskFull(exc.filename or '?')}", file=sys.stderr, flush=True)
        sys.exit(DiskFull.exit_code)
