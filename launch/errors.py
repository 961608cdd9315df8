"""The errors the driver raises on purpose: each is one line on stderr and an exit code.

Every command (`launch`, `launch.comm`, `launch.project`, `launch.report`) prints them in one
place (launch/app.py, or the report's own main), so no command shows a traceback for input
the user can fix or for a run that failed for a reason already reported.
"""

from __future__ import annotations

import argparse
import signal

from train.files.safe_files import DiskFull
from train.spec.config_error import EXIT_CONFIG_ERROR, ConfigError

EXIT_RUN_FAILED = 1
# Bad input (train/spec/config_error.py ConfigError, raised by the driver and the ranks alike) and
# every LaunchError: what a command prints as one line and exits with.
# A full disk (train/files/safe_files.py DiskFull) is one line and exit 1 as well.
__all__ = [
    "ConfigError",
    "DiskFull",
    "LaunchError",
    "OneLineArgumentParser",
    "ReportError",
    "RunFailed",
    "Stopped",
    "USER_ERRORS",
]


class LaunchError(Exception):
    """Base: a message meant for the user and the exit code the command ends with."""

    exit_code: int = EXIT_RUN_FAILED


class RunFailed(LaunchError):
    """A run started and failed; the message carries the failing node's last log lines, and
    where the launcher named it, the rank that failed first, its exit code and the signal
    that ended it (launch/launchers/root_cause.py)."""

    exit_code = EXIT_RUN_FAILED

    def __init__(
        self,
        message: str,
        *,
        returncode: int | None = None,
        log_tail: str = "",
        rank: int | None = None,
        rank_exit_code: int | None = None,
        signal: str | None = None,
    ):
        super().__init__(message)
        self.returncode, self.log_tail = returncode, log_tail
        self.rank, self.rank_exit_code, self.signal = rank, rank_exit_code, signal


class Stopped(BaseException):
    """SIGTERM or SIGHUP: raised where the driver was, so every cleanup runs on the way out
    (a BaseException, like KeyboardInterrupt, so no `except Exception` swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class ReportError(LaunchError):
    """Input the report cannot use (a missing dir, an unreadable or older summary)."""

    exit_code = EXIT_CONFIG_ERROR


USER_ERRORS = (LaunchError, ConfigError, DiskFull)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with the project's form for bad input: one line, exit 2 (argparse's own
    error prints its usage first). For the commands that are not Hydra apps (launch.report,
    launch.mamf)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n")
