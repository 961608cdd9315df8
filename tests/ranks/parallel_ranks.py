"""Rank-side helper for tests/test_parallel.py: several runs in one 2-rank process group.

``torchrun --nproc-per-node 2 -m tests.ranks.parallel_ranks OUT_DIR RUN_DIR/config.yaml ...`` runs
the worker's loop once per config, one after another, so the layouts share one torchrun
start, one rendezvous and one import of torch and DeepSpeed instead of paying them per
layout; each run writes its metrics.jsonl and summary.json as under ``python -m launch``,
and the bytes of the collectives of its third step, per kind, go to OUT_DIR/counted.json
(tests/ranks/collective_counting.py). Then it applies the tensor-parallel plan to one
TransformerBlock, with and without sequence parallelism, and writes how far its output is
from the whole block's to OUT_DIR/tp_block.json.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.parallel import parallelize_module

from tests.ranks.collective_counting import run_counted
from tests.ranks.leave import leave_after
from train.model.transformer import Transformer
from train.parallel.tensor_parallel import apply_tensor_parallel, block_plan
from train.runtime import distributed
from train.spec.config import ModelConfig, load_run_config


def main(out_dir: Path, config_paths: list[Path]) -> None:
    rank = distributed.init_distributed()
    counted = {}
    try:
        for path in config_paths:
            counted[path.parent.name] = run_counted(path, rank)
        model_cfg = load_run_config(config_paths[0]).model
        tp_block = {**sharded_block_error(model_cfg, rank), **vocab_shards(model_cfg, rank)}
        if rank.is_main:
            (out_dir / "counted.json").write_text(json.dumps(counted, indent=2))
            (out_dir / "tp_block.json").write_text(json.dumps(tp_block, indent=2))
    finally:
        distributed.shutdown()


def vocab_shards(model_cfg: ModelConfig, rank: distributed.RankInfo) -> dict:
    """Rows of the embedding and the head one rank holds under TP over every rank, and
    whether every parameter became a DTensor (what fused AdamW and GradScaler need)."""
    model = Transformer(model_cfg)
    mesh = init_device_mesh("cpu", (rank.world_size,))
    apply_tensor_parallel(model, mesh, sequence_parallel=True)
    return {
        "embedding_rows": model.tok_embeddings.weight.to_local().shape[0],
        "head_rows": model.output.weight.to_local().shape[0],
        "all_dtensors": all(isinstance(p, DTensor) for p in model.parameters()),
    }


def sharded_block_error(model_cfg: ModelConfig, rank: distributed.RankInfo) -> dict:
    """Max |sharded - whole| of one block's output for a fixed input, tp over every rank."""
    torch.manual_seed(0)
    model = Transformer(model_cfg)
    whole = model.layers[1]
    seq_len = 32
    x = torch.randn(2, seq_len, model_cfg.d_model, generator=torch.Generator().manual_seed(1))
    cos, sin = model.rope_cos[:seq_len], model.rope_sin[:seq_len]
    with torch.no_grad():
        expected = whole(x, cos, sin)
    mesh = init_device_mesh("cpu", (rank.world_size,))
    results = {}
    for sequence_parallel in (False, True):
        sharded = parallelize_module(
            copy.deepcopy(whole), mesh, block_plan(whole, sequence_parallel)
        )
        if sequence_parallel:
            # The residual stream is split along the sequence: each rank passes its part.
            rows = seq_len // rank.world_size
            part = slice(rank.rank * rows, (rank.rank + 1) * rows)
            inputs, want = x[:, part], expected[:, part]
        else:
            inputs, want = x, expected
        with torch.no_grad():
            got = sharded(inputs, cos, sin)
        diff = (got - want).abs().max().reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        results["sequence_parallel" if sequence_parallel else "tp"] = {
            "max_abs_diff": float(diff),
            "output_max_abs": float(expected.abs().max()),
        }
    return results


if __name__ == "__main__":
    leave_after(lambda: main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
