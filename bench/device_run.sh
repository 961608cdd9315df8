#!/usr/bin/env bash
# On a lent GPU machine: install the carried wheels (.whl/), then run the benchmark.
# Carry: .whl and bench_local (see bench/fetch_wheels.sh).
set -euo pipefail
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv,noheader || true
python3 bench/gpu_vs_anchor.py --out "${OUT:-results/gpu}/$(date +%F)" "$@"
