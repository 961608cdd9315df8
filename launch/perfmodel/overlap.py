"""Which communication hides behind compute, per layout, and what is left exposed.

- DDP: gradients are all-reduced in buckets (parallel.bucket_mb) while the last micro-step's
  backward runs (no_sync before it); every bucket but the last can hide, so exposed =
  max(the last bucket's time, all of it - that backward).
- FSDP / ZeRO-3: each unit's parameters are gathered one unit ahead (FSDP2's prefetch),
  so a unit's gather hides behind the previous unit's compute: exposed = the first gather +
  the excess of each gather over one unit's compute; in backward a unit's gather and its
  gradient reduction (reduce-scatter, and the replicas' all-reduce under hsdp) share the
  link behind one unit's backward. The root unit's gather and reduction are exposed.
- TP activations, DeepSpeed stage 1/2 reductions and the parameter all-gather after the step,
  the gradient norm: on the critical path, fully exposed.
Not modelled: compute slowed by the kernels the communication occupies (SM contention).
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


@dataclass(frozen=True)
class CommTime:
    comm_s: dict[str, float]  # per collective kind, all of it (hidden or not)
    exposed_s: float
    by_role: dict[str, float]


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
) -> CommTime:
    per_kind = {"all_reduce": 0.0, "all_gather": 0.0, "reduce_scatter": 0.0}
    by_role: dict[str, float] = {}
    phase_s: dict[str, float] = {}
    exposed = 0.0
    one_call: dict[str, float] = {}
    for t in collectives:
        ranks = degrees.size(t.group)
        per_node = degrees.ranks_per_node(t.group, nproc_per_node)
        single = collective_time(t.kind, t.nbytes, ranks, per_node, rates).time_s
        total = single * t.calls
        per_kind[t.kind] += total
        by_role[t.role] = by_role.get(t.role, 0.0) + total
        if t.phase in (BUCKETED_BACKWARD, UNIT_FORWARD, UNIT_BACKWARD, UNIT_BACKWARD_LAST):
            phase_s[t.phase] = phase_s.get(t.phase, 0.0) + total
            one_call[t.phase] = one_call.get(t.phase, 0.0) + single
            if t.phase == BUCKETED_BACKWARD:
                bucket = min(bucket_bytes, t.nbytes)
                one_call["last_bucket"] = collective_time(
                    t.kind, bucket, ranks, per_node, rates
                ).time_s
        else:
            exposed += total

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
    if UNIT_BACKWARD in phase_s or UNIT_BACKWARD_LAST in phase_s:
        gather = phase_s.get(UNIT_BACKWARD, 0.0) / units
        reduce = phase_s.get(UNIT_BACKWARD_LAST, 0.0) / n_layers  # last micro-step only
        exposed += max(0.0, gather - unit_backward) * (units - n_layers)
        exposed += max(0.0, gather + reduce - unit_backward) * n_layers
        # The last unit's reduction has no backward left to hide behind.
        exposed += min(reduce, one_call.get(UNIT_BACKWARD_LAST, 0.0))
    return CommTime(per_kind, exposed, by_role)
