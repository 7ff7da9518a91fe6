#!/bin/bash

# Parameters
#SBATCH --account=my-project
#SBATCH --constraint=a100-80gb
#SBATCH --cpus-per-task=12
#SBATCH --error=/LOGS/jobs/%j_0_log.err
#SBATCH --exclusive
#SBATCH --gpus-per-node=8
#SBATCH --job-name=awm-train
#SBATCH --mem=900G
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --open-mode=append
#SBATCH --output=/LOGS/jobs/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --signal=USR2@300
#SBATCH --time=1440
#SBATCH --wckey=awm

# setup
module load cuda/12.4
export NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS=8

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /LOGS/jobs/%j_%t_log.out --error /LOGS/jobs/%j_%t_log.err --kill-on-bad-exit=1 /VENV/bin/python -u -m submitit.core._submit /LOGS/jobs
