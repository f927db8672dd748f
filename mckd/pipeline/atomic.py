"""Writes that are all-or-nothing: a temporary file in the same directory, then a rename."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=False).encode()))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """An array encoded as PNG (uint8 or uint16 single-channel, or HxWx3 uint8)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
