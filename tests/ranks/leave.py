"""How a rank helper's process ends: its own exit code, without the C++ teardown.

A gloo process group's threads can abort a process at interpreter exit, after every result is
written ("terminate called without an active exception": a 4-rank torchrun of
tests/integration/test_expert_parallel.py, once in about 12 runs on 2-core hosts under load;
the FSDP2 copy probe once in CI). The helpers have destroyed their process groups by then, so
the static destructors have nothing left to do: the process leaves with os._exit.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


def leave_after(main: Callable[[], object]) -> NoReturn:
    """Run ``main``; exit as Python would have: 0 when it returns, SystemExit's code (None:
    0; a message: printed, 1), 1 with the traceback on any other exception (which torchrun
    then reports as the rank's failure)."""
    code = 0
    try:
        main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - printed, then the process's exit code says it
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
