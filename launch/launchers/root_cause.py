"""Which rank a failed run's launcher blames, read from its log: torchrun's "Root Cause (first
observed failure)" block, or DeepSpeed's "exits with return code = N" line.

Other ranks' tracebacks are often consequences (a peer killed by the OOM killer makes every
survivor raise gloo's "Connection closed by peer"), so the first traceback in the log is not
the cause; the launcher saw which process ended first, and how.
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from pathlib import Path

ROOT_CAUSE = "Root Cause (first observed failure):"
# torchrun's ChildFailedError fields (torch/distributed/elastic/multiprocessing/errors):
# "  rank      : 1 (local_rank: 1)", "  exitcode  : -9 (pid: 9531)  (SIGKILL)".
FIELD = re.compile(r"^  (\w+)\s*: ?(.*)$")
RANK = re.compile(r"^(\d+) \(local_rank: (\d+)\)")
EXITCODE = re.compile(r"^(-?\d+)")
# DeepSpeed's launcher (deepspeed/launcher/launch.py) names neither the rank nor its pid.
DEEPSPEED_EXIT = re.compile(r"exits with return code = (-?\d+)")
NOT_AVAILABLE = "<N/A>"


@dataclass(frozen=True)
class RootCause:
    """The process the launcher saw fail first: its rank (None where the launcher does not
    say), its exit code (negative: the signal that ended it), its error file and traceback."""

    rank: int | None
    exitcode: int
    local_rank: int | None = None
    error_file: str | None = None
    traceback: tuple[str, ...] = ()

    @property
    def signal_name(self) -> str | None:
        if self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return f"signal {-self.exitcode}"

    def killed_line(self) -> str:
        """One plain sentence for a rank ended by a signal (no traceback exists for it)."""
        who = f"rank {self.rank}" if self.rank is not None else "a rank"
        why = (
            "out of memory (check dmesg) or killed from outside"
            if self.exitcode == -signal.SIGKILL
            else "killed from outside or crashed"
        )
        return f"{who} was killed by {self.signal_name} (signal {-self.exitcode}): {why}"


def root_cause(lines: list[str]) -> RootCause | None:
    """The last Root Cause block of torchrun's footer in ``lines``, or DeepSpeed's exit line;
    None when the log has neither (the launcher is still running, or it failed itself)."""
    starts = [i for i, line in enumerate(lines) if line.strip() == ROOT_CAUSE]
    if starts:
        return _torchrun_block(lines[starts[-1] + 1 :])
    for line in reversed(lines):
        match = DEEPSPEED_EXIT.search(line)
        if match:
            return RootCause(rank=None, exitcode=int(match.group(1)))
    return None


def _torchrun_block(lines: list[str]) -> RootCause | None:
    fields: dict[str, str] = {}
    traceback: list[str] = []
    for line in lines[1:]:  # lines[0] is the failure's index, "[0]:"
        if line.startswith("==="):  # the footer's closing border
            break
        match = FIELD.match(line)
        if match and not traceback:
            fields[match.group(1)] = match.group(2).strip()
            if match.group(1) == "traceback":
                traceback.append(match.group(2))
        elif traceback:
            # The traceback field goes on over several lines, indented by two spaces.
            traceback.append(line[2:] if line.startswith("  ") else line)
    if traceback and traceback[0].startswith("To enable traceback"):
        traceback = []  # torchrun's placeholder where the rank wrote no error file
    rank, code = RANK.match(fields.get("rank", "")), EXITCODE.match(fields.get("exitcode", ""))
    if not code:
        return None
    error_file = fields.get("error_file")
    return RootCause(
        rank=int(rank.group(1)) if rank else None,
        exitcode=int(code.group(1)),
        local_rank=int(rank.group(2)) if rank else None,
        error_file=error_file if error_file and error_file != NOT_AVAILABLE else None,
        traceback=tuple(traceback),
    )


def error_file_traceback(cause: RootCause, run_dir: Path) -> list[str]:
    """The traceback the failing rank's @record wrapper wrote to its error.json: the file the
    block names, else the newest one of its local rank under the run's torchelastic/ folder
    (launch/launchers/torchrun.py torchelastic_log_dir); [] when there is none."""
    candidates = [Path(cause.error_file)] if cause.error_file else []
    if cause.local_rank is not None:
        found = (run_dir / "torchelastic").glob(f"*/attempt_*/{cause.local_rank}/error.json")
        candidates += sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    for path in candidates:
        try:
            message = json.loads(path.read_text()).get("message")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(message, dict):
            stack = (message.get("extraInfo") or {}).get("py_callstack") or message.get("message")
        else:
            stack = message
        if isinstance(stack, str) and stack.strip():
            return stack.rstrip("\n").splitlines()
    return []
