"""Read the summary.json of every run under the given dirs, and label each run's series."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from launch.errors import ReportError
from train.measure.summary import RunSummary, SummaryError

SUMMARY = "summary.json"


def _read_summary(path: Path) -> dict[str, Any]:
    """One run's summary, read through its type (train/measure/summary.py): a wrong schema version,
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
    # The link rate (applied on the emulated cluster, declared on real nodes) and the fabric
    # profile are variables under study: one curve per link, never two links in one curve.
    link = (run.get("cluster") or {}).get("link") or {}
    if link.get("gbps"):
        parts.append(f"link {link['gbps'] * 1000:g} Mbit/s")
    fabric = (run.get("fabric") or {}).get("name")
    if fabric and fabric != "none":
        parts.append(f"fabric {fabric}")
    return " · ".join(parts)


def _with_driver_link(run: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """A summary whose ranks recorded no link (real clusters: only the driver knows the
    link cluster.link_gbps declares): the link from the run's config.yaml."""
    cluster = run.get("cluster")
    if not isinstance(cluster, dict) or cluster.get("link") or cluster.get("name") == "emulated":
        return run
    try:
        resolved = yaml.safe_load((run_dir / "config.yaml").read_text()).get("resolved") or {}
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return run
    if resolved.get("applied_link"):
        cluster["link"] = resolved["applied_link"]
    return run


def data_parallel_size(run: dict[str, Any]) -> int:
    """The ranks a step's batch splits over (train/spec/degrees.py Degrees.dp): the summary's
    data_parallel_size, else its layout's degrees, else the world size (summaries written
    before layouts other than data parallel existed)."""
    size = run.get("data_parallel_size")
    if isinstance(size, int) and size > 0:
        return size
    layout = run.get("layout") or {}
    degrees = [layout.get(k) for k in ("dp_replicate", "dp_shard", "ep")]
    if all(isinstance(d, int) and d > 0 for d in degrees):
        return degrees[0] * degrees[1] * degrees[2]
    return run["world_size"]


PER = {"sequences_per_dp_rank": " per data-parallel rank", "sequences_per_device": " per device"}


def _held(run: dict[str, Any]) -> str:
    """What the run's sweep held fixed (sweep.batch_held; a summary from before it was
    recorded: per data-parallel rank for weak scaling, the global batch otherwise)."""
    sweep = run.get("sweep") or {}
    if sweep.get("batch_held"):
        return sweep["batch_held"]
    return "sequences_per_dp_rank" if sweep.get("name") == "weak" else "global_batch"


def _workload(run: dict[str, Any]) -> tuple:
    """What must match for runs to share one scaling curve: sequence length and the batch the
    sweep holds fixed (sweep.batch_held: per data-parallel rank for weak scaling of one
    layout, per device for weak scaling under parallel=auto, global for strong), and the sweep
    itself (a sweep re-run by hand with other world sizes is another curve, not more points).
    Weak scaling of one layout keeps each data-parallel rank's sequences (README), so under TP
    or a pipeline the tokens per device shrink as the world grows while the workload stays
    one; under parallel=auto the layout, and with it the data-parallel size, may change from
    one world size to the next, so the device's share is what stays."""
    sweep = run.get("sweep") or {}
    tokens = run.get("tokens_per_step")
    held = _held(run)
    if tokens and held == "sequences_per_dp_rank":
        tokens = tokens / data_parallel_size(run)
    elif tokens and held == "sequences_per_device":
        tokens = tokens / run["world_size"]
    return (run.get("seq_len"), tokens, held, sweep.get("id"))


def _workload_label(run: dict[str, Any]) -> str:
    seq, fixed, held, sweep_id = _workload(run)
    per = PER.get(held, "")
    batch = f"{fixed:g} tokens/step{per}" if fixed else ""
    return ", ".join(p for p in (f"seq {seq}" if seq else "", batch, f"sweep {sweep_id}") if p)


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
            run = _with_driver_link(_read_summary(path), path.parent)
            run["run_dir"] = str(path.parent)
            runs.append(run)
        per_dir.append(runs)

    # Runs of one label but another workload (seq_len, batch, another sweep in the same dir)
    # are separate curves, never merged into one efficiency.
    workloads: dict[str, set[tuple]] = defaultdict(set)
    for runs in per_dir:
        for run in runs:
            workloads[_series_key(run)].add(_workload(run))
    for runs in per_dir:
        for run in runs:
            if len(workloads[_series_key(run)]) > 1:
                run["series_detail"] = _workload_label(run)

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
            if run.get("series_detail"):
                label = f"{label} [{run['series_detail']}]"
            run["series"] = (
                f"{label} ({suffix})" if len(dirs_per_label[_series_key(run)]) > 1 else label
            )
            out.append(run)
    return out
