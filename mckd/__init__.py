"""mckd: Multistage Collaborative Knowledge Distillation for semi-supervised semantic segmentation."""

from mckd.version import mckd_version

__version__ = mckd_version()  # pyproject.toml's, read from the installed package
