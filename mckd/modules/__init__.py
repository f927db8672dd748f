"""LightningModules: teacher, students and the pseudo-labeler."""

from mckd.modules.segmentation import Labeler, SegmentationModule, StudentModule

__all__ = ["Labeler", "SegmentationModule", "StudentModule"]
