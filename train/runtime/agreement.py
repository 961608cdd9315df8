"""What every rank must share before a model is built, and the words for ranks that differ.

Each rank resolves its precision on its own machine (train/spec/precision.py, from what its
node has installed): a node without Transformer Engine or torchao would pick bf16 where the
others pick fp8, build another model, and hang at the first collective whose sizes differ.
So the plans are gathered and compared, and a run whose ranks disagree stops on every rank at
once, naming who chose what. Devices are compared the same way, for a warning: a run can mix
GPU models, but its MFU is then against one profile's peak.
"""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as dist

from train.spec.config_error import ConfigError
from train.spec.precision import PrecisionPlan

T = TypeVar("T")


def every_rank(mine: T) -> list[T]:
    """Every rank's value, in rank order: a collective when a process group is up."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def ranks_by_value(values: list[T]) -> list[tuple[T, list[int]]]:
    """Each distinct value with the ranks that hold it, in order of first appearance."""
    groups: list[tuple[T, list[int]]] = []
    for rank, value in enumerate(values):
        for held, ranks in groups:
            if held == value:
                ranks.append(rank)
                break
        else:
            groups.append((value, [rank]))
    return groups


def rank_ranges(ranks: list[int]) -> str:
    """``rank 3`` or ``ranks 0-6, 8``."""
    spans: list[list[int]] = []
    for rank in sorted(ranks):
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return f"{'ranks' if len(ranks) > 1 else 'rank'} {text}"


def agreed_precision(mine: PrecisionPlan) -> PrecisionPlan:
    """This rank's plan when every rank resolved the same; else ConfigError on every rank."""
    groups = ranks_by_value(every_rank(mine))
    if len(groups) == 1:
        return mine
    said = "; ".join(f"{rank_ranges(r)}: {plan.resolved} ({plan.reason})" for plan, r in groups)
    raise ConfigError(
        "precision.name",
        f"the ranks resolved precision={mine.requested} differently ({said}); they would build "
        "different models and hang: give every node the same fp8 libraries (Transformer Engine, "
        "torchao) and GPUs, or set an explicit precision (bf16)",
    )


def mixed_devices(device_name: str) -> str | None:
    """A warning when the ranks run on devices of different names, else None (collective)."""
    groups = ranks_by_value(every_rank(device_name))
    if len(groups) == 1:
        return None
    said = "; ".join(f"{rank_ranges(ranks)}: {name}" for name, ranks in groups)
    return (
        f"the ranks run on different devices ({said}): every step waits for the slowest, and "
        "MFU uses one profile's peak for all"
    )
