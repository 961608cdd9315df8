"""Rank-side helper for tests/integration/test_meta_init_and_16bit_bytes.py (2 ranks, gloo).

``torchrun --nproc-per-node 2 -m tests.ranks.init_and_bytes OUT_DIR MEMORY_CONFIG INIT_CONFIG
RUN_CONFIG...`` does three things, in this order, and rank 0 writes OUT_DIR/result.json:

1. memory: builds MEMORY_CONFIG's model through the worker's own path (build_model on the
   meta device, build_layout) and notes each rank's parameter bytes and its peak RSS growth
   while building. First, so the process's peak RSS is this build's.
2. init: builds INIT_CONFIG's model under several layouts (fsdp, tp + SP, tp_fsdp, zero3)
   and notes the largest difference between any gathered parameter and a plain model's.
3. bytes: runs each RUN_CONFIG through worker.run_rank and counts the bytes of the collectives
   of its third step (tests/collective_counting.py).
"""

from __future__ import annotations

import gc
import json
import resource
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from tests.ranks.collective_counting import run_counted
from tests.ranks.leave import leave_after
from train.model.transformer import Transformer
from train.model.weights import canonical_name
from train.parallel.build import build_layout, build_model
from train.runtime import distributed
from train.spec.config import RunConfig, load_run_config
from train.spec.degrees import Degrees, LayoutPlan, plan_layout


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def memory_check(cfg: RunConfig, rank: distributed.RankInfo) -> dict:
    gc.collect()
    before = rss_bytes()
    plan = plan_layout(cfg, rank.world_size, cfg.cluster.nproc_per_node)
    model = build_model(cfg, plan, "fp32", 1, rank.device)
    layout = build_layout(model, cfg, plan, "fp32", 1, rank.device)
    local = sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() * 4
        for p in layout.model.parameters()
    )
    result = {"param_bytes": local, "peak_growth_bytes": peak_rss_bytes() - before}
    del layout, model
    gc.collect()
    return result


def init_check(cfg: RunConfig, rank: distributed.RankInfo) -> dict:
    """Max |gathered - plain| over every parameter, per layout (0.0: identical)."""
    plain = dict(Transformer(cfg.model, seed=cfg.seed).named_parameters())
    layouts = {
        "fsdp": LayoutPlan("fsdp", Degrees(1, 2, 1), False, [1]),
        "tp_sp": LayoutPlan("tp", Degrees(1, 1, 2), True, []),
        "tp_fsdp": LayoutPlan("tp_fsdp", Degrees(1, 1, 2), False, [0, 1]),
        "zero3": LayoutPlan("zero3", Degrees(1, 2, 1), False, []),
    }
    errors = {}
    for name, plan in layouts.items():
        accum = cfg.train.global_batch // (cfg.train.micro_batch * plan.degrees.dp)
        model = build_model(cfg, plan, "fp32", accum, rank.device)
        layout = build_layout(model, cfg, plan, "fp32", accum, rank.device)
        module = getattr(layout.model, "module", layout.model)  # DeepSpeed's engine
        worst, seen = 0.0, 0
        for pname, param in module.named_parameters():
            if hasattr(param, "ds_id"):
                import deepspeed

                with deepspeed.zero.GatheredParameters([param]):
                    full = param.data.detach().clone()
            elif isinstance(param, DTensor):
                full = param.full_tensor().detach()
            else:
                full = param.detach()
            expected = plain[canonical_name(pname)]
            worst = max(worst, float((full - expected).abs().max()))
            seen += 1
        errors[name] = {"max_abs_diff": worst, "params": seen}
        del layout, model
    errors["plain_params"] = len(plain)
    errors["zero3_bf16"] = zero3_bf16_check(cfg, rank, plain)
    return errors


def zero3_bf16_check(cfg: RunConfig, rank: distributed.RankInfo, plain: dict) -> dict:
    """ZeRO-3 built under bf16: zero.Init makes every tensor bf16, the rope tables included,
    unless they are rebuilt after it (train/model/weights.py). Weights: the plain model's,
    rounded to bf16."""
    import deepspeed

    plan = LayoutPlan("zero3", Degrees(1, 2, 1), False, [])
    accum = cfg.train.global_batch // (cfg.train.micro_batch * plan.degrees.dp)
    model = build_model(cfg, plan, "bf16", accum, rank.device)
    reference = Transformer(cfg.model, seed=cfg.seed)
    worst = 0.0
    for pname, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            full = param.data.detach().float().clone()
        expected = plain[canonical_name(pname)].bfloat16().float()
        worst = max(worst, float((full - expected).abs().max()))
    return {
        "rope_dtype": str(model.rope_cos.dtype),
        "rope_equal": bool(
            torch.equal(model.rope_cos, reference.rope_cos)
            and torch.equal(model.rope_sin, reference.rope_sin)
        ),
        "max_abs_diff": worst,
    }


def main(out_dir: Path, memory: Path, init: Path, runs: list[Path]) -> None:
    rank = distributed.init_distributed()
    try:
        memory_result = memory_check(load_run_config(memory), rank)
        per_rank = [None] * rank.world_size
        dist.all_gather_object(per_rank, memory_result)
        init_result = init_check(load_run_config(init), rank)
        counted = {}
        for path in runs:
            counted[path.parent.name] = run_counted(path, rank)
        if rank.is_main:
            result = {"memory": per_rank, "init": init_result, "counted": counted}
            (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    out_dir, memory, init = (Path(a) for a in sys.argv[1:4])
    leave_after(lambda: main(out_dir, memory, init, [Path(p) for p in sys.argv[4:]]))
