"""Communication volume per step of a pipeline layout (pp, pp_fsdp), in train/spec/traffic.py's
convention: bytes per rank per optimizer step, per kind; the busiest pipeline rank's.

- send_recv: the activations a stage sends to the next stage's rank and the gradients it
  sends back to the previous one, each [rows, seq_len, d_model] over a step's microbatches
  (so independent of how many microbatches: they split the same rows). Counted once, at the
  sender; a boundary between two stages of one rank (zero_bubble_v's middle) moves nothing.
  Width: the residual stream's dtype, fp32 except under pp_fsdp's 16-bit parameters, where the
  embedding's output and so the whole stream is 16-bit (train/parallel/fsdp.py).
- all_reduce: the loss (float32) from the last stage to the others, every step (the worker
  logs it from rank 0, which may hold no last stage); the gradient norm (float32) when
  clipping; pp with dp_replicate > 1: DDP's all-reduce of the stage's fp32 gradients, once
  per step (PipelineStage reduces on the last microbatch's backward only).
- pp_fsdp with dp_shard > 1: each stage's units are gathered once per step (not resharded
  after forward, nor after backward until the last microbatch) and their gradients
  reduce-scattered once, in fsdp's widths; dims padded to the shard count as FSDP2 does.
"""

from __future__ import annotations

from train.spec.config import ModelConfig
from train.spec.degrees import LayoutPlan
from train.spec.stages import PipelinePlan
from train.spec.traffic import GRAD_NORM_BYTES, GRADIENT_BYTES, CommVolume, _block_params, _numel

LOSS_BYTES = 4  # the loss's float32 scalar


def stage_param_shapes(m: ModelConfig, plan: PipelinePlan, stage: int) -> list[tuple[int, ...]]:
    """Parameter shapes of one stage: its blocks, plus the embedding (first) or the final norm
    and head (last)."""
    shapes = _block_params(m) * plan.layers_per_stage[stage]
    if stage == 0:
        shapes = [(m.vocab_size, m.d_model), *shapes]
    if stage == plan.stages - 1:
        shapes = [*shapes, (m.d_model,), (m.vocab_size, m.d_model)]
    return shapes


def pipeline_volume(model: ModelConfig, layout: LayoutPlan, **kwargs) -> CommVolume:
    """Bytes per step of the busiest rank of a pipeline layout (see the module docstring);
    keyword arguments as ``pipeline_volume_per_rank``."""
    return max(pipeline_volume_per_rank(model, layout, **kwargs), key=lambda v: v.total)


def pipeline_volume_per_rank(
    model: ModelConfig,
    layout: LayoutPlan,
    *,
    rows_per_rank: int,
    seq_len: int,
    sixteen_bit: bool,
    grad_clip: bool,
    fsdp_reduce_dtype: str = "fp32",
) -> list[CommVolume]:
    """Bytes per step of each pipeline rank (index: its place in the pipeline). Every rank
    of a stage group moves the same; ``rows_per_rank`` is one data-parallel rank's rows."""
    plan, d = layout.pipeline, layout.degrees
    fsdp = layout.name == "pp_fsdp"
    stream_width = 2 if fsdp and sixteen_bit else 4
    activation = rows_per_rank * seq_len * model.d_model * stream_width
    per_rank = []
    for r in range(plan.pp):
        volume = CommVolume(send_recv=plan.sends_per_microbatch(r) * activation)
        if plan.pp > 1:
            volume += CommVolume(all_reduce=LOSS_BYTES)
        if grad_clip and d.world > 1:
            volume += CommVolume(all_reduce=GRAD_NORM_BYTES)
        shapes = [s for stage in plan.stages_of(r) for s in stage_param_shapes(model, plan, stage)]
        if not fsdp and d.dp_replicate > 1:
            volume += CommVolume(all_reduce=_numel(shapes) * GRADIENT_BYTES)
        if fsdp and d.dp_shard > 1:
            padded = _numel(shapes, pad_to=d.dp_shard)
            reduce = 2 if sixteen_bit and fsdp_reduce_dtype == "bf16" else 4
            volume += CommVolume(
                all_gather=padded * (2 if sixteen_bit else 4), reduce_scatter=padded * reduce
            )
        per_rank.append(volume)
    return per_rank
