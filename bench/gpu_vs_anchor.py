"""The reference transformer through its own worker beside the plain-PyTorch anchor, on one
device, at the same shapes and precisions; prints a table and checks the precision issue's
targets. A benchmark, not a test: numbers go to results/, never into assertions.

    python bench/gpu_vs_anchor.py --out results/gpu/<date>-<card>      # on a GPU, every point
    python bench/gpu_vs_anchor.py --points "1.3B bf16,d4096 auto" --out ...   # a subset
    python bench/gpu_vs_anchor.py --quick --out /tmp/bench              # CPU smoke run

Five compiled points can exceed 10 minutes on one card: `--points` runs a chosen subset, and
the table and JSON are rewritten after every point, so a run stopped by a time limit keeps
what it measured.

The anchor is ../shared/bench/plain_gpt_anchor.py, copied into bench_local/ (git-ignored) so
that it travels to a device machine with the working tree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
ANCHOR_DIR = REPO / "bench_local"


@dataclass(frozen=True)
class Point:
    name: str
    model: str
    precision: str  # ours: a precision group name (auto resolves per card)
    seq_len: int
    batch: int
    anchor: (
        tuple | None
    )  # plain_gpt_anchor.train_point args: (name, d, layers, heads, seq, batch, prec)


FULL = [
    Point(
        "1.3B bf16", "gpt_1_3b", "bf16", 2048, 8, ("gpt1.3b_bf16", 2048, 24, 16, 2048, 8, "bf16")
    ),
    Point("1.3B auto", "gpt_1_3b", "auto", 2048, 8, ("gpt1.3b_fp8", 2048, 24, 16, 2048, 8, "fp8")),
    Point(
        "d4096 bf16", "d4096_l4", "bf16", 2048, 8, ("d4096_l4_bf16", 4096, 4, 32, 2048, 8, "bf16")
    ),
    Point("d4096 auto", "d4096_l4", "auto", 2048, 8, ("d4096_l4_fp8", 4096, 4, 32, 2048, 8, "fp8")),
    Point(
        "125M bf16", "gpt_125m", "bf16", 1024, 32, ("gpt124m_bf16", 768, 12, 12, 1024, 32, "bf16")
    ),
]
QUICK = [
    Point("tiny fp32", "tiny", "fp32", 64, 4, ("tiny_fp32", 128, 4, 4, 64, 4, "fp32")),
    Point("tiny auto", "tiny", "auto", 64, 4, None),
]


def run_ours(point: Point, out: Path, on_gpu: bool, steps: int, warmup: int) -> dict:
    run_dir = out / "ours" / point.name.replace(" ", "_")
    cmd = [
        sys.executable,
        "-m",
        "launch",
        "sweep=none",
        "cluster.nproc_per_node=1",
        "gpu=auto",
        f"model={point.model}",
        f"precision={point.precision}",
        f"train.compile={str(on_gpu).lower()}",
        f"train.seq_len={point.seq_len}",
        f"train.micro_batch={point.batch}",
        f"train.global_batch={point.batch}",
        f"train.steps={steps}",
        f"train.warmup_steps={warmup}",
        "wandb.mode=disabled",
        f"run_dir={run_dir}",
        "overwrite=true",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        return {"error": (result.stderr or result.stdout)[-600:]}
    return ours_row(run_dir)


def ours_row(run_dir: Path) -> dict:
    """The table's figures from a finished run of ours (its summary.json and config.yaml)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "precision": summary["precision"]["resolved"],
        "tokens_per_s": summary["tokens_per_s"],
        "model_tflops": summary["model_tflops_per_device"],
        "mfu_bf16_peak": mfu_vs_bf16_peak(summary, run_dir / "config.yaml"),
        "peak_memory_gib": summary["peak_memory_bytes"] / 2**30,
        "reason": summary["precision"]["reason"],
    }


def mfu_vs_bf16_peak(summary: dict, config_path: Path) -> float | None:
    """Model TFLOP/s over the profile's dense bf16 peak, whatever precision ran: the anchor's
    column. summary.json's mfu_vs_bf16_peak is set for fp8 runs only (a bf16 run's is its
    mfu), so reading it alone wrote null for every bf16 row of 2026-11-28."""
    gpu = yaml.safe_load(config_path.read_text()).get("gpu") or {}
    peak = (gpu.get("peak_tflops") or {}).get("bf16")
    tflops = summary.get("model_tflops_per_device")
    return tflops / peak if peak and tflops is not None else None


def run_anchor(point: Point, on_gpu: bool, steps: int) -> dict:
    if point.anchor is None:
        return {}
    name, d, layers, heads, seq, batch, precision = point.anchor
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import plain_gpt_anchor as a; "
        f"r = a.train_point({name!r}, {d}, {layers}, {heads}, {seq}, {batch}, {precision!r}, "
        f"steps={steps}, compile_={on_gpu}); print(json.dumps(r))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(ANCHOR_DIR)], capture_output=True, text=True
    )
    if result.returncode != 0:
        return {"error": result.stderr[-600:]}
    r = json.loads(result.stdout.strip().splitlines()[-1])
    return {
        "precision": precision,
        "tokens_per_s": r["tokens_per_s"],
        "model_tflops": r["model_tflops"],
        "mfu_bf16_peak": r["mfu_vs_bf16_peak"],
        "peak_memory_gib": r["max_mem_GiB"],
    }


def fmt(row: dict, key: str, spec: str) -> str:
    value = row.get(key)
    return "n/a" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--points", help="comma list of point names to run (default: all); see FULL in the source"
    )
    args = parser.parse_args()
    if not (ANCHOR_DIR / "plain_gpt_anchor.py").is_file():
        print(
            "error: bench_local/plain_gpt_anchor.py is missing: "
            "cp ../shared/bench/plain_gpt_anchor.py bench_local/",
            file=sys.stderr,
        )
        return 2

    import torch

    on_gpu = torch.cuda.is_available()
    card = torch.cuda.get_device_name() if on_gpu else "cpu"
    points = QUICK if args.quick else FULL
    if args.points:
        wanted = [name.strip() for name in args.points.split(",")]
        unknown = [n for n in wanted if n not in {p.name for p in points}]
        if unknown:
            names = ", ".join(p.name for p in points)
            print(f"error: --points: unknown {unknown}; choose from: {names}", file=sys.stderr)
            return 2
        points = [p for p in points if p.name in wanted]
    steps, warmup = (5, 2) if args.quick else (13, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for point in points:
        print(f"== {point.name}", flush=True)
        ours = run_ours(point, args.out, on_gpu, steps, warmup)
        anchor = run_anchor(point, on_gpu, steps - warmup)
        rows.append({"point": point.name, "ours": ours, "anchor": anchor})
        print(json.dumps(rows[-1]), flush=True)
        text = write_results(args, rows, card, torch.__version__)  # after every point
    print(text)
    return 0


def write_results(args, rows: list[dict], card: str, torch_version: str) -> str:
    lines = [
        f"# Reference transformer vs plain-PyTorch anchor: {card}",
        "",
        f"torch {torch_version}, {date.today().isoformat()}, command: "
        f"`python bench/gpu_vs_anchor.py{' --quick' if args.quick else ''} --out {args.out}`",
        "",
        "| point | impl | precision | tokens/s | model TFLOP/s | MFU (bf16 peak) | peak mem GiB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        for impl in ("ours", "anchor"):
            r = row[impl]
            if not r:
                continue
            if "error" in r:
                lines.append(f"| {row['point']} | {impl} | error: {r['error'][-120:]!r} | | | | |")
                continue
            lines.append(
                f"| {row['point']} | {impl} | {r['precision']} | {fmt(r, 'tokens_per_s', ',.0f')} "
                f"| {fmt(r, 'model_tflops', '.1f')} | {fmt(r, 'mfu_bf16_peak', '.1%')} "
                f"| {fmt(r, 'peak_memory_gib', '.1f')} |"
            )
    lines += ["", *target_lines(rows)]
    text = "\n".join(lines) + "\n"
    (args.out / "gpu_vs_anchor.md").write_text(text)
    (args.out / "gpu_vs_anchor.json").write_text(json.dumps(rows, indent=1) + "\n")
    return text


def target_lines(rows: list[dict]) -> list[str]:
    """The precision issue's targets, judged from this run's numbers."""
    by_point = {row["point"]: row for row in rows}

    def tps(point: str, impl: str = "ours"):
        return by_point.get(point, {}).get(impl, {}).get("tokens_per_s")

    checks = []
    ours, anchor = tps("1.3B bf16"), tps("1.3B bf16", "anchor")
    if ours and anchor:
        checks.append(f"- 1.3B bf16: ours / anchor = {ours / anchor:.3f} (target >= 1.0)")
    for shape, target in (("d4096", 1.3), ("1.3B", 1.0)):
        auto, bf16 = tps(f"{shape} auto"), tps(f"{shape} bf16")
        resolved = by_point.get(f"{shape} auto", {}).get("ours", {}).get("precision")
        if auto and bf16 and resolved == "bf16":
            # auto chose bf16 (no layer wide enough): the ratio would compare noise.
            checks.append(f"- {shape}: auto resolved to bf16, so auto / bf16 is not a target")
        elif auto and bf16:
            checks.append(f"- {shape}: auto / bf16 = {auto / bf16:.3f} (target >= {target})")
    return checks or ["- no target applies to these points"]


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
