"""One command type for every launcher, and its only renderers.

A `NodeCommand` is what one node runs: an argv and the variables added to its environment.
It is rendered three ways, and only here, so one quoting path is tested:

- `shell_line()`: `K=v ... argv...`, a line to paste into a shell (dry runs, the docs);
- `export_lines()`: `export K=v` lines (the sbatch script);
- `dotenv()`: raw `K=v` lines (DeepSpeed's .deepspeed_env, which quotes values itself).

A value the shell must expand when the line runs (`$SLURM_JOB_ID`, `$head_node:29500`) is a
`ShellExpr`: rendered inside double quotes rather than single-quoted, and refused where no
shell runs (a local subprocess, a dotenv file).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path


class ShellExpr(str):
    """A value the shell expands when the rendered line runs; written in double quotes."""

    def quoted(self) -> str:
        # Our own expressions only (variables, a head node name): no `"`, `\` or backtick.
        if any(c in self for c in '"\\`'):
            raise ValueError(f"shell expression {self!r} holds a quote, backslash or backtick")
        return f'"{self}"'


def quote(value: str) -> str:
    """Shell-quote a literal value; leave a ShellExpr expandable."""
    return value.quoted() if isinstance(value, ShellExpr) else shlex.quote(value)


@dataclass(frozen=True)
class NodeCommand:
    """What one node runs: argv plus the variables added to its environment."""

    node_rank: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def shell_line(self) -> str:
        """A line a person can paste into a shell: quoted, so no value can break or inject."""
        assignments = [f"{k}={quote(v)}" for k, v in sorted(self.env.items())]
        return " ".join([*assignments, *(quote(a) for a in self.argv)])

    def argv_line(self) -> str:
        """The argv alone, quoted for a shell (a script sets the environment on its own)."""
        return " ".join(quote(a) for a in self.argv)

    def export_lines(self) -> list[str]:
        return [f"export {k}={quote(v)}" for k, v in sorted(self.env.items())]

    def dotenv(self) -> str:
        """`K=v` lines, values raw: for a reader that splits at the first `=` and quotes."""
        if any(isinstance(v, ShellExpr) for v in self.env.values()):
            raise ValueError("a dotenv file is read by no shell: it cannot hold a ShellExpr")
        return "".join(f"{k}={v}\n" for k, v in sorted(self.env.items()))

    def popen_env(self) -> dict[str, str]:
        """The full environment to start this command with here, without a shell."""
        if any(isinstance(a, ShellExpr) for a in [*self.argv, *self.env.values()]):
            raise ValueError("this command needs a shell to expand its values; run it in one")
        return {**os.environ, **self.env}


def executable_beside_python(name: str) -> str:
    """`name` from this interpreter's environment, so a pasted command uses the same install.

    The bare name when PATH already finds that same file (shorter lines); the full path when
    PATH would find another one; the bare name when there is none beside the interpreter.
    """
    beside_python = Path(sys.executable).parent / name
    on_path = shutil.which(name)
    if on_path and beside_python.exists() and Path(on_path).resolve() == beside_python.resolve():
        return name
    return str(beside_python) if beside_python.exists() else name
