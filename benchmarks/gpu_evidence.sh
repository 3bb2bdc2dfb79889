#!/usr/bin/env bash
# The GPU figures of issues 22 and 20, in one run of about 8 minutes on a CUDA machine (one GPU is enough). Parts in
# order of value, each under its own time limit, cut to what is left of GPU_EVIDENCE_SECONDS (default 510) in all, so
# that one slow part cannot eat the rest; each prints its figures as they come, so a part cut short keeps them:
#
#   1. throughput-124M, throughput-350M: benchmarks/throughput.py --device cuda --compile --steps 20, one shape each:
#      GPT-2 124M (12L/12H/768) and GPT-2 medium (24L/16H/1024, 350M), context 1024, micro-batch 16, bf16. First the
#      GPU's bf16 matmul peak, measured in the run; then train_core's step and a plain nanoGPT-style step, each eager
#      and compiled: ms/step, tokens/s, MFU against the published dense bf16 peak and against the measured one,
#      seconds to compile (from cold) and graph breaks.
#   2. stacks-default, stacks-mup-proxy: benchmarks/workers.py --compare-workers 1,4 --compare-stacks 1,4,8,16, the
#      default study then the μP proxy (studies/mup-proxy.yaml), 16 trials x 100 steps, pruning off: trials/hour of
#      `sweep lr --workers 1` (which is --stack 1), --workers 4 (four processes sharing the GPU), and --stack 4, 8 and
#      16 on one worker, each against --workers 1.
#   3. predict (issue 20), optional, in whatever time is left: benchmarks/predict.py --target-width 512 --proxy-steps
#      100,200,400 (it has no --device: the recipe's device auto is the GPU); its results.json and study journal are
#      copied to the logs as predict-results.json and predict-journal.log, and keep what a run cut short found.
#
# Run from anywhere:    bash benchmarks/gpu_evidence.sh
# Logs also go to $OUT/gpu_evidence/ when OUT is set. Needs python3 with torch (CUDA), numpy, tiktoken, rich,
# pyyaml, matplotlib, scipy, optuna 5 and optuna-dashboard (with their dependencies); the repository itself is put
# on PYTHONPATH, no install needed. PYTHON=... picks another interpreter. Exit 0 when parts 1 and 2 all finished.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
BUDGET=${GPU_EVIDENCE_SECONDS:-510}
LOGS=${OUT:+$OUT/gpu_evidence}
LOGS=${LOGS:-$(mktemp -d)}
mkdir -p "$LOGS"
status=0

part() {  # part NAME SECONDS COMMAND...: run it under its limit or what is left of BUDGET, print it, keep its log
    local name=$1 limit=$2 left=$((BUDGET - SECONDS))
    shift 2
    if [ "$left" -lt 30 ]; then
        echo "=== $name: skipped, ${left}s left of ${BUDGET}s"
        return 1
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --kill-after 10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local code=${PIPESTATUS[0]}
    echo "=== $name: exit $code after $((SECONDS - start))s"
    return "$code"
}

{
    date -u
    git rev-parse HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null || true
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())'
} 2>&1 | tee "$LOGS/machine.log"
# One GPU for every part (the first visible one), even on a node of several.
first_gpu=${CUDA_VISIBLE_DEVICES:-0}
export CUDA_VISIBLE_DEVICES=${first_gpu%%,*}

part throughput-124M 180 "$PY" benchmarks/throughput.py --device cuda --compile --steps 20 --shapes 124M || status=1
part throughput-350M 210 "$PY" benchmarks/throughput.py --device cuda --compile --steps 20 --shapes 350M || status=1
for study in default mup-proxy; do
    part "stacks-$study" 120 "$PY" benchmarks/workers.py --study "$study" --compare-workers 1,4 \
        --compare-stacks 1,4,8,16 --trials 16 --steps 100 || status=1
done
predict_out=$(mktemp -d)  # its runs' checkpoints stay here; only what it found goes to the logs
part predict $((BUDGET - SECONDS)) "$PY" benchmarks/predict.py --target-width 512 --proxy-steps 100,200,400 \
    --out "$predict_out" || true  # optional: cut, skipped or failed, it leaves the exit code as parts 1 and 2 set it
cp "$predict_out"/results.json "$LOGS"/predict-results.json 2>/dev/null
cp "$predict_out"/predict.log "$LOGS"/predict-journal.log 2>/dev/null
rm -rf "$predict_out"
echo "logs: $LOGS"
exit $status
