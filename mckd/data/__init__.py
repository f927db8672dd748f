"""Dataset readers, splits, augmentation and the DataModule."""

from mckd.data.datamodule import SegmentationDataModule
from mckd.data.registry import build_source
from mckd.data.source import IGNORE_INDEX, DatasetError, Sample, SegmentationSource

__all__ = ["IGNORE_INDEX", "DatasetError", "Sample", "SegmentationDataModule", "SegmentationSource", "build_source"]
