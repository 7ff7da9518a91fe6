"""Sweeps: a grid or random search over train config keys, each point a train run and an eval."""
