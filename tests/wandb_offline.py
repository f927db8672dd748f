"""Read back offline W&B runs (`<dir>/wandb/offline-run-*/run-<id>.wandb`) without a server.

Offline runs keep everything in the `.wandb` transaction log (LevelDB log format, protobuf `Record`s); newer
wandb releases no longer ship a Python reader for it, so this is a small one.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = struct.Struct("<IHB")  # crc32c, length, chunk type
FILE_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    """Every protobuf Record in a .wandb file, in order."""
    data = Path(path).read_bytes()
    ident, _, _ = FILE_HEADER.unpack_from(data)
    assert ident == b":W&B", f"{path}: not a W&B transaction log"
    pos, pending = FILE_HEADER.size, b""
    while pos + HEADER.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER.size:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += left
            continue
        pending += data[pos + HEADER.size: pos + HEADER.size + length]
        pos += HEADER.size + length
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What one offline run directory recorded: its identity, config, history rows and final summary."""

    directory: Path
    id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    project: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None


def read_run(directory: str | Path) -> OfflineRun:
    directory = Path(directory)
    (log,) = directory.glob("run-*.wandb")
    run = OfflineRun(directory)
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.group, run.job_type, run.name, run.project = (r.run_id, r.run_group, r.job_type,
                                                                      r.display_name, r.project)
            run.config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(experiment: str | Path) -> list[OfflineRun]:
    """Every offline run of an experiment directory, oldest first."""
    return [read_run(d) for d in sorted(Path(experiment, "wandb").glob("offline-run-*"))]
