"""One factory from a `dataset` config to its reader."""

from __future__ import annotations

from collections.abc import Mapping

from mckd.data.source import DatasetError, SegmentationSource

KINDS = ("synthetic", "cityscapes", "coco", "folder")


def source_class(kind: str | None) -> type[SegmentationSource]:
    """The reader class of a `dataset.kind`; unknown kinds raise DatasetError naming the key."""
    if kind == "synthetic":
        from mckd.data.synthetic import SyntheticSource

        return SyntheticSource
    if kind == "cityscapes":
        from mckd.data.cityscapes import CityscapesSource

        return CityscapesSource
    if kind == "coco":
        from mckd.data.coco import CocoSource

        return CocoSource
    if kind == "folder":
        from mckd.data.folder import FolderSource

        return FolderSource
    raise DatasetError(f"dataset.kind={kind!r}: unknown dataset kind, expected one of {KINDS}")


def build_source(cfg: Mapping) -> SegmentationSource:
    """The reader for `cfg.kind` with `cfg.params`."""
    kind = cfg.get("kind")
    params = dict(cfg.get("params") or {})
    if kind == "folder":
        params["name"] = cfg.get("name", "folder")
    return source_class(kind)(**params)
