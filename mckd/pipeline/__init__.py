"""Stages, orchestrator, pseudo-label store and results of the MCKD pipeline."""
