"""Expert parallelism (issue 20): model=moe_tiny under parallel=ep on 2 ranks and under
ep x FSDP (and ep x replicas) on 4 trains loss for loss like one rank (fp32, relative 1e-5:
observed <= 2e-7), dropless and with a capacity (dropping, padded all-to-all), with activation
checkpointing and DeepSeek-V3's bias update; MoE under plain FSDP and DDP too. The
collectives counted in each run's third step equal train/spec/traffic.py's accounting: per
rank for every kind but all_to_all, whose bytes depend on where routing sent the tokens,
summed over the ranks.

Two torchrun starts (2 and 4 ranks, tests/ranks/pipeline_ranks.py, which counts every rank's
collectives) run every case, and two more (tests/ranks/expert_gradients.py) every gradient
case; the one-rank references run in-process. The emulated-cluster
case (EP across a throttled link) is tests/integration/test_emulated_expert_parallel.py
(root).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.conftest import (
    LOSS_FOR_LOSS,
    LOSS_FOR_LOSS_STEPS,
    losses,
    rank_config,
    run_one_rank_here,
    torchrun,
)
from train.spec.traffic import KINDS

COMMON = [*LOSS_FOR_LOSS, "model=moe_tiny"]
REFERENCES = {
    "one_rank": [],
    "one_rank_capacity": ["model.capacity_factor=1.0"],
    "one_rank_bias": ["model.router_bias_update=0.001"],
    "one_rank_2_experts": ["model.n_experts=2"],
    "one_rank_16": ["train.global_batch=16"],
    "one_rank_1_expert": ["model.n_experts=1", "model.top_k=1"],
}
TWO_RANKS = {  # name: (overrides, its one-rank reference)
    "ep2": (["parallel=ep", "parallel.ep=2"], "one_rank"),
    "ep2_capacity_checkpointed": (
        ["parallel=ep", "parallel.ep=2", "model.capacity_factor=1.0"]
        + ["parallel.activation_checkpoint=full"],
        "one_rank_capacity",
    ),
    # MoE without EP: every expert on every rank (FSDP: each block one unit; DDP: buckets).
    "fsdp_moe": (["parallel=fsdp"], "one_rank"),
    "ddp_moe": (["parallel=ddp"], "one_rank"),
    # Fewer experts than FSDP shards: the experts are sharded on dim 1, as torchtitan does
    # without EP (dim 0 would be padded to 2 experts, one all-gathered for nothing).
    "fsdp_moe_one_expert": (
        ["parallel=fsdp", "model.n_experts=1", "model.top_k=1"],
        "one_rank_1_expert",
    ),
}
FOUR_RANKS = {
    # Two replicas of an ep_fsdp group (HSDP over its dense shards): the dense parameters on
    # the 2-D mesh (dp_replicate, dp_shard x ep), joined from a flattened mesh
    # (train/parallel/expert_parallel.py fsdp_meshes).
    "ep_fsdp_replicas2": (
        ["parallel=ep_fsdp", "parallel.ep=2", "parallel.dp_replicate=2", "parallel.dp_shard=1"],
        "one_rank",
    ),
    "ep_fsdp_2x2_bias_checkpointed": (
        ["parallel=ep_fsdp", "parallel.ep=2", "parallel.dp_shard=2"]
        + ["model.router_bias_update=0.001", "parallel.activation_checkpoint=full"],
        "one_rank_bias",
    ),
    "ep2_replicas2": (["parallel=ep", "parallel.ep=2", "parallel.dp_replicate=2"], "one_rank"),
    # One expert per EP rank, two FSDP shards: the experts are sharded on dim 1, as torchtitan
    # does (dim 0 would leave each shard a whole expert; train/spec/shapes.py expert_shard_dim).
    "ep_fsdp_2x2_one_expert_per_rank": (
        ["parallel=ep_fsdp", "parallel.ep=2", "parallel.dp_shard=2", "model.n_experts=2"],
        "one_rank_2_experts",
    ),
    # Two micro-steps a step, the unsharded gradients kept and reduced once (what
    # parallel=auto picks for ep_fsdp across nodes): the experts' and the dense shards'
    # reduce-scatters once a step, as the accounting has them.
    "ep_fsdp_2x2_reduce_once": (
        ["parallel=ep_fsdp", "parallel.ep=2", "parallel.dp_shard=2", "train.global_batch=16"]
        + ["parallel.fsdp_reduce_every_micro_step=false"],
        "one_rank_16",
    ),
}
CASES = {**TWO_RANKS, **FOUR_RANKS}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ep")
    for name, overrides in REFERENCES.items():
        _, path = rank_config(
            root / name, [*COMMON, *overrides, "parallel=ddp", "cluster.nproc_per_node=1"]
        )
        run_one_rank_here(path)
    counted = {}
    for nproc, cases in ((2, TWO_RANKS), (4, FOUR_RANKS)):
        paths = [
            str(rank_config(root / name, [*COMMON, *over, f"cluster.nproc_per_node={nproc}"])[1])
            for name, (over, _) in cases.items()
        ]
        out = root / f"ranks{nproc}"
        out.mkdir()
        ranks = torchrun(nproc, "tests.ranks.pipeline_ranks", str(out), *paths, timeout=900)
        (out / "output.txt").write_text(ranks.stdout + ranks.stderr)
        counted.update(json.loads((out / "counted.json").read_text()))
    (root / "counted.json").write_text(json.dumps(counted))
    return root


@pytest.mark.parametrize("name", list(CASES))
def test_expert_parallel_matches_one_rank_loss_for_loss(root, name):
    reference, got = losses(root / CASES[name][1]), losses(root / name)
    assert len(got) == len(reference) == LOSS_FOR_LOSS_STEPS
    assert reference[-1] < reference[0]  # it trains
    assert got == pytest.approx(reference, rel=1e-5, abs=0)


@pytest.mark.parametrize("name", list(CASES))
def test_counted_collectives_equal_the_accounting(root, name):
    ranks = json.loads((root / "counted.json").read_text())[name]
    summary = json.loads((root / name / "summary.json").read_text())
    accounted = summary["comm_bytes_per_step"]
    assert all(r["unknown"] == [] for r in ranks)
    for kind in KINDS:
        counted = [r["bytes"].get(kind, 0) for r in ranks]
        if kind == "all_to_all":  # the EP group's mean per rank: exact summed over the ranks
            assert sum(counted) == accounted[kind] * len(ranks), counted
        else:
            assert counted == [accounted[kind]] * len(ranks), kind
    ep = summary["layout"]["ep"]
    assert (accounted["all_to_all"] > 0) == (ep > 1)


def test_the_summary_and_metrics_say_how_the_experts_were_loaded(root):
    dropless = json.loads((root / "ep2" / "summary.json").read_text())
    assert dropless["model"]["active_params"] < dropless["model"]["params"]
    moe = dropless["moe"]
    assert (moe["n_experts"], moe["top_k"], moe["expert_parallel_ranks"]) == (8, 2, 2)
    assert moe["experts_per_rank"] == 4 and moe["dropped_share_mean"] == 0.0
    assert moe["load_max_over_mean_max"] >= moe["load_max_over_mean_median"] >= 1.0
    assert moe["aux_loss_last"] >= 1.0  # 1 at perfect balance
    lines = (root / "ep2" / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["moe"]["load_max_over_mean"] >= 1.0 for line in lines)
    capped = json.loads((root / "ep2_capacity_checkpointed" / "summary.json").read_text())
    assert 0 < capped["moe"]["dropped_share_mean"] < 1


def test_the_meshes_are_built_the_way_torch_keeps(root):
    """ep and ep_fsdp sliced a flattened dim out of the root mesh (mesh["dp_replicate_ep",
    "dp_shard"]), which torch 2.13 warns will go away, on every rank of every run
    (train/parallel/expert_parallel.py fsdp_meshes)."""
    for nproc in (2, 4):
        output = (root / f"ranks{nproc}" / "output.txt").read_text()
        assert "Slicing a flattened dim" not in output and "deprecated" not in output


GRADIENT_CASES = {  # name: (ranks, overrides)
    "ep2": (2, ["parallel=ep", "parallel.ep=2"]),
    "ep_fsdp_2x2": (4, ["parallel=ep_fsdp", "parallel.ep=2"]),
    "ep2_replicas2": (4, ["parallel=ep", "parallel.ep=2", "parallel.dp_replicate=2"]),
}


@pytest.fixture(scope="module")
def gradient_runs(tmp_path_factory):
    """The one-rank reference's gradients (in-process) and each case's, one torchrun start per
    number of ranks (tests/ranks/expert_gradients.py)."""
    from tests.ranks.expert_gradients import gradients
    from train.runtime import distributed

    root = tmp_path_factory.mktemp("gradients")
    _, reference_path = rank_config(
        root / "one", [*COMMON, "parallel=ddp", "cluster.nproc_per_node=1"]
    )
    saved = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
    try:
        reference = gradients(reference_path, distributed.init_distributed())
    finally:
        os.environ.update(saved)
    for nproc in sorted({n for n, _ in GRADIENT_CASES.values()}):
        args = []
        for name, (n, overrides) in GRADIENT_CASES.items():
            if n == nproc:
                _, path = rank_config(
                    root / name, [*COMMON, *overrides, f"cluster.nproc_per_node={nproc}"]
                )
                args += [str(root / f"{name}.pt"), str(path)]
        torchrun(nproc, "tests.ranks.expert_gradients", *args)
    return reference, {name: torch.load(root / f"{name}.pt") for name in GRADIENT_CASES}


@pytest.mark.parametrize("name", list(GRADIENT_CASES))
def test_every_gradient_is_a_one_rank_runs(gradient_runs, name):
    """Each expert's gradient sums what every EP rank's tokens sent it: averaged over the
    experts' own mesh only, it came out ep times a one-rank run's (2x here), which the
    loss-for-loss check cannot see (AdamW divides the scale out). Dense and expert
    gradients, before clipping, against the one-rank reference of the same rows."""
    reference, runs = gradient_runs
    got = runs[name]
    assert set(got) == set(reference)
    experts = [n for n in got if ".experts." in n]
    assert experts
    for n, grad in got.items():
        ratio = (grad.norm() / reference[n].norm()).item()
        torch.testing.assert_close(
            grad, reference[n], rtol=1e-4, atol=1e-7, msg=f"{n}: norm ratio {ratio:.4f}"
        )
