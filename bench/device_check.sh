#!/usr/bin/env bash
# On a lent GPU (one card), every GPU check of this round in one call, inside a time budget:
# mamf, `python -m launch gpu=auto`, a profiled 1-GPU gpt_1_3b run with its predicted step
# (through HTA when .whl/extra brought it), the compiled fp8 test, then the
# reference-vs-anchor benchmark (a subset; it writes after every point).
#   device run: bash bench/device_check.sh [SECONDS]   (carry .whl and bench_local)
# Results: $OUT/results.tgz (summaries, metrics, configs, logs, reports), $OUT/console.log.
set -uo pipefail
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
OUT=${OUT:-/tmp/device_out}; mkdir -p "$OUT"
R=/tmp/device_results; rm -rf "$R"; mkdir -p "$R"
export SCALEPROBE_CACHE_DIR=$R/cache
deadline=$(( $(date +%s) + ${1:-480} ))
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD"
fi
# HTA, its imports and pytest: only those the image lacks, so its own pandas/numpy stay.
for whl in .whl/extra/*.whl; do
  [ -e "$whl" ] || continue
  module=$(basename "$whl" | cut -d- -f1)
  case $module in
    holistictraceanalysis) module=hta ;; python_dateutil) module=dateutil ;;
  esac
  python3 -c "import $module" 2>/dev/null || python3 -m pip install -q --no-index --no-deps \
      --no-compile --no-cache-dir --target /tmp/site "$whl"
done
export PYTHONPATH="/tmp/site:$PWD"
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } | tee "$R/machine.txt"

step() {  # step NAME LIMIT_S COMMAND...: runs within the limit and the overall deadline
  local name=$1 limit=$2; shift 2
  local left=$(( deadline - $(date +%s) ))
  (( left < 20 )) && { echo "$name skipped: out of time" | tee -a "$R/steps.txt"; return; }
  (( limit > left )) && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" > "$R/$name.log" 2>&1
  echo "$name exit $? in $(( $(date +%s) - t0 ))s" | tee -a "$R/steps.txt"
  tail -n 15 "$R/$name.log"
}

step mamf 80 python3 -m launch.mamf --seconds 8 --out "$R/mamf.json"
step launch_auto 90 python3 -m launch gpu=auto wandb.mode=disabled run_dir="$R/launch_auto"
step gpt_1_3b 150 python3 -m launch gpu=auto model=gpt_1_3b sweep=none precision=bf16 \
    cluster.nproc_per_node=1 train.seq_len=2048 train.micro_batch=4 train.global_batch=8 \
    train.steps=12 train.warmup_steps=4 profile.enabled=true profile.steps=2 wandb.mode=disabled \
    run_dir="$R/gpt_1_3b"
step report 45 python3 -m launch.report "$R/gpt_1_3b" --out "$R/gpt_1_3b_report"
# Issue 22: the compiled torchao fp8 run (tests/integration/test_multinode_and_compile.py).
step gpu_tests 240 python3 -m pytest -q -p no:cacheprovider \
    tests/integration/test_multinode_and_compile.py -k gpu
step bench 600 python3 bench/gpu_vs_anchor.py --points "1.3B bf16,d4096 bf16,d4096 auto" \
    --out "$R/bench"

cp "$R/steps.txt" "$OUT/steps.txt" 2>/dev/null
# Traces above 8 MB stay behind (the tool returns few files); the breakdown is in summary.json.
find "$R" -name 'trace_rank*.json.gz' -size +8M -delete
tar czf "$OUT/results.tgz" -C "$R" --exclude='*.pt' --exclude='checkpoints' .
ls -la "$OUT"
