"""summary.json: the typed record of one run, written by rank 0 and read by the report.

A dataclass, so the worker cannot forget a key the report needs and the report knows what
it reads. `schema_version` changes when a key is renamed or its meaning changes; a summary of
another version is refused with what to do, never read with guessed meanings.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.files.safe_files import write_atomic

SCHEMA_VERSION = 2  # 1: before `schema_version` existed (scaleprobe 0.1, issues 2-5)


class SummaryError(ValueError):
    """A summary.json this scaleprobe cannot read: names the file and what is wrong."""


@dataclass
class RunSummary:
    # What every report row needs: a summary without one of these is refused.
    sweep: dict[str, Any]  # id, name
    world_size: int
    nodes: int
    nproc_per_node: int
    gpu: str  # profile name
    model: dict[str, Any]  # name, params, flops_per_token
    parallel: str  # layout name
    precision: dict[str, Any]  # requested, resolved, reason (+ fp8 backend, recipe, layers built)
    tokens_per_s: float
    tokens_per_s_per_device: float
    step_time_s: dict[str, float]  # median, min, max over the timed steps
    # MFU against the dense peak of the precision in use; null when the peak is unknown.
    mfu: float | None
    # The rest: written by every run of this schema, optional for a reader.
    run_name: str = ""
    gpu_display_name: str | None = None  # the profile's marketing name
    # The board power limit the run was declared (or detected, gpu=auto) to run at, watts,
    # when below the profile's TDP (gpu.power_limit_w): a capped part's MFU is lower.
    gpu_power_limit_w: float | None = None
    gpu_tdp_w: float | None = None
    device_name: str | None = None  # what the device says it is (torch.cuda / the CPU model)
    backend: str | None = None  # nccl | gloo
    layout: dict[str, Any] | None = None  # degrees, checkpointed blocks, sequence parallel
    # The batch as run (after weak scaling): tokens per sequence, sequences per optimizer step
    # over all data-parallel ranks, and per forward on one rank.
    seq_len: int | None = None
    global_batch: int | None = None
    micro_batch: int | None = None
    # train.global_batch sequences per optimizer step split over data_parallel_size ranks
    # (TP and pipeline ranks share theirs), micro_batch per forward, grad_accum micro-steps:
    # global_batch = micro_batch x data_parallel_size x grad_accum (train/spec/degrees.py).
    data_parallel_size: int | None = None
    grad_accum: int | None = None
    tokens_per_step: int | None = None  # global_batch x seq_len
    timed_steps: int | None = None  # steps after warm-up, the ones every figure is taken over
    # Model FLOPs (6N + attention, no recompute) per second per device, and the peak MFU is
    # taken against: the profile's dense figure for `mfu_peak_precision`.
    model_tflops_per_device: float | None = None
    peak_tflops: float | None = None
    mfu_peak_precision: str | None = None
    # The ceiling `python -m launch.mamf` measured on this device, and MFU against it.
    measured_peak_tflops: float | None = None
    mfu_vs_measured: float | None = None
    mfu_vs_bf16_peak: float | None = None  # fp8 runs
    mfu_vs_fp8_peak: float | None = None  # fp8 runs
    gpu_warning: str | None = None
    # MFU above 100%: the figure is not true, and why (a ceiling measured under load, say).
    mfu_warning: str | None = None
    hardware_flops_per_token: float | None = None
    hfu: float | None = None
    # Allocated (live tensors; RSS on CPU) and reserved by the caching allocator (null on CPU).
    peak_memory_bytes: int | None = None
    peak_memory_reserved_bytes: int | None = None
    memory: dict[str, int] | None = None  # busiest rank: params, grads, optimizer, peaks
    comm_bytes_per_step: dict[str, int] | None = None  # per rank, by collective kind
    # MoE models: experts, top_k, EP degree, total and active parameters, and over the timed
    # steps the expert load imbalance, dropped share and balancing loss (train/measure/routing.py).
    moe: dict[str, Any] | None = None
    # pp layouts: schedule, stages, microbatches, layers per stage, predicted bubble, and the
    # bytes each pipeline rank holds (train/spec/stages.py, pipeline.py).
    pipeline: dict[str, Any] | None = None
    final_loss: float | None = None
    # checkpoint.every > 0: every, dir, async_save, keep, format, resumed_from_step, and per
    # save of this attempt: step, seconds, bytes, bytes/seconds/GB/s per rank, GB/s of the job
    # (GB = 1e9 bytes; async: seconds until written, overlapping the steps after it), and
    # blocking_seconds (what the loop waited). train/checkpoint/checkpointer.py; null when off.
    checkpoint: dict[str, Any] | None = None
    # Steps run more than once: before a failure and again after the restart (metrics.jsonl
    # holds both lines, marked `repeated`; timed figures use the latest).
    repeated_steps: list[int] | None = None
    final_loss_from: str | None = None
    torch_version: str | None = None
    config_digest: str | None = None  # what determines the workload
    cluster: dict[str, Any] | None = None  # name, launcher, restarts, emulated link
    fabric: dict[str, Any] | None = None  # NCCL variables, warnings, topology
    breakdown: dict[str, Any] | None = None  # profile.enabled / profile.twin
    achieved_bandwidth: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.update(data.pop("extra"))
        return data

    def write(self, path: Path) -> None:
        # Strict JSON: a NaN (a diverged loss) becomes null rather than an invalid token.
        text = json.dumps(finite_json(self.to_dict()), indent=2, allow_nan=False)
        write_atomic(path, text + "\n")  # whole or absent: a report never reads half of one

    @classmethod
    def from_dict(cls, data: Any, source: str = "summary") -> RunSummary:
        if not isinstance(data, dict):
            raise SummaryError(f"{source}: not a JSON object")
        version = data.get("schema_version", 1)
        if version != SCHEMA_VERSION:
            raise SummaryError(
                f"{source}: summary schema {version}, this scaleprobe reads {SCHEMA_VERSION}; "
                "rerun that point (python -m launch ...) or report it with the scaleprobe "
                "that wrote it"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [f.name for f in dataclasses.fields(cls) if _required(f) and f.name not in data]
        if missing:
            raise SummaryError(f"{source}: summary lacks {', '.join(missing)}")
        known = {k: v for k, v in data.items() if k in names}
        summary = cls(**known, extra={k: v for k, v in data.items() if k not in names})
        summary.check(source)
        return summary

    @classmethod
    def read(cls, path: Path) -> RunSummary:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise SummaryError(f"{path}: unreadable summary ({exc})") from None
        return cls.from_dict(data, str(path))

    def check(self, source: str) -> None:
        """What every report row reads (the required fields, the names it labels a series
        with) is of its declared kind, and the numbers it divides by or plots are in range: a
        summary edited by hand or cut by another tool is one line naming the file and the
        key, never a TypeError in the report."""
        for f in dataclasses.fields(self):
            if not _required(f) or f.type not in REQUIRED_KINDS:
                continue
            kind, expected = REQUIRED_KINDS[f.type]
            value = getattr(self, f.name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise SummaryError(f"{source}: {f.name} is {value!r:.60}, expected {expected}")
        for table, key in (("model", "name"), ("precision", "resolved"), ("sweep", "name")):
            value = getattr(self, table).get(key)
            if not isinstance(value, str):
                raise SummaryError(f"{source}: {table}.{key} is {value!r:.60}, expected a string")
        for name in ("world_size", "nodes", "nproc_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SummaryError(f"{source}: {name} is {value!r}, expected an integer >= 1")
        for name in ("tokens_per_s", "tokens_per_s_per_device"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise SummaryError(f"{source}: {name} is {value!r}, expected a number > 0")
        median = self.step_time_s.get("median")
        if not isinstance(median, (int, float)) or not median > 0:
            raise SummaryError(f"{source}: step_time_s.median is {median!r}, expected > 0")


# The kinds of the required fields, by their annotation (strings: `from __future__ import
# annotations`), and how an error names each; ints and floats are told apart where a count is
# expected.
REQUIRED_KINDS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "dict[str, Any]": (dict, "a JSON object"),
    "dict[str, float]": (dict, "a JSON object"),
    "str": (str, "a string"),
    "int": (int, "an integer"),
    "float": ((int, float), "a number"),
    "float | None": ((int, float, type(None)), "a number or null"),
}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def finite_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
