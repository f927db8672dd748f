"""Dataset readers, splits, augmentation and the DataModule."""

from mckd.data.registry import build_source
from mckd.data.source import IGNORE_INDEX, DatasetError, Sample, SegmentationSource

__all__ = ["IGNORE_INDEX", "DatasetError", "Sample", "SegmentationDataModule", "SegmentationSource", "build_source"]


def __getattr__(name: str):
    # the DataModule needs Lightning, which takes seconds to import: the readers and splits are used without it
    # (validating the input before training starts)
    if name == "SegmentationDataModule":
        from mckd.data.datamodule import SegmentationDataModule

        return SegmentationDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
