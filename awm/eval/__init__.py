"""Measuring quality: evaluation, no-reference scoring, metrics, NIQE, result tables, weights."""
