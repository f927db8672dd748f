"""Writes that are all-or-nothing: a temporary file in the same directory, then a rename."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image


def current_umask() -> int:
    """The process's umask, read from /proc where Linux shows it: `os.umask` can only read it by setting it,
    which briefly changes it for the whole process (a file another thread creates meanwhile gets that mode)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write` on a temporary file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the mode an ordinary open() would
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite(data: Any) -> Any:
    """`data` with numpy scalars as Python numbers and NaN/Infinity as None, at any depth: strict JSON has no NaN."""
    if isinstance(data, np.generic):
        data = data.item()
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(value) for value in data]
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Strict JSON: non-finite numbers are written as null (see `finite`)."""
    text = json.dumps(finite(data), indent=2, sort_keys=False, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """An array encoded as PNG (uint8 or uint16 single-channel, or HxWx3 uint8)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
