#!/usr/bin/env bash
# The GPU figures of issue 14, in one run of about 8 minutes on a CUDA machine (one GPU is enough):
#
#   1. benchmarks/throughput.py --device cuda --compile: GPT-2 124M (12L/12H/768, context 1024, micro-batch 16)
#      in bf16, train_core's step and a plain nanoGPT-style step in the same run, each eager and compiled:
#      ms/step, tokens/s and MFU against the GPU's published dense bf16 peak.
#   2. benchmarks/workers.py --compare-workers 1,4: the default study (8 trials x 300 steps, pruning off) on this
#      machine's GPU as `sweep lr --workers 1`, then `--workers 4` (four processes sharing the GPU): trials/hour.
#
# Run from anywhere:    bash benchmarks/gpu_evidence.sh
# Logs also go to $OUT/gpu_evidence/ when OUT is set. Needs python3 with torch (CUDA), numpy, tiktoken, rich,
# pyyaml, matplotlib, scipy, and for part 2 optuna 5 and optuna-dashboard (with their dependencies); the
# repository itself is put on PYTHONPATH, no install needed. PYTHON=... picks another interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
LOGS=${OUT:+$OUT/gpu_evidence}
LOGS=${LOGS:-$(mktemp -d)}
mkdir -p "$LOGS"
status=0

part() {  # part NAME SECONDS COMMAND...: run it under a time limit, print it and keep its log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after 10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local code=${PIPESTATUS[0]}
    echo "=== $name: exit $code after $((SECONDS - start))s"
    [ "$code" -eq 0 ] || status=1
}

{
    date -u
    git rev-parse HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
} 2>&1 | tee "$LOGS/machine.log"

part throughput 300 "$PY" benchmarks/throughput.py --device cuda --compile --steps 20
# One GPU for both worker counts (the first visible one), even on a node of several.
first_gpu=${CUDA_VISIBLE_DEVICES:-0}
export CUDA_VISIBLE_DEVICES=${first_gpu%%,*}
part workers 180 "$PY" benchmarks/workers.py --compare-workers 1,4 --trials 8 --steps 300
echo "logs: $LOGS"
exit $status
