#!/usr/bin/env bash
# A sweep spread over a SLURM array: every array task is one worker on the same PostgreSQL-backed study.
#   sbatch --array=0-7 examples/slurm_sweep.sh
# The study's --trials total holds across all tasks; a task that dies leaves its trial to be retried by the others
# (from the trial's checkpoint: keep runs/ on a filesystem every node sees).
#SBATCH --job-name=lr-sweep
#SBATCH --nodes=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
set -euo pipefail
cd "${SLURM_SUBMIT_DIR}"
: "${SWEEP_DB:?set SWEEP_DB=postgresql://user:password@dbhost:5432/sweeps}"
python -m sweep lr \
    --study gpt2-124m \
    --steps 500 \
    --trials 16 \
    --storage "${SWEEP_DB}" \
    --study-name gpt2-124m-500 \
    --worker-index "${SLURM_ARRAY_TASK_ID}" \
    --heartbeat 30 --grace 300 \
    --quiet
