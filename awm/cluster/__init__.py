"""Running stages on SLURM: submission, the jobs it runs, and the shipped profiles."""
