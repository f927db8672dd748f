"""Hydra config groups (shipped as package data; `conf/` at the top level points here)."""
