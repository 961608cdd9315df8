"""Files the driver and rank 0 write: whole or not at all, and a full disk said in one line.

- ``write_atomic``: a temp file in the same dir, fsync, rename over the target. A full disk,
  a signal or a crash mid-write leaves the previous file (or none), never a cut-short one.
- ``append_line``: one JSONL line, or nothing (a line cut short by a full disk is cut off).
- ``staged``: several files that belong together (a report: report.md, results.json, plots)
  rendered into a staging dir and renamed into place together, with SIGINT/SIGTERM/SIGHUP
  held back during the renames: a report is replaced as a whole or not at all.
- ``DiskFull`` (ENOSPC, EDQUOT): names the path and the bytes it needed; the driver and the
  ranks print it as one line and exit 1.

Low-level ``os`` calls on purpose (os.open, os.write, os.fsync, os.replace): one place that a
test can make fail.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
STAGING_PREFIX = ".staging-"
# Signals that would stop the driver between two renames of a staged set.
HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class DiskFull(OSError):
    """No space (or quota) left where a file was being written; nothing half-written stays."""

    exit_code = 1  # a run that could not be recorded failed (launch/errors.py)

    def __init__(self, path: Path | str, needed: int | None = None):
        self.path, self.needed = Path(path), needed
        super().__init__(errno.ENOSPC, self._message())

    def _message(self) -> str:
        free = _free_bytes(self.path)
        need = f"{_size(self.needed)} needed" if self.needed is not None else "space needed"
        there = f", {_size(free)} free there" if free is not None else ""
        return f"no space left on device writing {self.path} ({need}{there})"

    def __str__(self) -> str:
        return self._message()


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _free_bytes(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_atomic(path: Path | str, data: str | bytes, *, durable: bool = True) -> Path:
    """Replace ``path`` by ``data`` as one step: readers see the old file or the new one.
    ``durable``: on disk (fsync) before the rename, so a crash cannot leave an empty file
    where the old one was; off for files rewritten every second (heartbeats)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, raw)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException as exc:  # a signal too: no partial file stays behind
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if is_disk_full(exc):
            raise DiskFull(path, len(raw)) from None
        raise
    return path


def append_line(path: Path | str, line: str) -> None:
    """Append one line (a newline is added); a full disk cuts back to the last whole line."""
    path = Path(path)
    raw = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            _write_all(fd, raw)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            if is_disk_full(exc):
                raise DiskFull(path, len(raw)) from None
            raise
    finally:
        os.close(fd)


def make_dirs(path: Path | str) -> Path:
    """mkdir -p, with a full disk as DiskFull."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(path, 0) from None
        raise
    return path


@contextlib.contextmanager
def staged(out_dir: Path | str, *, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """A staging dir inside ``out_dir``: write every file of the set there under its final
    name; when the block ends they replace the old ones together, and each name in
    ``replaces`` that the new set lacks is removed (a plot the new report no longer has).
    An error or a signal inside the block leaves ``out_dir`` as it was."""
    out_dir = make_dirs(out_dir)
    _remove_abandoned_stages(out_dir)
    stage = make_dirs(out_dir / f"{STAGING_PREFIX}{os.getpid()}")
    try:
        try:
            yield stage
            for item in stage.iterdir():
                _fsync_file(item)
        except OSError as exc:
            if is_disk_full(exc):
                where = out_dir / Path(exc.filename).name if exc.filename else out_dir
                raise DiskFull(where, None) from None
            raise
        _commit(stage, out_dir, replaces)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _remove_abandoned_stages(out_dir: Path) -> None:
    """Staging dirs of writers that died before they committed (SIGKILL, or SIGTERM where it
    kills at once), and this process's own from an earlier failed call."""
    for stage in out_dir.glob(f"{STAGING_PREFIX}*"):
        pid = stage.name[len(STAGING_PREFIX) :]
        if pid.isdigit() and (int(pid) == os.getpid() or not Path(f"/proc/{pid}").exists()):
            shutil.rmtree(stage, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(stage: Path, out_dir: Path, replaces: tuple[str, ...]) -> None:
    """Rename the staged files into place with the stopping signals held back: they act after
    the last rename, so a stop never leaves half of one set beside half of another."""
    names = sorted(item.name for item in stage.iterdir())
    with signals_held():
        for name in names:
            os.replace(stage / name, out_dir / name)
        for name in replaces:
            if name not in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(out_dir / name)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait until the block ends, then act as they would have.
    Python runs signal handlers in the main thread whichever thread the kernel picked, so
    swapping the handlers there holds them all (a mask would not: other threads, such as a
    progress bar's, would still take them). Elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in HELD}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)


def unwritable_reason(root: Path) -> str | None:
    """Why files cannot be written under the dir ``root`` (created if missing), or None: it,
    or the nearest of its parents that exists, is not a directory or not writable."""
    if root.exists() and not root.is_dir():
        return f"{root} is not a directory"
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{root}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{root}: {existing} is not writable"
    return None
