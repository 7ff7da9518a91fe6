#!/bin/bash

# Parameters
#SBATCH --account=my-project
#SBATCH --array=0-15%16
#SBATCH --constraint=a100-80gb
#SBATCH --cpus-per-task=12
#SBATCH --error=/LOGS/jobs/%A_%a_0_log.err
#SBATCH --exclusive
#SBATCH --job-name=awm-shard
#SBATCH --mem=900G
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=/LOGS/jobs/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --signal=USR2@300
#SBATCH --time=1440
#SBATCH --wckey=awm

# setup
module load cuda/12.4
export NCCL_ASYNC_ERROR_HANDLING=1
export OMP_NUM_THREADS=8

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /LOGS/jobs/%A_%a_%t_log.out --error /LOGS/jobs/%A_%a_%t_log.err /VENV/bin/python -u -m submitit.core._submit /LOGS/jobs
