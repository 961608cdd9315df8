"""The Hopper compute constants of launch/perfmodel/hardware.py, measured from this project's own
H100 run: its GEMMs at the step's shapes, its attention, its memory-bound kernels and the gaps
between kernels, from the profiler trace of results/gpu/2026-11-28-h100-sxm/gpt_1_3b (one
H100 SXM, gpt_1_3b, ddp on one rank, bf16 autocast, seq 2048, micro batch 4, accumulation 2,
torch 2.11, eager: two profiled steps).

    python bench/h100_trace_constants.py

It prints, per step: the kernel time of each kind, the FLOPs or bytes the model counts for
it (launch/perfmodel/compute.py), and the achieved share of the datasheet peak that follows.
A measurement of this project's implementation, not of a published run: none of the points
docs/performance-model.md compares against is used here.
"""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from launch.perfmodel.compute import StepFlops, memory_bound_bytes  # noqa: E402
from train.spec import shapes  # noqa: E402
from train.spec.config import load_run_config  # noqa: E402
from train.spec.degrees import plan_layout  # noqa: E402

RUN = REPO / "results" / "gpu" / "2026-11-28-h100-sxm" / "gpt_1_3b"
PEAK_BF16 = 989.4e12  # H100 SXM dense bf16 (conf/gpu/h100_sxm.yaml)
HBM = 3350e9  # H100 SXM datasheet HBM bytes/s
STEPS = 2  # profiled steps in the trace


def kind(name: str) -> str:
    n = name.lower()
    if "flash" in n or "fmha" in n or "cudnn" in n or "attention" in n:
        return "attention"
    if "gemm" in n or "xmma" in n or "cutlass" in n or "nvjet" in n or "cublas" in n:
        return "gemm"
    if "nccl" in n:
        return "nccl"
    return "memory-bound"  # elementwise, reductions, norms, softmax, copies, the optimizer


def main() -> int:
    trace = json.load(gzip.open(RUN / "trace_rank0.json.gz"))
    kernels = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e.get("cat") == "kernel"]
    busy = Counter()
    for e in kernels:
        busy[kind(e["name"])] += e["dur"] * 1e-6 / STEPS
    span = (max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)) * 1e-6
    idle = span / STEPS - sum(busy.values())

    cfg = load_run_config(RUN / "config.yaml")
    plan = plan_layout(cfg, 1, 1)
    accum = cfg.train.global_batch // cfg.train.micro_batch
    tokens = cfg.train.micro_batch * cfg.train.seq_len * accum
    flops = StepFlops.of(cfg.model, plan, cfg.train.seq_len)
    gemm = tokens * (flops.blocks + flops.head) / busy["gemm"] / PEAK_BF16
    hqt = cfg.model.n_heads * shapes.head_dim(cfg.model) * cfg.train.seq_len
    executed = 7 * cfg.model.n_layers * hqt  # causal, FA2's count (compute.EXECUTED_ATTENTION)
    attention = tokens * executed / busy["attention"] / PEAK_BF16
    nbytes = memory_bound_bytes(
        cfg.model, plan, tokens=tokens, accum=accum, precision="bf16", optimizer_split=1
    )
    memory = nbytes / busy["memory-bound"] / HBM
    per_step = len(kernels) / STEPS
    print(f"kernels per step {per_step:.0f}, busy {sum(busy.values()):.4f} s, idle {idle:.4f} s")
    for name, seconds in sorted(busy.items()):
        print(f"  {name:13s} {seconds:.4f} s")
    print(f"GEMM share of the bf16 peak:          {gemm:.3f}")
    print(f"attention share (FA2 count, causal):  {attention:.3f}")
    print(f"memory-bound share of datasheet HBM:  {memory:.3f} ({nbytes / 1e9:.0f} GB counted)")
    print(f"gap per kernel:                       {idle / per_step * 1e6:.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
