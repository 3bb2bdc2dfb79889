#!/usr/bin/env bash
# The winner's full run, data-parallel over several nodes with torchrun (NCCL on GPUs).
#   sbatch examples/slurm_promote.sh
# Only rank 0 writes checkpoints and the study; re-submitting resumes from the newest good checkpoint.
#SBATCH --job-name=lr-promote
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
set -euo pipefail
cd "${SLURM_SUBMIT_DIR}"
: "${SWEEP_DB:?set SWEEP_DB=postgresql://user:password@dbhost:5432/sweeps}"
head_node=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)
srun torchrun \
    --nnodes "${SLURM_NNODES}" \
    --nproc_per_node 8 \
    --rdzv_backend c10d \
    --rdzv_endpoint "${head_node}:29500" \
    -m sweep promote best --study gpt2-124m --steps 500 --storage "${SWEEP_DB}"
