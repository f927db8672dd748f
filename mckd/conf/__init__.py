"""Hydra config groups (shipped as package data; `conf/` at the top level points here).

Importing this package stores the config schema (mckd/schema.py) in Hydra's ConfigStore: Hydra imports it to read
the configs from `pkg://mckd.conf` (mckd-train, mckd-eval, mckd-predict, `initialize_config_module("mckd.conf")`).
"""

from mckd.schema import register

register()
