"""The run dir of a run or sweep: taken exclusively, resumed point by point, failures kept.

- A lock (`.scaleprobe.lock`, flock) for the driver's lifetime: a second driver on the same
  dir is refused, instead of interleaving metrics.jsonl and losing a sweep. The kernel drops
  the lock however the driver ends, SIGKILL included.
- Node drivers of one multi-node run (cluster=multinode, torchrun: one driver per node) may
  share the dir on a shared filesystem: node 0 owns the lock and the run's files; node k
  takes its own lock (`.scaleprobe-nodeK.lock`) and writes only its own files
  (`config-nodeK.yaml`, `launch-nodeK.log`).
- `resume=true`: a point is finished when its summary.json holds the same workload (config
  digest); finished points keep their files untouched, and the sweep keeps its id. A dir any
  of whose runs was made with another workload is refused, naming what differs: resuming
  would rerun its points and overwrite the other workload's files.
- `overwrite=true`: runs the new sweep does not contain, and the previous report, are moved
  aside into `replaced-<time>/` (said on the console), so the new report never shows them.
- A failed point leaves `failed.json` (exit code, the failing rank's last lines; the rank the
  launcher saw fail first and the signal that ended it, where it said so) for the
  report; rerunning the point removes it.
- A point the driver was stopped in (Ctrl-C, SIGTERM, SIGHUP) leaves `stopped.json` (the
  signal, rank 0's last step, the time): the report lists it as stopped, not failed;
  `resume=true` reruns it (it has no summary), and rerunning it removes the record.
- `dry_run=true` deletes and replaces nothing: where a run's file exists already, the dry
  run's goes beside it (`dry_run_path`), and the printed command names that one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console

from launch.errors import ConfigError, RunFailed
from launch.plan import RunPlan, config_for
from train.files.safe_files import DiskFull, make_dirs, write_atomic
from train.spec.config import RunConfig, config_digest, load_run_config, workload

FAILED = "failed.json"
# A point the driver was stopped in (launch/stops.py): not a failure of the run.
STOPPED = "stopped.json"
LOCK = ".scaleprobe.lock"
# What makes a folder a run (a point of a sweep): the driver's config, or a result.
POINT_MARKS = ("config.yaml", "summary.json", FAILED, STOPPED)
# A run's own files, when the run dir itself is one (sweep=none) and is set aside.
RUN_FILES = (*POINT_MARKS, "metrics.jsonl", "launch.log", "torchelastic")
# A sweep's report (launch/report/write.py): it describes the runs it was written from.
REPORT_FILES = ("report.md", "results.json", "scaling.png", "breakdown.png")


def dry_run_path(path: Path, dry_run: bool) -> Path:
    """Where a run file is written: ``path``, except that a dry run never replaces a file an
    earlier run wrote (its config, its sbatch script): ``<stem>.dry-run<suffix>`` beside it."""
    if dry_run and path.exists():
        return path.with_name(f"{path.stem}.dry-run{path.suffix}")
    return path


def lock_name(node_rank: int = 0) -> str:
    return LOCK if node_rank == 0 else f".scaleprobe-node{node_rank}.lock"


def config_name(node_rank: int = 0) -> str:
    """The config a node's ranks read: node 0's is the run's, node k writes its own copy."""
    return "config.yaml" if node_rank == 0 else f"config-node{node_rank}.yaml"


def make_run_dir(root: Path) -> None:
    """The run dir, made; where the kernel refuses what validation could not foresee (a
    folder under /proc or /sys, which root may write by access()'s account) ConfigError, not a
    traceback. Nothing is written yet."""
    try:
        make_dirs(root)
    except DiskFull:
        raise
    except OSError as exc:
        raise ConfigError(
            "run_dir", f"{root}: cannot be made there ({exc.strerror}); choose a folder on a disk"
        ) from None


def take_run_dir(root: Path, node_rank: int = 0):
    """Lock `root` for this process; the open file holds the lock until the process exits."""
    handle = (root / lock_name(node_rank)).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        node = f" as node {node_rank}" if node_rank else ""
        raise ConfigError(
            "run_dir", f"{root} is in use{node} by another scaleprobe driver ({holder})"
        ) from None
    handle.seek(0)
    handle.truncate()
    try:
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
    except OSError as exc:
        # The lock is the flock, not the text: on a full disk the run's first real file
        # (config.yaml) says so in one line.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
    return handle


def finished_points(cfg: RunConfig, plans: list[RunPlan], node_rank: int = 0) -> dict[str, dict]:
    """resume=true: the summaries of the points already run with this same workload."""
    root = Path(cfg.run_dir)
    if not any((plan.run_dir / config_name(node_rank)).is_file() for plan in plans):
        raise ConfigError("resume", f"{root} holds no run or sweep of these world sizes")
    finished = {}
    for plan in plans:
        path = plan.run_dir / "summary.json"
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # missing or unreadable: run the point again
        if isinstance(summary, dict) and summary.get("config_digest") == config_digest(
            config_for(cfg, plan, "")
        ):
            finished[plan.name] = summary
    return finished


def point_dirs(root: Path) -> list[Path]:
    """Every run under a run dir: the dir itself when it is one, and each sub-dir that is."""
    if not root.is_dir():
        return []
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return [p for p in candidates if any((p / mark).is_file() for mark in POINT_MARKS)]


def refuse_other_workloads(cfg: RunConfig, plans: list[RunPlan]) -> None:
    """resume=true: every run already in the dir must hold this workload; else ConfigError
    naming the run and what differs. Runs outside this sweep's world sizes are compared
    without what differs by world size (the global batch under weak scaling, the layout
    parallel=auto picks)."""
    planned = {plan.run_dir.resolve(): plan for plan in plans}
    for point in point_dirs(Path(cfg.run_dir)):
        plan = planned.get(point.resolve())
        expected = config_for(cfg, plan or plans[0], "")
        ignore = () if plan else ("train.global_batch", "parallel")
        differences = workload_differences(point, expected, ignore)
        if differences:
            listed = "; ".join(differences[:4]) + ("; ..." if len(differences) > 4 else "")
            raise ConfigError(
                "resume",
                f"{point} holds a run of another workload ({listed}): resume=true continues a "
                "sweep with the same config; overwrite=true replaces it, or pick another run_dir",
            )


def workload_differences(point: Path, expected: RunConfig, ignore: tuple[str, ...]) -> list[str]:
    """``key: there -> here`` for each workload value the run in ``point`` does not share
    with ``expected`` (from its config.yaml; its summary's digest when that cannot be read)."""
    try:
        old = workload(load_run_config(point / "config.yaml"))
    except (OSError, ValueError, OmegaConfBaseException, yaml.YAMLError):
        try:
            digest = json.loads((point / "summary.json").read_text()).get("config_digest")
        except (OSError, ValueError, AttributeError):
            return []  # nothing to compare: the run is rerun as before
        here = config_digest(expected)
        return [] if ignore or digest == here else [f"config digest {digest} there, {here} here"]
    there, here = _flat(old), _flat(workload(expected))
    return [
        f"{key}: {there.get(key)!r} there, {here.get(key)!r} here"
        # Names first (model.name says more than the shape fields that follow from it).
        for key in sorted(set(there) | set(here), key=lambda k: (not k.endswith(".name"), k))
        if there.get(key) != here.get(key) and not key.startswith(ignore)
    ]


def _flat(content: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in content.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def set_aside_other_runs(
    root: Path, plans: list[RunPlan], console: Console, *, dry_run: bool = False
) -> Path | None:
    """overwrite=true: the runs this sweep does not contain, and the previous report, moved
    into ``root/replaced-<time>/`` (nothing is deleted); the folder, or None. A dry run only
    says what it would move."""
    planned = {plan.run_dir.resolve() for plan in plans}
    others = [p for p in point_dirs(root) if p.resolve() not in planned]
    reports = [root / name for name in REPORT_FILES if (root / name).is_file()]
    if not others and not reports:
        return None
    what = [p.name if p != root else "the run in it" for p in others]
    what += ["the previous report"] if reports else []
    aside = root / f"replaced-{datetime.now():%Y%m%d-%H%M%S-%f}"
    console.print(
        f"overwrite: {'would move' if dry_run else 'moved'} {', '.join(what)} (not in this "
        f"sweep) to {aside}",
        highlight=False,
        soft_wrap=True,
    )
    if dry_run:
        return None
    make_dirs(aside)
    for point in others:
        if point == root:  # a single run here before, a sweep now: its files, not the dir
            moved = make_dirs(aside / "run")
            for name in RUN_FILES:
                if (root / name).exists():
                    os.replace(root / name, moved / name)
        else:
            os.replace(point, aside / point.name)
    for path in reports:
        os.replace(path, aside / path.name)
    return aside


def previous_sweep_id(plans: list[RunPlan]) -> str | None:
    """The sweep id of the runs being resumed, so old and new points stay one sweep."""
    for plan in plans:
        resolved = (saved_config(plan.run_dir / "config.yaml") or {}).get("resolved")
        sweep_id = resolved.get("sweep_id") if isinstance(resolved, dict) else None
        if sweep_id:
            return str(sweep_id)
    return None


def saved_config(path: Path) -> dict | None:
    """A point's config.yaml as a mapping; None when it is missing, unreadable, cut short or
    not a mapping (edited by hand): such a point is one whose workload nobody can tell, and
    resume=true reruns it as it does a point without a config."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def record_failure(plan: RunPlan, exc: RunFailed) -> Path:
    path = plan.run_dir / FAILED
    record = {
        "name": plan.name,
        "world_size": plan.world_size,
        "exit_code": exc.returncode,
        "error": str(exc).splitlines()[0],
        "last_lines": exc.log_tail.splitlines(),
    }
    # The rank the launcher saw fail first, not the one whose traceback came first.
    if exc.rank is not None or exc.signal:
        record.update(rank=exc.rank, rank_exit_code=exc.rank_exit_code, signal=exc.signal)
    return write_atomic(path, json.dumps(record, indent=2) + "\n")


def failed_points(directory: Path) -> list[dict]:
    """Every point under a sweep dir that has no summary, with its ``status``: failed
    (failed.json, where the driver recorded the failure), stopped (stopped.json: the driver
    was stopped while it ran), else unfinished (a point written but never finished: a Slurm
    job that failed while nobody followed it, or one still running). For the report."""
    if not directory.is_dir():
        return []
    out = []
    for point in [directory, *sorted(p for p in directory.iterdir() if p.is_dir())]:
        if (point / "summary.json").is_file():
            continue
        record = _point_record(point)
        if record is not None:
            out.append(record)
    return out


def _point_record(point: Path) -> dict | None:
    # failed.json first: a rerun that failed after a stop describes the point as it is now.
    for name, status in ((FAILED, "failed"), (STOPPED, "stopped")):
        try:
            record = json.loads((point / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            if status == "stopped":
                record.setdefault("exit_code", None)
            return {**record, "status": status, "path": str(point / name)}
    unfinished = unfinished_point(point)
    return {**unfinished, "status": "unfinished"} if unfinished else None


def unfinished_point(point: Path) -> dict | None:
    """A point with a config.yaml but neither summary.json nor failed.json."""
    cluster = (saved_config(point / "config.yaml") or {}).get("cluster")
    try:
        world_size = int(cluster["nodes"]) * int(cluster["nproc_per_node"])
    except (KeyError, TypeError, ValueError):
        return None
    jobs = sorted(point.glob("slurm-*.out"))
    hint = f"; its Slurm output: {jobs[-1]}" if jobs else ""
    return {
        "name": point.name,
        "world_size": world_size,
        "exit_code": None,
        "error": "no summary.json (the run failed, was stopped, or is still running)" + hint,
        "last_lines": [],
        "path": str(point / "config.yaml"),
    }
