"""Which communication hides behind compute, per layout, and what is left exposed.

- DDP: gradients are all-reduced in buckets (parallel.bucket_mb) while the last micro-step's
  backward runs (no_sync before it); every bucket but the last can hide, so exposed =
  max(the last bucket's time, all of it - that backward).
- FSDP / ZeRO-3: each unit's parameters are gathered one unit ahead (FSDP2's prefetch),
  so a unit's gather hides behind the previous unit's compute: exposed = the first gather +
  the excess of each gather over one unit's compute; in backward a unit's gather and its
  gradient reduction (reduce-scatter, and the replicas' all-reduce under hsdp) share the
  link behind one unit's backward (reduce-scatters every micro-step, the replicas'
  all-reduce on the last). The root unit's gather and reduction are exposed.
- TP activations: on the critical path, except under async TP (parallel.async_tp, which
  needs sequence parallelism): torch's micro-pipelining pass splits an all-gather into the
  matmuls reading it as their left operand, and a reduce-scatter out of the one matmul
  producing it, in the compiled blocks (Phase.tp_matmul), in tp chunks, so the first chunk's
  transfer (1/tp of it) stays exposed, and whatever exceeds the matmul's time; the others
  (a block's input gradients, summed over several matmuls, the embedding's and the eager
  head's) stay exposed.
- DeepSpeed stage 1/2 reductions and the parameter all-gather after the step, the gradient
  norm, the loss: on the critical path, fully exposed.
- pipeline sends (Phase.pipeline): returned apart; launch/perfmodel/pipelined.py puts them in
  the schedule.
Hidden NCCL collectives still hold an SM per channel (collectives.CHANNEL_SMS) that the
overlapped compute lacks: ``contention_s`` = the hidden time x those SMs / the part's SMs.
"""

from __future__ import annotations

from dataclasses import dataclass

from launch.perfmodel.collectives import collective_time
from launch.perfmodel.compute import ComputeTime
from launch.perfmodel.hardware import PartRates
from train.spec.degrees import Degrees
from train.spec.traffic import Collective, Phase

BUCKETED_BACKWARD, UNIT_FORWARD = Phase.bucketed_backward, Phase.unit_forward
UNIT_BACKWARD, UNIT_BACKWARD_LAST = Phase.unit_backward, Phase.unit_backward_last
UNIT_BACKWARD_EACH = Phase.unit_backward_each
OVERLAPPED = (
    BUCKETED_BACKWARD,
    UNIT_FORWARD,
    UNIT_BACKWARD,
    UNIT_BACKWARD_EACH,
    UNIT_BACKWARD_LAST,
)
BASE_KINDS = ("all_reduce", "all_gather", "reduce_scatter")


@dataclass(frozen=True)
class CommTime:
    comm_s: dict[str, float]  # per collective kind, all of it (hidden or not)
    exposed_s: float
    by_role: dict[str, float]
    pipeline_s: float = 0.0  # stage-to-stage sends (Phase.pipeline), not in exposed_s
    contention_s: float = 0.0  # compute slowed by the SMs hidden collectives hold


@dataclass
class _Tally:
    per_kind: dict[str, float]
    by_role: dict[str, float]
    phase_s: dict[str, float]
    one_call: dict[str, float]
    exposed: float = 0.0
    pipeline: float = 0.0
    sm_seconds: float = 0.0  # overlappable time x the SMs its channels hold
    tp_calls: list[tuple[float, int]] | None = None  # (one call's time, calls) of async TP


def comm_time(
    collectives: list[Collective],
    compute: ComputeTime,
    *,
    degrees: Degrees,
    nproc_per_node: int,
    n_layers: int,
    accum_steps: int,
    bucket_bytes: int,
    rates: PartRates,
    async_tp: bool = False,
) -> CommTime:
    tally = _Tally(dict.fromkeys(BASE_KINDS, 0.0), {}, {}, {}, tp_calls=[])
    for t in collectives:
        _add(tally, t, degrees, nproc_per_node, bucket_bytes, rates, async_tp)
    exposed = tally.exposed
    overlapped = sum(tally.phase_s.values())
    exposed_of_overlapped = _exposed_of_phases(tally, compute, n_layers, accum_steps)
    exposed += exposed_of_overlapped
    exposed += _async_tp_exposed(tally.tp_calls, compute, degrees.tp)
    contention = 0.0
    if rates.sms and overlapped:
        hidden_share = max(0.0, overlapped - exposed_of_overlapped) / overlapped
        contention = hidden_share * tally.sm_seconds / rates.sms
    return CommTime(tally.per_kind, exposed, tally.by_role, tally.pipeline, contention)


def _add(
    tally: _Tally,
    t: Collective,
    degrees: Degrees,
    nproc_per_node: int,
    bucket_bytes: int,
    rates: PartRates,
    async_tp: bool,
) -> None:
    ranks = degrees.size(t.group)
    per_node = degrees.ranks_per_node(t.group, nproc_per_node)
    one = collective_time(t.kind, t.nbytes, ranks, per_node, rates)
    total = one.time_s * t.calls
    tally.per_kind[t.kind] = tally.per_kind.get(t.kind, 0.0) + total
    tally.by_role[t.role] = tally.by_role.get(t.role, 0.0) + total
    if t.phase == Phase.pipeline:
        tally.pipeline += total
    elif t.phase in OVERLAPPED:
        tally.phase_s[t.phase] = tally.phase_s.get(t.phase, 0.0) + total
        tally.one_call[t.phase] = tally.one_call.get(t.phase, 0.0) + one.time_s
        tally.sm_seconds += total * one.sms
        if t.phase == BUCKETED_BACKWARD:
            bucket = min(bucket_bytes, t.nbytes)
            last = collective_time(t.kind, bucket, ranks, per_node, rates)
            tally.one_call["last_bucket"] = last.time_s
    elif async_tp and t.phase == Phase.tp_matmul:
        tally.tp_calls.append((one.time_s, t.calls))
    else:
        tally.exposed += total


def _exposed_of_phases(
    tally: _Tally, compute: ComputeTime, n_layers: int, accum_steps: int
) -> float:
    """What the bucketed and per-unit phases leave exposed (module docstring)."""
    phase_s, one_call = tally.phase_s, tally.one_call
    exposed = 0.0
    backward_micro = compute.backward_s / accum_steps
    forward_micro = compute.forward_s / accum_steps
    if BUCKETED_BACKWARD in phase_s:
        exposed += max(one_call["last_bucket"], phase_s[BUCKETED_BACKWARD] - backward_micro)
    units = n_layers * accum_steps
    if UNIT_FORWARD in phase_s:
        gather = phase_s[UNIT_FORWARD] / units
        unit_forward = forward_micro / n_layers
        exposed += gather * accum_steps + max(0.0, gather - unit_forward) * (units - accum_steps)
    unit_backward = backward_micro / n_layers
    backward_phases = (UNIT_BACKWARD, UNIT_BACKWARD_EACH, UNIT_BACKWARD_LAST)
    if any(p in phase_s for p in backward_phases):
        # Per unit and micro-step: its gather, and its reduce-scatter (every micro-step); on
        # the last micro-step also the replicas' all-reduce.
        gather = (phase_s.get(UNIT_BACKWARD, 0.0) + phase_s.get(UNIT_BACKWARD_EACH, 0.0)) / units
        reduce = phase_s.get(UNIT_BACKWARD_LAST, 0.0) / n_layers  # last micro-step only
        exposed += max(0.0, gather - unit_backward) * (units - n_layers)
        exposed += max(0.0, gather + reduce - unit_backward) * n_layers
        # The last unit's reductions have no backward left to hide behind.
        each = phase_s.get(UNIT_BACKWARD_EACH, 0.0) / units
        last_unit = one_call.get(UNIT_BACKWARD_EACH, 0.0) + one_call.get(UNIT_BACKWARD_LAST, 0.0)
        exposed += min(each + reduce, last_unit)
    return exposed


def _async_tp_exposed(calls: list[tuple[float, int]], compute: ComputeTime, tp: int) -> float:
    """Async TP: each SP all-gather / reduce-scatter beside a matmul (Phase.tp_matmul)
    overlaps it (the block matmuls of a micro-step shared evenly over those calls); 1/tp of
    each stays exposed."""
    n_calls = sum(count for _, count in calls)
    if not n_calls:
        return 0.0
    matmul_per_call = compute.matmul_s / n_calls
    return sum(max(one / tp, one - matmul_per_call) * count for one, count in calls)
