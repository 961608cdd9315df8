"""The no-sync twin, a second measurement of exposed communication: a synchronised step
against the same step with gradient synchronisation skipped (which layouts can skip it:
train/spec/catalog.py). The steps run in train/measure/profiling.py; this is the arithmetic."""

from __future__ import annotations

from train.measure.step_parts import shares
from train.spec.catalog import layout


def twin_breakdown(
    layout_name: str,
    *,
    step_s: float,
    twin_step_s: float,
    twin_step_s_per_rank: dict[int, float],
    timed_step_s: float | None = None,
) -> dict:
    """summary.json's ``breakdown.twin``: exposed comm ≈ synchronised step − no-sync twin
    step, both medians of steps run in alternation (``step_s``: the synchronised ones).

    ``twin_step_s``: the median over the twin steps of the slowest rank's time in each (a
    synchronised step waits for it too); ``twin_step_s_per_rank``: each rank's own median.
    Only exposed comm is measured this way; compute, overlap and idle are not separable (null).
    """
    exposed = max(0.0, step_s - twin_step_s)
    out = {
        "method": "twin",
        "how": "median synchronised step minus the median no-sync twin step (each the "
        "slowest rank's), run in alternating pairs after the timed steps",
        "skips": layout(layout_name).twin_skips,
        "step_s": step_s,
        "timed_step_s": timed_step_s,
        "twin_step_s": twin_step_s,
        "twin_step_s_per_rank": {str(k): v for k, v in sorted(twin_step_s_per_rank.items())},
        "compute_s": None,
        "comm_s": None,
        "overlapped_comm_s": None,
        "exposed_comm_s": exposed,
        "idle_s": None,
        # The twin step itself: compute, idle and everything that is not skipped comm.
        "not_comm_s": twin_step_s,
    }
    out.update(shares(out))
    return out
