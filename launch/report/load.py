"""Read the summary.json of every run under the given dirs, and label each run's series."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from launch.errors import ReportError
from train.summary import RunSummary, SummaryError

SUMMARY = "summary.json"


def _read_summary(path: Path) -> dict[str, Any]:
    """One run's summary, read through its type (train/summary.py): a wrong schema version,
    a missing key or a world size of 0 is one line naming the file, never a traceback."""
    try:
        return RunSummary.read(path).to_dict()
    except SummaryError as exc:
        raise ReportError(str(exc)) from None


def _summary_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ReportError(f"{directory}: no such directory")
    if (directory / SUMMARY).is_file():
        return [directory / SUMMARY]
    # A sweep dir also holds non-run entries (command.sh, the report itself, failed runs).
    paths = sorted(p / SUMMARY for p in directory.iterdir() if (p / SUMMARY).is_file())
    if not paths:
        raise ReportError(f"{directory}: no {SUMMARY} in it or in its sub-directories")
    return paths


def _series_key(run: dict[str, Any]) -> str:
    parts = [run["gpu"], run["model"]["name"], run["parallel"], run["precision"]["resolved"]]
    # On the emulated cluster the link rate is the variable under study: one curve per rate.
    link = (run.get("cluster") or {}).get("link") or {}
    if link.get("gbps"):
        parts.append(f"link {link['gbps'] * 1000:g} Mbit/s")
    return " · ".join(parts)


def load_runs(dirs: list[Path]) -> list[dict[str, Any]]:
    """Every run under ``dirs`` (run dirs or sweep dirs), each with a ``series`` label."""
    # The same dir named twice (``out`` and ``./out``) would double every row.
    given_by_dir = {}
    for given in map(Path, dirs):
        given_by_dir.setdefault(given.resolve(), given)
    inputs = list(given_by_dir)
    per_dir: list[list[dict[str, Any]]] = []
    for given in given_by_dir.values():
        runs = []
        for path in _summary_paths(given):  # errors name the dir as the user typed it
            run = _read_summary(path)
            run["run_dir"] = str(path.parent)
            runs.append(run)
        per_dir.append(runs)

    # A label found in several input dirs would merge two sweeps into one curve: suffix the
    # dir name, or the whole path where two inputs share a name.
    dirs_per_label: dict[str, set[int]] = defaultdict(set)
    for index, runs in enumerate(per_dir):
        for run in runs:
            dirs_per_label[_series_key(run)].add(index)
    names = [d.name for d in inputs]
    out = []
    for index, runs in enumerate(per_dir):
        suffix = names[index] if names.count(names[index]) == 1 else str(inputs[index])
        for run in runs:
            label = _series_key(run)
            run["series"] = f"{label} ({suffix})" if len(dirs_per_label[label]) > 1 else label
            out.append(run)
    return out
