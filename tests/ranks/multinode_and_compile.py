"""Rank-side helper for tests/integration/test_multinode_and_compile.py (2 ranks, gloo).

``torchrun --nproc-per-node 2 -m tests.ranks.multinode_and_compile OUT_DIR AUTO_CONFIG
RUN_CONFIG...`` checks, on one process group (rank 0 writes every rank's findings to
OUT_DIR/result.json):

1. shared folders: both ranks play the first rank of a node of their own (local rank 0), once
   with one folder, once with a folder each (a node-local disk at the same path);
2. the precision plan: AUTO_CONFIG (precision=auto on CPU) resolved by rank 1 on a faked
   probe (native bf16) while rank 0 has none, then both on the same probe; device names too;
3. torch.compile: each RUN_CONFIG through worker.run_rank (inductor, blocks and loss
   compiled under ddp and fsdp), with its wall time, graph breaks and what was compiled.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from tests.ranks.leave import leave_after


def folders_check(out_dir: Path, rank: int) -> dict:
    from train.runtime.shared_folders import TOKEN, check_shared_folders
    from train.spec.config_error import ConfigError

    result = {}
    cases = {
        "shared": out_dir / "shared",
        "node_local": out_dir / f"node{rank}",  # each "node" sees its own disk
    }
    for case, folder in cases.items():
        try:
            check_shared_folders({"checkpoint.dir": folder}, rank=rank, local_rank=0, wait_s=0.2)
            result[case] = None
        except ConfigError as exc:
            result[case] = str(exc)
        result[f"{case}_left"] = sorted(p.name for p in folder.glob(TOKEN.format("*")))
    return result


def agreement_check(auto_config: Path, rank: int) -> dict:
    from train.runtime.agreement import agreed_precision, mixed_devices
    from train.spec.config import load_run_config
    from train.spec.config_error import ConfigError
    from train.spec.devices import MachineProbe
    from train.spec.precision import precision_for_run

    cfg = load_run_config(auto_config)
    result = {}
    for case, native_bf16 in (("differ", rank == 1), ("agree", False)):
        probe = MachineProbe(False, False, None, cpu_native_bf16=native_bf16)
        try:
            result[case] = agreed_precision(precision_for_run(cfg, probe)).resolved
        except ConfigError as exc:
            result[case] = str(exc)
    result["devices_differ"] = mixed_devices(f"cpu model {rank}")
    result["devices_agree"] = mixed_devices("cpu model")
    return result


def compile_check(runs: list[Path], rank) -> dict:
    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    from train.model.transformer import TransformerBlock, cross_entropy_loss
    from train.runtime import worker
    from train.spec.config import load_run_config

    def entries(code) -> int:  # compiled variants of a function: dynamo's cache for its code
        return len(torch._C._dynamo.eval_frame._debug_get_cache_entry_list(code))

    result = {}
    for path in runs:
        counters.clear()
        cfg = load_run_config(path)
        started = time.perf_counter()
        worker.run_rank(cfg, path.parent, rank)
        result[path.parent.name] = {
            "seconds": time.perf_counter() - started,
            "graph_breaks": sum(counters["graph_break"].values()),
            "loss_compiled": entries(cross_entropy_loss.__code__),
            "block_compiled": entries(TransformerBlock.forward.__code__),
        }
        torch._dynamo.reset()  # the next layout compiles from scratch, as a new run would
    return result


def main(out_dir: Path, auto_config: Path, runs: list[Path]) -> None:
    # Hermetic and light: inductor's caches under the test's folder, no compile workers.
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(out_dir / "inductor")
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    from train.runtime import distributed
    from train.runtime.agreement import every_rank

    rank = distributed.init_distributed()
    try:
        result = {
            "folders": folders_check(out_dir, rank.rank),
            "agreement": agreement_check(auto_config, rank.rank),
            "compile": compile_check(runs, rank),
        }
        per_rank = every_rank(result)
        if rank.is_main:
            (out_dir / "result.json").write_text(json.dumps(per_rank, indent=2))
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    leave_after(lambda: main(Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]]))
