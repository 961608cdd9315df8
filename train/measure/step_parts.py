"""The parts of a step every breakdown method reports (trace, twin, HTA), their shares of the
step, and the median step that stands for a window of them."""

from __future__ import annotations

from collections.abc import Sequence

PARTS = ("compute_s", "comm_s", "overlapped_comm_s", "exposed_comm_s", "idle_s")


def shares(seconds: dict) -> dict:
    """``<part>_share`` = part / step for each part present (None where either is None)."""
    step = seconds.get("step_s")
    out = {}
    for part in PARTS:
        if part in seconds:
            value = seconds[part]
            ok = value is not None and step
            out[part.removesuffix("_s") + "_share"] = value / step if ok else None
    return out


def median_breakdown(steps: Sequence[dict]) -> dict:
    """The parts of the step with the median exposed comm (the lower one of an even count),
    so they still add up to its step, with their shares. Ranked by exposed comm, not step
    time: the label rests on it, and one descheduled gloo thread must not decide it."""
    median = sorted(steps, key=lambda s: s["exposed_comm_s"])[(len(steps) - 1) // 2]
    out = {"step_s": median["step_s"], **{part: median[part] for part in PARTS}}
    out.update(shares(out))
    return out
