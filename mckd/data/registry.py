"""One factory from a `dataset` config to its reader."""

from __future__ import annotations

from collections.abc import Mapping

from mckd.data.source import DatasetError, SegmentationSource

KINDS = ("synthetic", "cityscapes", "coco", "folder")


def build_source(cfg: Mapping) -> SegmentationSource:
    """The reader for `cfg.kind` with `cfg.params`; unknown kinds raise DatasetError naming the key."""
    kind = cfg.get("kind")
    params = dict(cfg.get("params") or {})
    if kind == "synthetic":
        from mckd.data.synthetic import SyntheticSource

        return SyntheticSource(**params)
    if kind == "cityscapes":
        from mckd.data.cityscapes import CityscapesSource

        return CityscapesSource(**params)
    if kind == "coco":
        from mckd.data.coco import CocoSource

        return CocoSource(**params)
    if kind == "folder":
        from mckd.data.folder import FolderSource

        return FolderSource(name=cfg.get("name", "folder"), **params)
    raise DatasetError(f"dataset.kind={kind!r}: unknown dataset kind, expected one of {KINDS}")
