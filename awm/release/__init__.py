"""Releases of trained models: ``awm export`` (export), OpenModelDB entries (openmodeldb), model cards (card)."""
