"""The step model's layout-specific parts: pipelines (bubble per schedule, sends over NVLink or
the NIC, in-flight microbatches), async TP's overlap, the memory of a published run that ran,
and the kernels (attention, block, loss) as an input."""

from __future__ import annotations

import pytest

from launch.conf_tree import load_gpu_profile
from launch.perfmodel.compute import RUNTIME_KERNELS, Kernels, memory_bound_bytes, optimizer_step_s
from launch.perfmodel.hardware import part_rates
from launch.perfmodel.pipelined import in_flight
from launch.perfmodel.step import Placement, predict
from tests.conftest import compose_run_config, published_points
from train.spec.degrees import plan_layout
from train.spec.shapes import count_params

LLAMA = ["model=llama_7b", "train.seq_len=4096", "train.micro_batch=1"]


def prediction(gpu: str, nodes: int, *overrides: str, kernels: Kernels = RUNTIME_KERNELS):
    cfg = compose_run_config([f"gpu={gpu}", "run_dir=/unused", *overrides])
    world = 8 * nodes
    plan = plan_layout(cfg, world, 8)
    return predict(
        cfg,
        plan,
        Placement(world, 8, nodes),
        global_batch=cfg.train.global_batch,
        precision="bf16",
        rates=part_rates(cfg.gpu),
        kernels=kernels,
    )


PIPELINE = [*LLAMA, "parallel=pp", "parallel.pp=8", "parallel.dp_replicate=1"]


@pytest.mark.parametrize(
    ("schedule", "stages_per_rank", "idle_slots"),
    [
        ("gpipe", 1, 7),
        ("one_f_one_b", 1, 7),
        ("interleaved_one_f_one_b", 2, 3.5),
        ("interleaved_zero_bubble", 2, 7 / 6),
        ("zero_bubble_v", 2, 0.0),
    ],
)
def test_the_bubble_is_the_schedules_idle_slots_over_its_microbatches(
    schedule, stages_per_rank, idle_slots
):
    """p = 8 stages on one node, m = 16 microbatches: the busiest rank idles b of m + b slots
    (train/spec/stages.py's predicted bubble), charged on its schedule: compute and sends,
    less the AdamW step that runs after it."""
    pred = prediction(
        "h100_sxm",
        1,
        *PIPELINE,
        "train.global_batch=16",
        f"parallel.pp_schedule={schedule}",
        f"parallel.pp_stages_per_rank={stages_per_rank}",
    )
    busy = pred.compute.total_s + pred.pipeline_s
    model = compose_run_config(["model=llama_7b", "run_dir=/unused"]).model
    stage = count_params(model) / 8  # the busiest stage holds about an eighth
    adamw = optimizer_step_s(stage, 1, part_rates(load_gpu_profile("h100_sxm")))
    assert pred.bubble_s == pytest.approx((busy - adamw) * idle_slots / 16, rel=0.05)
    assert pred.bubble_s < busy * idle_slots / 16 or idle_slots == 0
    assert pred.step_time_s >= busy + pred.bubble_s


def test_stage_sends_cross_the_nic_when_stages_span_nodes():
    inside = prediction("h100_sxm", 1, *PIPELINE, "train.global_batch=16")
    across = prediction(
        "h100_sxm",
        8,
        *LLAMA,
        "parallel=pp",
        "parallel.pp=8",
        "parallel.dp_replicate=8",
        "train.global_batch=128",
    )
    # The same activations per microbatch, 45 GB/s of NIC instead of 371 of NVLink.
    assert across.pipeline_s > 5 * inside.pipeline_s > 0


def test_gpipe_holds_every_microbatch_and_one_f_one_b_only_the_pipeline_depth():
    gpipe = prediction(
        "h100_sxm", 1, *PIPELINE, "train.global_batch=32", "parallel.pp_schedule=gpipe"
    )
    ofob = prediction("h100_sxm", 1, *PIPELINE, "train.global_batch=32")
    # 32 microbatches in flight on every rank, against at most 8 (rank 0) under 1F1B.
    assert gpipe.memory.activation_bytes > 3 * ofob.memory.activation_bytes
    plan = plan_layout(
        compose_run_config(["run_dir=/x", *PIPELINE, "train.global_batch=32"]), 8, 8
    ).pipeline
    assert [in_flight(plan, r) for r in (0, 7)] == [8, 1]


def test_async_tp_hides_the_sequence_parallel_collectives_behind_their_matmuls():
    tp = [*LLAMA, "parallel=tp", "train.global_batch=1"]
    vanilla = prediction("h100_sxm", 1, *tp)
    overlapped = prediction("h100_sxm", 1, *tp, "parallel.async_tp=true")
    assert overlapped.step_time_s < vanilla.step_time_s
    activations = vanilla.comm_by_role["activations"]
    # What stays exposed: at least the first chunk, 1/tp of each all-gather / reduce-scatter.
    assert overlapped.exposed_comm_s >= activations / 8 * 0.99
    assert vanilla.exposed_comm_s >= activations


def test_async_tp_leaves_the_reduce_scatters_no_single_matmul_produces_exposed():
    """torch's micro-pipelining pass (torch/_inductor/fx_passes/micro_pipeline_tp.py) splits a
    reduce-scatter only with the one matmul producing it, in a compiled graph: a block's input
    gradient sums wq's, wk's and wv's (w1's and w3's), the embedding's output is a lookup and
    the head runs eager (only the blocks are compiled), so those stay whole; so do the
    gathers of the head's input and of the embedding's gradient."""
    from launch.perfmodel.collectives import collective_time
    from train.spec.traffic import Phase, StepShape, step_collectives

    tp = [*LLAMA, "parallel=tp", "train.global_batch=1", "parallel.async_tp=true"]
    cfg = compose_run_config(["gpu=h100_sxm", "run_dir=/unused", *tp])
    plan = plan_layout(cfg, 8, 8)
    collectives = step_collectives(cfg.model, plan, StepShape(1, 4096, 1, False, "bf16"))
    activations = [c for c in collectives if c.role == "activations"]
    whole = [c for c in activations if c.phase == Phase.exposed]
    layers = cfg.model.n_layers
    assert sorted((c.kind, c.calls) for c in whole) == [
        ("all_gather", 1),  # the head's input
        ("all_gather", 1),  # the embedding's gradient
        ("reduce_scatter", 1),  # the embedding's output
        ("reduce_scatter", 2 * layers + 1),  # the blocks' and the head's input gradients
    ]
    assert all(c.phase == Phase.tp_matmul for c in activations if c not in whole)
    rates = part_rates(cfg.gpu, precision="bf16")
    whole_s = sum(collective_time(c.kind, c.nbytes, 8, 8, rates).time_s * c.calls for c in whole)
    overlapped = prediction("h100_sxm", 1, *tp)
    assert overlapped.exposed_comm_s > whole_s


def test_torchtitans_llama2_13b_on_64_a100_fits_as_it_ran():
    """Published: torchtitan, Llama 2 13B, 64 x A100 80GB, FSDP, seq 4096, local batch 2, no
    activation checkpointing (2,162 tokens/s/GPU): the model must not refuse it."""
    pred = prediction(
        "a100_80g",
        8,
        "model=llama_13b",
        "parallel=fsdp",
        "train.seq_len=4096",
        "train.micro_batch=2",
        "train.global_batch=128",
    )
    assert pred.fits, pred.memory.as_dict()
    assert pred.memory.peak_bytes > 55 * 2**30  # and not by leaving most of it out


def test_every_published_run_fits_as_it_ran():
    """bench/published_points.py's runs (the 35 of its table, llm-foundry's 184 other
    FULL_SHARD rows and the flash-attention repository's 5 GPT3 rows) all ran on their parts:
    the model's peak memory for each (torchtitan's op-level SAC as its policy saves, MPT's and
    Megatron's GELU MLP and the fused losses as theirs) is within the usable memory, and not by
    counting too little: the fullest runs come within 10% of the edge (llm-foundry's MPT-1B on
    32 A100 40GB: 0.99)."""
    pp = published_points()
    runs = [*pp.RUNS, *pp.foundry_sweep_runs(), *pp.FLASH_ATTN_RUNS]
    shares = {run.config: pp.peak_memory(run) for run in runs}
    refused = [config for config, (peak, usable) in shares.items() if peak > usable]
    assert not refused
    assert max(peak / usable for peak, usable in shares.values()) > 0.9


def test_a_published_out_of_memory_run_is_refused():
    """torchtitan's Llama 2 70B at local batch 2 with op-level SAC ran out of memory on its 64
    A100 80GB (docs/performance.md, footnote 1): the model's peak must exceed the usable."""
    pp = published_points()
    assert pp.OUT_OF_MEMORY
    for run in pp.OUT_OF_MEMORY:
        peak, usable = pp.peak_memory(run)
        assert peak > usable, run.config


def test_the_docs_tables_are_what_the_model_predicts_today():
    """docs/performance-model.md's published-points tables are generated: a model change that
    moves a number must regenerate them (python bench/published_points.py --write)."""
    assert published_points().main(["--check"]) == 0


def test_every_published_run_is_mapped_to_a_configuration_this_project_runs():
    """bench/published_points.py predicts each published run "as this project would run it":
    the mapped configuration must pass the run rules (check_run), or the prediction is of a
    run nobody can start here (Megatron's tied embedding across pipeline stages was one)."""
    pp = published_points()
    runs = [*pp.RUNS, *pp.FP8_RUNS, *pp.NVIDIA_RUNS, *pp.MOE_RUNS, *pp.foundry_sweep_runs()]
    refused = {run.config: why for run in runs if (why := pp._run_refusal(run))}
    assert refused == {}


def test_the_attention_kernel_is_an_input():
    """Unfused attention (SDPA math, Megatron-LM before FlashAttention) runs every score and
    streams the score matrix: slower than flash at the same shape."""
    fsdp = [*LLAMA, "parallel=fsdp", "train.global_batch=8"]
    flash = prediction("a100_80g", 1, *fsdp)
    math = prediction("a100_80g", 1, *fsdp, kernels=Kernels(attention="math"))
    assert math.compute.attention_s > 2 * flash.compute.attention_s
    assert math.compute.matmul_s == flash.compute.matmul_s


def test_flashattention_in_triton_is_fa2s_flops_at_its_papers_slowdown():
    """flash_triton (llm-foundry's attn_impl: triton): FA2's FLOPs, the forward 1.4 and the
    backward 2 times as long (FA2 paper section 4.1), so between 1.4x and 2x flash's time,
    nearer 2x (the backward is 5 of FA2's 7 units); nothing else changes."""
    fsdp = [*LLAMA, "parallel=fsdp", "train.global_batch=8"]
    flash = prediction("h100_sxm", 1, *fsdp)
    triton = prediction("h100_sxm", 1, *fsdp, kernels=Kernels(attention="flash_triton"))
    slowdown = triton.compute.attention_s / flash.compute.attention_s
    assert slowdown == pytest.approx((2 * 1.4 + 5 * 2.0) / 7)
    assert triton.compute.matmul_s == flash.compute.matmul_s
    assert triton.compute.memory_s == flash.compute.memory_s


def test_flashattention_1_takes_twice_fa2s_time_on_both_passes():
    """flash_v1 (FlashAttention's 2022 CUDA kernels): FA2's FLOPs at the FA2 paper's "around
    2x" in both passes; nothing else changes."""
    fsdp = [*LLAMA, "parallel=fsdp", "train.global_batch=8"]
    flash = prediction("a100_80g", 1, *fsdp)
    v1 = prediction("a100_80g", 1, *fsdp, kernels=Kernels(attention="flash_v1"))
    assert v1.compute.attention_s / flash.compute.attention_s == pytest.approx(2.0)
    assert (v1.compute.matmul_s, v1.compute.memory_s) == (
        flash.compute.matmul_s,
        flash.compute.memory_s,
    )


def test_mpts_block_and_fused_loss_stream_fewer_bytes_and_change_nothing_else():
    """Kernels(block="mpt", loss="fused") (llm-foundry's MPT, bench/published_points.py's
    sensitivity table): its 16-bit residual, LayerNorm, GELU and no rope stream 60 bytes per d
    element and 18 per f element against 168 and 30, flash_attn's cross-entropy 8 per vocab
    entry against 20; its 4 GEMMs and 5 elementwise kernels a block leave fewer gaps; matmuls
    and attention are unchanged. MPT has no compiled counts, and an unknown kernel is refused."""
    from launch.perfmodel import compute

    fsdp = [*LLAMA, "parallel=fsdp", "train.global_batch=8"]
    ours = prediction("h100_sxm", 1, *fsdp)
    mpt = prediction("h100_sxm", 1, *fsdp, kernels=Kernels(block="mpt", loss="fused"))
    assert mpt.compute.matmul_s == ours.compute.matmul_s
    assert mpt.compute.attention_s == ours.compute.attention_s
    assert mpt.compute.gaps_s < ours.compute.gaps_s
    cfg = compose_run_config(["gpu=h100_sxm", "run_dir=/unused", *fsdp])
    m, plan = cfg.model, plan_layout(cfg, 8, 8)
    given = {"tokens": 4096, "accum": 1, "precision": "bf16", "optimizer_split": 8}
    whole = compute.memory_bound_bytes(m, plan, **given)
    block = compute.memory_bound_bytes(m, plan, **given, kernels=Kernels(block="mpt"))
    both = compute.memory_bound_bytes(m, plan, **given, kernels=Kernels(block="mpt", loss="fused"))
    per_block = (168 - 60) * m.d_model + (30 - 18) * m.ffn_hidden  # bf16: half width 1
    assert whole - block == pytest.approx(4096 * m.n_layers * per_block)
    assert block - both == pytest.approx(4096 * (20 - 8) * m.vocab_size)
    with pytest.raises(ValueError, match="no compiled counts"):
        compute.memory_bound_bytes(m, plan, **given, compiled=True, kernels=Kernels(block="mpt"))
    with pytest.raises(ValueError, match="block kernel 'gpt': one of llama, mpt, megatron"):
        Kernels(block="gpt")


def test_megatrons_block_adds_its_attention_dropout_to_the_math_paths_score_traffic():
    """Kernels(block="megatron") on the math path: the dropout on the probabilities streams
    10 more bytes per score element and block (5 per replay), at the HBM rate; flash attention
    has no score matrix to drop out, so nothing changes there."""
    from launch.perfmodel import compute

    fsdp = [*LLAMA, "parallel=fsdp", "train.global_batch=8"]
    math, megatron_math = (
        Kernels(attention="math"),
        Kernels(attention="math", block="megatron"),
    )
    ours = prediction("a100_80g", 1, *fsdp, kernels=math)
    theirs = prediction("a100_80g", 1, *fsdp, kernels=megatron_math)
    cfg = compose_run_config(["gpu=a100_80g", "run_dir=/unused", *fsdp])
    m, rates = cfg.model, part_rates(cfg.gpu)
    tokens = cfg.train.seq_len * cfg.train.micro_batch * ours.accum_steps
    scores = m.n_heads * cfg.train.seq_len * tokens * m.n_layers  # no checkpointing
    extra_s = 10 * scores / (rates.hbm_gbytes_per_s * 1e9)
    assert theirs.compute.attention_s - ours.compute.attention_s == pytest.approx(extra_s)
    flash = prediction("a100_80g", 1, *fsdp, kernels=Kernels(block="megatron"))
    assert flash.compute.attention_s == prediction("a100_80g", 1, *fsdp).compute.attention_s
    assert compute.MEGATRON_BLOCK.d_bytes < compute.ELEMENTWISE_D


def test_train_compile_fuses_the_elementwise_work_and_nothing_else():
    """train.compile=true: the blocks' elementwise bytes fall to the fused regions' counts
    (compute.py: 36 of 56 per d element, 6 of 10 per f element), the loss loses its fp32 copy,
    fewer kernels leave fewer gaps; matmuls, attention and the collectives are unchanged."""
    fsdp = [*LLAMA, "parallel=fsdp", "train.global_batch=8"]
    eager = prediction("h100_sxm", 1, *fsdp)
    compiled = prediction("h100_sxm", 1, *fsdp, "train.compile=true")
    assert compiled.compute.matmul_s == eager.compute.matmul_s
    assert compiled.compute.attention_s == eager.compute.attention_s
    assert compiled.comm_s == eager.comm_s
    assert compiled.compute.gaps_s < eager.compute.gaps_s
    # FSDP2's copies and AdamW stream the same bytes in both: only the per-token part shrinks,
    # to between the f and d ratios (0.6 and 0.64) of eager's, the head's 6/20 pulling it lower.
    cfg = compose_run_config(["gpu=h100_sxm", *fsdp, "run_dir=/unused"])
    plan = plan_layout(cfg, 8, 8)

    def streamed(tokens: int, compiled: bool) -> float:
        given = dict(tokens=tokens, accum=1, precision="bf16", optimizer_split=8)
        return memory_bound_bytes(cfg.model, plan, **given, compiled=compiled)

    per_token = [streamed(4096, c) - streamed(0, c) for c in (True, False)]
    assert 0.45 < per_token[0] / per_token[1] < 0.75, per_token
    assert streamed(0, True) == streamed(0, False)
    assert compiled.compute.memory_s < eager.compute.memory_s
    assert compiled.step_time_s < eager.step_time_s


@pytest.mark.parametrize(
    "layout",
    [
        # A pipeline stage accumulates unsharded gradients in the reduce dtype (bf16: as they
        # are, no upcast), and holds them between microbatches.
        ["parallel=pp_fsdp", "parallel.pp=2", "parallel.dp_shard=4"],
        # FSDP keeping its unsharded gradients: the same, in the runtime's loop.
        ["parallel=fsdp", "parallel.fsdp_reduce_every_micro_step=false"],
    ],
)
def test_a_bf16_reduce_dtype_streams_and_keeps_fewer_gradient_bytes(layout):
    run = [*LLAMA, *layout, "train.global_batch=64"]
    fp32 = prediction("h100_sxm", 1, *run)
    bf16 = prediction("h100_sxm", 1, *run, "parallel.fsdp_reduce_dtype=bf16")
    assert bf16.compute.memory_s < fp32.compute.memory_s
    assert bf16.memory.transient_bytes < fp32.memory.transient_bytes
