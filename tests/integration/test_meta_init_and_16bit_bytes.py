"""GPU-path fixes checked on 2 CPU ranks (one torchrun start, tests/ranks/init_and_bytes.py):

- meta-device init: llama_7b-shaped layers under fsdp never exist whole on a rank, and every
  layout (fsdp, tp + SP, tp_fsdp, zero3 through deepspeed.zero.Init) starts from exactly the
  weights a plain model gets from the same seed;
- under bf16 autocast, the bytes of every collective (FSDP2's bf16 all-gathers and fp32 or
  bf16 reduce-scatters, TP's fp32 and bf16 activation collectives) equal
  train/spec/traffic.py's, per kind.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import saved_config, torchrun
from train.spec.degrees import plan_layout
from train.spec.traffic import StepShape, comm_bytes_per_step

pytest.importorskip("deepspeed")

KINDS = ("all_reduce", "all_gather", "reduce_scatter")
LLAMA_7B_LAYERS = ["model=llama_7b", "model.n_layers=4", "model.max_seq_len=64"]
BF16_COMMON = [
    "model=tiny",
    "model.n_layers=2",
    "precision=bf16",
    "train.steps=3",
    "train.warmup_steps=1",
    "train.seq_len=32",
    "train.micro_batch=2",
    "train.global_batch=8",
]
BF16_RUNS = {
    "fsdp": ["parallel=fsdp", "parallel.activation_checkpoint=full"],
    "fsdp_reduce_bf16": ["parallel=fsdp", "parallel.fsdp_reduce_dtype=bf16"],
    "hsdp": ["parallel=hsdp", "parallel.dp_replicate=2", "parallel.dp_shard=1"],
    "tp": ["parallel=tp", "parallel.activation_checkpoint=selective"],
    "tp_sp": ["parallel=tp", "parallel.sequence_parallel=true"],
    "tp_fsdp_sp": [
        "parallel=tp_fsdp",
        "parallel.sequence_parallel=true",
        "parallel.activation_checkpoint=full",
    ],
}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_paths")
    memory_cfg, memory = saved_config(root, "memory", [*LLAMA_7B_LAYERS, "parallel=fsdp"])
    init_cfg, init = saved_config(
        root, "init", ["model=tiny", "model.n_layers=2", "model.tie_embeddings=true", "seed=7"]
    )
    runs = {n: saved_config(root, n, [*BF16_COMMON, *o]) for n, o in BF16_RUNS.items()}
    paths = [str(path) for _, path in runs.values()]
    torchrun(2, "tests.ranks.init_and_bytes", str(root), str(memory), str(init), *paths)
    out = json.loads((root / "result.json").read_text())
    return out, memory_cfg, runs


def test_fsdp_rank_never_holds_the_whole_llama_7b_shaped_model(result):
    out, cfg, _ = result
    m = cfg.model
    block = 4 * m.d_model * m.d_model + 3 * m.d_model * m.ffn_hidden + 2 * m.d_model
    full_bytes = 4 * (m.n_layers * block + 2 * m.vocab_size * m.d_model + m.d_model)
    largest_param_bytes = 4 * m.vocab_size * m.d_model  # embedding / head
    for rank in out["memory"]:
        assert rank["param_bytes"] == pytest.approx(full_bytes / 2, rel=0.01)
        # Its own shards, plus one whole parameter being drawn and the shard cut from it,
        # plus 256 MiB for the rest of the process; building the model whole first (the old
        # path) needs at least full_bytes.
        bound = full_bytes / 2 + 1.5 * largest_param_bytes + 256 * 2**20
        assert bound < 0.8 * full_bytes
        assert rank["peak_growth_bytes"] < bound, (rank, full_bytes)


def test_every_layout_starts_from_the_plain_models_weights(result):
    init = result[0]["init"]
    for name in ("fsdp", "tp_sp", "tp_fsdp", "zero3"):
        assert init[name]["params"] == init["plain_params"]  # tied head counted once
        assert init[name]["max_abs_diff"] == 0.0, name


def test_zero3_under_bf16_keeps_float32_rope_tables(result):
    # deepspeed.zero.Init patches torch.arange and casts what it makes to bf16 (issue 22).
    zero3 = result[0]["init"]["zero3_bf16"]
    assert zero3 == {"rope_dtype": "torch.float32", "rope_equal": True, "max_abs_diff": 0.0}


@pytest.mark.parametrize("name", list(BF16_RUNS))
def test_bf16_counted_bytes_equal_computed_bytes(result, name):
    out, _, runs = result
    cfg, path = runs[name]
    counted = out["counted"][name]
    assert counted["unknown"] == []
    summary = json.loads((path.parent / "summary.json").read_text())
    assert summary["precision"]["resolved"] == "bf16"
    computed = summary["comm_bytes_per_step"]
    measured = {kind: counted["bytes"].get(kind, 0) for kind in KINDS}
    assert measured == {kind: computed[kind] for kind in KINDS}
    # ... and 16-bit changed what moves: fewer bytes than the same layout in fp32, except
    # HSDP over 1-rank shards, whose only collective reduces gradients (in fp32).
    plan = plan_layout(cfg, 2, 2)
    shape = StepShape(2, 32, summary["grad_accum"], cfg.train.grad_clip > 0, "fp32")
    fp32 = comm_bytes_per_step(cfg.model, plan, shape)
    if name == "hsdp":
        assert sum(measured.values()) == fp32.total
    else:
        assert sum(measured.values()) < fp32.total
