"""Segmentation networks from segmentation-models-pytorch and torchvision, behind one factory."""

from mckd.models.factory import (
    ModelConfigError,
    SegmentationNet,
    build_model,
    load_encoder_weights,
    model_config,
)

__all__ = ["ModelConfigError", "SegmentationNet", "build_model", "load_encoder_weights", "model_config"]
