"""Named ranges in a profiler trace (step, forward, backward, optimizer, pipeline).

The step takes its marks as an argument: the timed steps get ``no_marks`` and so pay nothing
for the profiler, the profiled window (train/measure/profiling.py) hands the same step
``record_function``. Nothing global decides it, so a mark cannot leak into a timed step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager

from torch.profiler import record_function

# A name -> the context that marks it in the trace (or does nothing).
Marks = Callable[[str], AbstractContextManager]


def no_marks(name: str) -> AbstractContextManager:
    """What the timed steps use: no range, no profiler call."""
    return contextlib.nullcontext()


def trace_marks(name: str) -> AbstractContextManager:
    """What the profiled window uses: a ``record_function`` range the trace shows by name."""
    return record_function(name)
