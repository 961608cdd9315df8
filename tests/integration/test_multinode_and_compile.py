"""Multi-node and compile paths on 2 CPU ranks (one torchrun start,
tests/ranks/multinode_and_compile.py):

- the checkpoint dir must be one folder across nodes: two ranks that each play a node's first
  rank pass with one folder and are both refused, with the folder and the node it misses,
  with a folder each; no token is left behind;
- the precision plan is agreed: a rank whose machine resolves precision=auto otherwise stops
  every rank, naming which ranks chose what; device names are compared for a warning;
- torch.compile (inductor, per block before FSDP2's fully_shard, and the loss) under ddp and
  fsdp: the compiled runs end where the eager one does.

On a GPU (bench/device_check.sh runs it there), torchao's fp8, whose compile is forced, trains
like bf16 with the blocks and the loss compiled.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import losses, run_launch, saved_config, torchrun

COMMON = [
    "model=tiny",
    "model.n_layers=2",
    "gpu=cpu",
    "precision=fp32",
    "train.steps=4",
    "train.warmup_steps=1",
    "train.seq_len=32",
    "train.micro_batch=2",
    "train.global_batch=8",
]
RUNS = {
    "eager_ddp": ["parallel=ddp"],
    "compiled_ddp": ["parallel=ddp", "train.compile=true"],
    "compiled_fsdp": ["parallel=fsdp", "train.compile=true"],
}


def write_config(root, name, overrides):
    return saved_config(root, name, overrides)[1]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode_compile")
    auto = write_config(root, "auto", [*COMMON, "precision=auto"])
    runs = {name: write_config(root, name, [*COMMON, *o]) for name, o in RUNS.items()}
    torchrun(2, "tests.ranks.multinode_and_compile", str(root), str(auto), *map(str, runs.values()))
    return json.loads((root / "result.json").read_text()), root


def test_a_checkpoint_dir_that_is_not_shared_is_refused_on_every_rank(result):
    per_rank, root = result
    for found in per_rank:
        folders = found["folders"]
        assert folders["shared"] is None and folders["shared_left"] == []
        refusal = folders["node_local"]
        assert refusal.startswith(f"checkpoint.dir: {root / 'node0'} is not one folder")
        assert "(rank 1 on " in refusal and "filesystem every node mounts" in refusal
        assert folders["node_local_left"] == []


def test_ranks_that_resolve_different_precisions_all_stop_and_say_who(result):
    per_rank, _ = result
    for found in per_rank:
        differ = found["agreement"]["differ"]
        assert differ.startswith("precision.name: the ranks resolved precision=auto differently")
        assert "rank 0: fp32 (auto on cpu: no native bf16" in differ
        assert "rank 1: bf16 (auto on cpu: native bf16" in differ
        assert found["agreement"]["agree"] == "fp32"
        assert "rank 0: cpu model 0; rank 1: cpu model 1" in found["agreement"]["devices_differ"]
        assert found["agreement"]["devices_agree"] is None


def test_compiled_blocks_and_loss_end_where_eager_does(result):
    per_rank, root = result
    eager = losses(root / "eager_ddp")
    for name in ("compiled_ddp", "compiled_fsdp"):
        for found in per_rank:
            compiled = found["compile"][name]
            assert compiled["block_compiled"] >= 1 and compiled["loss_compiled"] >= 1, compiled
        assert losses(root / name) == pytest.approx(eager, rel=1e-4), name
    assert per_rank[0]["compile"]["eager_ddp"]["loss_compiled"] == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torchao fp8 compiles only on CUDA")
def test_compiled_torchao_fp8_trains_like_bf16_on_a_gpu(tmp_path):
    pytest.importorskip("torchao.float8")
    one_gpu = ["sweep=none", "cluster.nproc_per_node=1", "gpu=auto", "wandb.mode=disabled"]
    run = [*COMMON[:2], *one_gpu, "train.steps=20", "train.seq_len=64", "train.compile=true"]
    run += ["train.micro_batch=4", "train.global_batch=4", "seed=3", "train.lr=3e-3"]
    fp8 = ["precision=fp8", "precision.fp8.backend=torchao", "precision.fp8.min_dim=128"]
    for name, precision in (("bf16", ["precision=bf16"]), ("fp8", fp8)):
        done = run_launch([*run, *precision, f"run_dir={tmp_path / name}"], tmp_path, 600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "fp8" / "summary.json").read_text())
    assert (
        summary["precision"]["resolved"] == "fp8"
        and "emulated" not in summary["precision"]["reason"]
    )
    bf16, fp8_losses = losses(tmp_path / "bf16"), losses(tmp_path / "fp8")
    assert fp8_losses[-1] < fp8_losses[0] - 0.1  # it learns
    worst = max(abs(a - b) / b for a, b in zip(fp8_losses, bf16, strict=True))
    assert worst <= 0.02, (worst, fp8_losses, bf16)  # as the emulated check on CPU
