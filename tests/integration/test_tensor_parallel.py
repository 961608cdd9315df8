"""Tensor parallelism as Megatron-LM and torchtitan run it, at 4 ranks: TP over every rank
and TP x FSDP (2 x 2), with and without sequence parallelism, with the vocabulary split
(vocab-parallel embedding and head, the loss on the sharded logits) and fused AdamW on
DTensors, trains loss for loss like one rank (fp32, relative 1e-5); counted collectives equal
train/spec/traffic.py's; and an fp16 overflow in one rank's shard makes every rank skip the
step (the found-inf flag reduced over the whole world). The 2-rank TP cases run with the
other layouts in tests/integration/test_parallel.py.

One torchrun start of 4 ranks runs every case (tests/ranks/tp_ranks.py); the references run
in-process as one rank. 4 ranks share 2 cores here: slow, not wrong.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import (
    LOSS_FOR_LOSS,
    LOSS_FOR_LOSS_STEPS,
    losses,
    rank_config,
    run_one_rank_here,
    torchrun,
)
from train.spec.rules import check_run
from train.spec.traffic import KINDS

COMMON = [*LOSS_FOR_LOSS, "model.n_layers=2"]
KV4 = ["model.n_kv_heads=4"]  # tiny has 2 kv heads: TP 4 needs 4
ONE_RANK = {"one_rank": [], "one_rank_kv4": KV4}
FOUR_RANKS = {  # name: (overrides, its one-rank reference)
    "tp4": (["parallel=tp", *KV4], "one_rank_kv4"),
    "tp4_nosp_fused": (
        ["parallel=tp", *KV4, "parallel.sequence_parallel=false", "train.fused_adamw=true"],
        "one_rank_kv4",
    ),
    "tp_fsdp_2x2_fused": (
        ["parallel=tp_fsdp", "parallel.tp=2", "parallel.dp_shard=2", "train.fused_adamw=true"],
        "one_rank",
    ),
    "tp_fsdp_2x2_nosp": (
        ["parallel=tp_fsdp", "parallel.tp=2", "parallel.dp_shard=2"]
        + ["parallel.sequence_parallel=false"],
        "one_rank",
    ),
}
FP16 = [
    "train.steps=4",  # tests/ranks/tp_ranks.py runs 4: the poisoned step 3 and one after
    "parallel=tp_fsdp",
    "parallel.tp=2",
    "parallel.dp_shard=2",
    "precision=fp16",
    "precision.loss_scale_init=1024",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    for name, overrides in ONE_RANK.items():
        _, path = rank_config(root / name, [*COMMON, *overrides, "cluster.nproc_per_node=1"])
        run_one_rank_here(path)
    paths, cfgs = [], {}
    for name, (overrides, _) in FOUR_RANKS.items():
        cfgs[name], path = rank_config(
            root / name, [*COMMON, *overrides, "cluster.nproc_per_node=4"]
        )
        paths.append(str(path))
    _, fp16 = rank_config(root / "fp16", [*COMMON, *FP16, "cluster.nproc_per_node=4"])
    torchrun(4, "tests.ranks.tp_ranks", str(root), *paths, "--fp16", str(fp16), timeout=900)
    return root, cfgs


@pytest.mark.parametrize("name", list(FOUR_RANKS))
def test_four_ranks_match_one_rank_loss_for_loss(runs, name):
    root, _ = runs
    reference, got = losses(root / FOUR_RANKS[name][1]), losses(root / name)
    assert len(got) == len(reference) == LOSS_FOR_LOSS_STEPS
    assert reference[-1] < reference[0]  # it trains
    assert got == pytest.approx(reference, rel=1e-5, abs=0)


@pytest.mark.parametrize("name", list(FOUR_RANKS))
def test_counted_tp_collectives_equal_the_accounting(runs, name):
    root, cfgs = runs
    counted = json.loads((root / "counted.json").read_text())[name]
    assert counted["unknown"] == []
    summary = json.loads((root / name / "summary.json").read_text())
    computed = summary["comm_bytes_per_step"]
    assert {k: counted["bytes"].get(k, 0) for k in KINDS} == {k: computed[k] for k in KINDS}
    layout = check_run(cfgs[name], 4, 4).layout
    sequence_parallel = "parallel.sequence_parallel=false" not in FOUR_RANKS[name][0]
    assert summary["layout"]["sequence_parallel"] == layout.sequence_parallel == sequence_parallel
    # Every rank of a TP group sees the same rows: accumulation over data-parallel ranks only.
    assert summary["data_parallel_size"] == layout.degrees.dp
    assert summary["grad_accum"] == 8 // (2 * layout.degrees.dp)


def test_an_fp16_overflow_in_one_tp_shard_skips_the_step_on_every_rank(runs):
    root, _ = runs
    ranks = json.loads((root / "fp16_inf.json").read_text())
    assert len(ranks) == 4
    poisoned = 2  # index of step 3
    for record in ranks:
        scale, checksum = record["scale"], record["checksum"]
        assert scale == ranks[0]["scale"]  # every rank took the same decisions
        assert scale[poisoned] == scale[poisoned - 1] / 2  # the overflow halved the scale ...
        assert checksum[poisoned] == checksum[poisoned - 1]  # ... and skipped the update
        assert checksum[poisoned + 1] != checksum[poisoned]  # the next step updates again
