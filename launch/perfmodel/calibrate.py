"""Calibration: a measured run (and a comm benchmark) corrects the model before projecting.

- compute: the run's measured step time over the model's prediction for that same run (its
  config.yaml, layout, precision, the machine's profile) gives a scale; the compute rates
  (matmul, attention, memory-bound) of every projected profile are multiplied by it. The
  discrepancy is put on compute because a calibration run is meant to be compute-dominated
  (one node); a run with much exposed comm calibrates less well, and the scale says so.
- links: comm.json's busbw at its largest all-reduce over the model's busbw for the same
  group gives a scale for the link rates (intra-node for an intra-node scope, NIC for an
  inter-node one).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from launch.errors import ConfigError
from launch.perfmodel.collectives import collective_time
from launch.perfmodel.hardware import Link, PartRates, part_rates
from launch.perfmodel.step import predict_run
from train.measure.summary import RunSummary, SummaryError
from train.spec.config import RunConfig, load_run_config

# What _link_scales reads of each comm.json point (train/bench/comm_rank.py writes them).
POINT_KEYS = ("op", "scope", "bytes", "group_size", "busbw_gbytes_per_s")
# The scopes whose all_reduce scales a link: a node's own group, one rank per node.
LINK_SCOPES = ("intra-node", "inter-node")


@dataclass(frozen=True)
class Calibration:
    compute_scale: float = 1.0
    intra_scale: float = 1.0
    inter_scale: float = 1.0
    workload: RunConfig | None = None  # the measured run's config (its model, batch, layout)
    source: str = ""

    def apply(self, rates: PartRates) -> PartRates:
        def scaled(link: Link | None, factor: float) -> Link | None:
            if link is None or factor == 1.0:
                return link
            return dataclasses.replace(link, gbytes_per_s=link.gbytes_per_s * factor)

        hbm = rates.hbm_gbytes_per_s
        return dataclasses.replace(
            rates,
            matmul_fraction=rates.matmul_fraction * self.compute_scale,
            fp8_matmul_fraction=(
                rates.fp8_matmul_fraction * self.compute_scale
                if rates.fp8_matmul_fraction
                else None
            ),
            attention_fraction=rates.attention_fraction * self.compute_scale,
            hbm_gbytes_per_s=hbm * self.compute_scale if hbm else hbm,
            copy_gbytes_per_s=(
                rates.copy_gbytes_per_s * self.compute_scale if rates.copy_gbytes_per_s else None
            ),
            intra=scaled(rates.intra, self.intra_scale),
            pcie=scaled(rates.pcie, self.intra_scale),
            inter=scaled(rates.inter, self.inter_scale),
        )


def load_calibration(run_dir: str | None, comm_json: str | None) -> Calibration:
    if not run_dir and not comm_json:
        return Calibration()
    compute_scale, workload, notes = 1.0, None, []
    if run_dir:
        path = Path(run_dir)
        summary_path = path / "summary.json"
        if path.is_file():
            raise ConfigError(
                "project.calibrate",
                f"{run_dir} is a file; expected the run dir that holds its summary.json and "
                "config.yaml",
            )
        if not summary_path.is_file():
            raise ConfigError("project.calibrate", f"{run_dir} has no summary.json (not a run dir)")
        # Read through its type (train/measure/summary.py): the counts and the step time it
        # divides by are checked there, as for the report.
        try:
            summary = RunSummary.read(summary_path).to_dict()
        except SummaryError as exc:
            raise ConfigError("project.calibrate", str(exc)) from None
        config_path = path / "config.yaml"
        if not config_path.is_file():
            raise ConfigError("project.calibrate", f"{run_dir} has no config.yaml")
        workload = load_config_file(config_path, "project.calibrate")
        measured = summary["step_time_s"]["median"]
        resolved = summary["precision"]["resolved"]
        predicted = predict_run(workload, summary, precision=resolved)
        compute_scale = predicted.step_time_s / measured
        notes.append(
            f"compute x{compute_scale:.2f} (measured step {measured:.4g} s, predicted "
            f"{predicted.step_time_s:.4g} s, {workload.gpu.name})"
        )
    intra_scale = inter_scale = 1.0
    if comm_json:
        intra_scale, inter_scale, note = _link_scales(comm_json, workload)
        notes.append(note)
    return Calibration(compute_scale, intra_scale, inter_scale, workload, "; ".join(notes))


def load_config_file(path: Path, key: str) -> RunConfig:
    """The run config at ``path``; ConfigError naming ``key`` when this version cannot read it."""
    try:
        return load_run_config(path)
    except Exception as exc:  # noqa: BLE001 - OmegaConf's errors for a file it cannot read
        first = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ConfigError(key, f"{path} is not a run config this version reads ({first})") from None


def _read_json(path: Path, key: str) -> dict:
    """``path``'s JSON object; ConfigError naming ``key`` when it is not one."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(key, f"{path} is not readable JSON ({exc})") from None
    if not isinstance(record, dict):
        raise ConfigError(key, f"{path} holds no JSON object")
    return record


def _link_scales(comm_json: str, workload: RunConfig | None) -> tuple[float, float, str]:
    path = Path(comm_json)
    if path.is_dir():
        raise ConfigError(
            "project.calibrate_comm",
            f"{comm_json} is a directory; expected a comm.json file (python -m launch.comm "
            "writes RUN_DIR/comm.json)",
        )
    if not path.is_file():
        raise ConfigError("project.calibrate_comm", f"{comm_json} does not exist")
    record = _read_json(path, "project.calibrate_comm")
    points = _all_reduce_points(record, comm_json)
    config_path = path.parent / "config.yaml"
    cfg = (
        load_config_file(config_path, "project.calibrate_comm")
        if config_path.is_file()
        else workload
    )
    if cfg is None:
        raise ConfigError("project.calibrate_comm", f"no config.yaml beside {comm_json}")
    link = cfg.cluster.link_gbps if cfg.cluster.name == "emulated" else None
    rates = part_rates(cfg.gpu, link_gbps=link or None)
    scales = dict.fromkeys(LINK_SCOPES, 1.0)
    per_node = record.get("nproc_per_node", 1)
    for scope in scales:
        mine = [p for p in points if p["scope"] == scope]
        if not mine:
            continue
        largest = max(mine, key=lambda p: p["bytes"])
        group_per_node = per_node if scope == "intra-node" else 1
        model = collective_time(
            "all_reduce", largest["bytes"], largest["group_size"], group_per_node, rates
        )
        scales[scope] = largest["busbw_gbytes_per_s"] / model.achieved_busbw_gbytes_per_s
    note = f"links: intra x{scales['intra-node']:.2f}, inter x{scales['inter-node']:.2f}"
    return scales["intra-node"], scales["inter-node"], note


def _all_reduce_points(record: dict, comm_json: str) -> list[dict]:
    """comm.json's all_reduce points. A file without any (``{}``, another tool's JSON, a run
    of other ops) would calibrate nothing yet read as "links: intra x1.00": refused instead."""
    results = record.get("results")
    if not isinstance(results, list) or not results:
        raise ConfigError(
            "project.calibrate_comm",
            f"{comm_json} has no results list (not a comm.json of python -m launch.comm)",
        )
    bad = [p for p in results if not isinstance(p, dict) or not set(POINT_KEYS) <= set(p)]
    if bad:
        raise ConfigError(
            "project.calibrate_comm",
            f"{comm_json}: a result lacks one of {', '.join(POINT_KEYS)} ({bad[0]!r:.80})",
        )
    points = [p for p in results if p["op"] == "all_reduce" and p["scope"] in LINK_SCOPES]
    for point in points:
        _check_point(point, comm_json)
    if not points:
        raise ConfigError(
            "project.calibrate_comm",
            f"{comm_json} has no intra-node or inter-node all_reduce results, which calibrate "
            "the links "
            "(run python -m launch.comm with all_reduce in comm.ops)",
        )
    return points


def _check_point(point: dict, comm_json: str) -> None:
    """The numbers a link scale is computed from: a size, a group of at least two ranks (an
    all-reduce over one moves nothing: its bus bandwidth divides by zero) and a bandwidth."""

    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def count(low: int):
        return lambda v: number(v) and isinstance(v, int) and v >= low

    def rate(v) -> bool:
        return number(v) and math.isfinite(v) and v > 0

    for key, expected, fits in (
        ("bytes", "an integer >= 1", count(1)),
        ("group_size", "an integer >= 2", count(2)),
        ("busbw_gbytes_per_s", "a finite number > 0", rate),
    ):
        if not fits(point[key]):
            raise ConfigError(
                "project.calibrate_comm",
                f"{comm_json}: an all_reduce result's {key} is {point[key]!r:.40}, expected "
                f"{expected}",
            )
