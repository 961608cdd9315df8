"""tests/ranks/leave.py: a rank helper leaves without the C++ teardown, yet its exit code and
output still say what happened (torchrun and the integration tests read both)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

CASES = {
    "returns": ("print('done')", 0, "done"),
    "exits 2": ("print('refused'); raise SystemExit(2)", 2, "refused"),
    "raises": ("raise ValueError('a rank failed')", 1, "ValueError: a rank failed"),
    "sys.exit()": ("print('bare'); raise SystemExit", 0, "bare"),
    "exits with a message": ("raise SystemExit('stopped: why')", 1, "stopped: why"),
}


@pytest.mark.parametrize("name", CASES)
def test_the_exit_code_and_output_survive_os_exit(name):
    body, code, shown = CASES[name]
    script = "from tests.ranks.leave import leave_after\n"
    script += f"def main():\n    {body}\nleave_after(main)\n"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == code
    assert shown in result.stdout + result.stderr
