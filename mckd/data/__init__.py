"""Dataset readers, splits, augmentation and the DataModules."""

from mckd.data.registry import build_source
from mckd.data.source import IGNORE_INDEX, DatasetError, Sample, SegmentationSource

DATAMODULE = ("SegmentationData", "SegmentationDataModule", "LabeledDataModule", "PseudoLabelDataModule",
              "PredictDataModule")
__all__ = ["IGNORE_INDEX", "DatasetError", "Sample", "SegmentationSource", "build_source", *DATAMODULE]


def __getattr__(name: str):
    # the DataModules need Lightning, which takes seconds to import: the readers and splits are used without it
    # (validating the input before training starts)
    if name in DATAMODULE:
        from mckd.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
