"""A pipeline as numbers (no torch): which blocks each stage holds, which rank runs each stage,
what the schedule demands of the microbatch count, and the bubble it predicts.

Read by the driver (validation, before any rank starts: ConfigError names the key), by the
ranks (train/parallel/pipeline_stages.py builds the stages from it) and by the comm volume
(train/spec/stage_traffic.py), so all three agree on the split.

Schedules (parallel.pp_schedule -> torch.distributed.pipelining.schedules class):
  gpipe -> ScheduleGPipe, one_f_one_b -> Schedule1F1B (1 stage per rank);
  interleaved_one_f_one_b -> ScheduleInterleaved1F1B,
  interleaved_zero_bubble -> ScheduleInterleavedZeroBubble (>= 2 stages per rank, round-robin);
  zero_bubble_v -> ScheduleZBVZeroBubble (exactly 2 stages per rank, V-shaped: rank r holds
  stages r and 2p-1-r, so the middle boundary stays on one rank).
"""

from __future__ import annotations

from dataclasses import dataclass

from train.spec.config import ModelConfig, ParallelConfig
from train.spec.config_error import ConfigError

TORCH_SCHEDULES = {
    "gpipe": "ScheduleGPipe",
    "one_f_one_b": "Schedule1F1B",
    "interleaved_one_f_one_b": "ScheduleInterleaved1F1B",
    "interleaved_zero_bubble": "ScheduleInterleavedZeroBubble",
    "zero_bubble_v": "ScheduleZBVZeroBubble",
}
SINGLE_STAGE = ("gpipe", "one_f_one_b")  # one model chunk per rank
INTERLEAVED = ("interleaved_one_f_one_b", "interleaved_zero_bubble")  # >= 2 chunks per rank
V_SHAPED = ("zero_bubble_v",)  # exactly 2 chunks per rank
ZERO_BUBBLE = ("interleaved_zero_bubble", "zero_bubble_v")  # backward split into input, weight


def fp8_schedule_refusal(schedule: str) -> str | None:
    """Why fp8 linears cannot run under ``schedule`` (a parallel.pp_schedule value), or None.
    The zero-bubble schedules split each stage's backward into an input-gradient and a
    weight-gradient pass (torch.distributed.pipelining's stage_backward_input/_weight); fp8
    linears' backward (torchao's autograd function) has not been checked split that way."""
    if schedule not in ZERO_BUBBLE:
        return None
    return (
        f"pp_schedule={schedule} splits each backward into input and weight passes, which "
        "fp8 linears have not been checked under; use one_f_one_b, interleaved_one_f_one_b "
        "or gpipe, or bf16"
    )


@dataclass(frozen=True)
class PipelinePlan:
    schedule: str  # a parallel.pp_schedule value
    pp: int  # ranks in a pipeline (stage groups)
    stages_per_rank: int
    microbatches: int  # per step, per pipeline: the gradient accumulation
    layers_per_stage: tuple[int, ...]  # blocks of each stage, in stage order
    stage_ranks: tuple[int, ...]  # pipeline rank of each stage

    @property
    def stages(self) -> int:
        return self.pp * self.stages_per_rank

    def stages_of(self, pp_rank: int) -> list[int]:
        return [s for s, r in enumerate(self.stage_ranks) if r == pp_rank]

    def layer_ids(self, stage: int) -> range:
        start = sum(self.layers_per_stage[:stage])
        return range(start, start + self.layers_per_stage[stage])

    def sends_per_microbatch(self, pp_rank: int) -> int:
        """Point-to-point sends by ``pp_rank`` per microbatch: each of its stages sends its
        output forward and its input's gradient back, where the neighbour is on another rank."""
        last = self.stages - 1
        sends = 0
        for s in self.stages_of(pp_rank):
            sends += s < last and self.stage_ranks[s + 1] != pp_rank
            sends += s > 0 and self.stage_ranks[s - 1] != pp_rank
        return sends

    @property
    def predicted_bubble(self) -> float:
        """Idle share of a step, b / (m + b), with b the idle slots of one microbatch's
        forward + backward on one stage chunk, assuming every stage takes the same time:
        gpipe and 1F1B p - 1 (Huang et al. 2019; Narayanan et al. 2021); interleaved 1F1B
        (p - 1) / v with v chunks per rank (Narayanan et al. 2021); interleaved zero bubble
        a third of that, ZB-H1's bubble with F = B = W (Qi et al. 2023); zero_bubble_v 0,
        the ZB-V schedule's bubble when F = B = W (in practice they differ, so some remains).
        """
        p, v, m = self.pp, self.stages_per_rank, self.microbatches
        idle = {
            "gpipe": p - 1,
            "one_f_one_b": p - 1,
            "interleaved_one_f_one_b": (p - 1) / v,
            "interleaved_zero_bubble": (p - 1) / (3 * v),
            "zero_bubble_v": 0.0,
        }[self.schedule]
        return idle / (m + idle)

    def as_dict(self) -> dict:
        return {
            "schedule": self.schedule,
            "torch_schedule": TORCH_SCHEDULES[self.schedule],
            "stages": self.stages,
            "stages_per_rank": self.stages_per_rank,
            "microbatches": self.microbatches,
            "layers_per_stage": list(self.layers_per_stage),
            "stage_ranks": list(self.stage_ranks),
            "predicted_bubble": self.predicted_bubble,
        }


def split_layers(n_layers: int, stages: int) -> list[int]:
    """Blocks per stage, contiguous: n_layers // stages each, and the first n_layers % stages
    stages one more (the last stage also runs the head and the loss, so it gets no extra)."""
    base, extra = divmod(n_layers, stages)
    return [base + (s < extra) for s in range(stages)]


def stage_ranks(schedule: str, pp: int, stages_per_rank: int) -> list[int]:
    """Pipeline rank of each stage: round-robin (stage s on rank s mod p), or V-shaped for
    zero_bubble_v (rank r holds stages r and 2p-1-r), as torch's schedules expect."""
    stages = pp * stages_per_rank
    if schedule in V_SHAPED:
        return [s if s < pp else stages - 1 - s for s in range(stages)]
    return [s % pp for s in range(stages)]


def plan_pipeline(
    p: ParallelConfig, model: ModelConfig, pp: int, rows_per_rank: int, accum_steps: int
) -> PipelinePlan:
    """The pipeline of ``p`` at degree ``pp``; ConfigError naming the key when the schedule,
    the model or the batch cannot take it. ``rows_per_rank``: one data-parallel rank's share
    of the global batch; ``accum_steps``: rows_per_rank / train.micro_batch."""
    schedule, v = str(p.pp_schedule), p.pp_stages_per_rank
    if v < 1:
        raise ConfigError("parallel.pp_stages_per_rank", f"{v}: must be >= 1")
    if schedule in SINGLE_STAGE and v != 1:
        raise ConfigError(
            "parallel.pp_stages_per_rank",
            f"{v}: pp_schedule={schedule} runs one stage per rank; use an interleaved schedule "
            "(interleaved_one_f_one_b, interleaved_zero_bubble) for more",
        )
    if schedule in INTERLEAVED and v < 2:
        raise ConfigError(
            "parallel.pp_stages_per_rank",
            f"{v}: pp_schedule={schedule} interleaves several stages per rank; set >= 2, or "
            "use one_f_one_b",
        )
    if schedule in V_SHAPED and v != 2:
        raise ConfigError(
            "parallel.pp_stages_per_rank", f"{v}: pp_schedule={schedule} needs exactly 2"
        )
    if schedule in ZERO_BUBBLE and str(p.activation_checkpoint) != "none":
        # torch's split backward (pipelining/_backward.py stage_backward_weight) runs one
        # autograd.grad per weight group on the retained graph, and each replays a checkpointed
        # block again: 104 block forwards where 1F1B runs 32 (4 blocks x 4 microbatches, a
        # review's count on torch 2.13), which neither the model nor traffic.py counts.
        raise ConfigError(
            "parallel.activation_checkpoint",
            f"{p.activation_checkpoint}: pp_schedule={schedule} computes weight gradients in "
            "separate backward passes, each of which would recompute the checkpointed blocks "
            "again; use activation_checkpoint=none, or a 1F1B schedule with checkpointing",
        )
    stages = pp * v
    if stages > model.n_layers:
        key = "parallel.pp" if pp > model.n_layers else "parallel.pp_stages_per_rank"
        raise ConfigError(
            key,
            f"pp {pp} x pp_stages_per_rank {v} = {stages} stages, more than the "
            f"{model.n_layers} blocks of model {model.name}: a stage needs at least one block",
        )
    m = accum_steps if p.pp_microbatches == -1 else p.pp_microbatches
    if m < 1:
        raise ConfigError("parallel.pp_microbatches", f"{m}: must be >= 1, or -1 for the default")
    if rows_per_rank % m:
        raise ConfigError(
            "parallel.pp_microbatches",
            f"{m} does not divide the {rows_per_rank} rows of the global batch that each "
            "data-parallel rank trains on per step (train.global_batch / data-parallel size)",
        )
    if schedule == "one_f_one_b" and m < stages:
        raise ConfigError(
            "parallel.pp_microbatches",
            f"{m} microbatches, fewer than the {stages} stages: 1F1B needs at least one per "
            "stage (raise train.global_batch or pp_microbatches, or use gpipe)",
        )
    if schedule in INTERLEAVED:
        rounds = max(1, m // pp)
        if m % rounds:
            raise ConfigError(
                "parallel.pp_microbatches",
                f"{m}: pp_schedule={schedule} runs microbatches in rounds of pp={pp}; use a "
                f"multiple of {rounds}, or fewer than {2 * pp}",
            )
    return PipelinePlan(
        schedule=schedule,
        pp=pp,
        stages_per_rank=v,
        microbatches=m,
        layers_per_stage=tuple(split_layers(model.n_layers, stages)),
        stage_ranks=tuple(stage_ranks(schedule, pp, v)),
    )
