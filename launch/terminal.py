"""The driver's console: what it prints is plain text, styled only where a line says so.

Rich reads "[...]" in a printed string as markup, and a tag it cannot style is dropped: a run
dir named "[exp a]", a multirun's "[seq 32, ...]" label or a rank's "[rank0]:" line would be
cut without a word. So every console the driver makes has markup off, which also covers the
cells and titles of the tables it prints (rich renders a str cell with its console's markup
setting), and the few styled words are given their style as Text.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text


def plain_console(**options: Any) -> Console:
    """A rich Console (``options`` as rich takes them) that prints strings as they are."""
    return Console(markup=False, **options)


def warning(message: str) -> Text:
    """``warning: message``, the word in yellow, the message as it is."""
    return Text.assemble(("warning:", "yellow"), " ", message)


def heading(words: str, rest: str = "") -> Text:
    """``words`` in bold, then ``rest`` as it is."""
    return Text.assemble((words, "bold"), rest)
