"""What an offline Weights & Biases run holds, read back from its own folder, for the tracker tests
(test_trackers_wandb.py, test_trackers_cli.py): the records of its .wandb file and its media files. Not a test module;
imported by path, as tests/fixtures' modules are."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2


class Unfinished(Exception):
    """The file ends inside a record: W&B's writer (its own process) has not flushed the rest yet."""


def records(path: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte header: checksum, length, type 1 full, 2 first, 3 middle, 4 last). Unfinished where the file ends inside
    a chunk or a record."""
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending, open_record = 7, b"", False
    while position + 7 <= len(data):
        if block - position % block < 7:  # the block's tail is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            break
        if position + 7 + length > len(data):
            raise Unfinished(path)
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        open_record = kind in (2, 3)
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
    if open_record:
        raise Unfinished(path)


class OfflineRun:
    """What an offline run holds, read back: its run record, history rows, summary, config, artifacts and files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        # A finished run's file is written by W&B's own process, which may still be flushing it when run.finish()
        # returns: read it again until it holds the run's exit, whole.
        for _ in range(100):
            try:
                self._read(next(folder.glob("run-*.wandb")))
            except Unfinished:
                pass
            else:
                if self.exit_code is not None:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{folder}: the run's .wandb file never held its exit record")

    def _read(self, path: Path) -> None:
        self.history: dict[str, object] = {}
        self.summary: dict[str, object] = {}
        self.config: dict[str, object] = {}
        self.artifacts: list[tuple[str, str, list[str]]] = []
        self.exit_code: int | None = None
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                self.run = record.run
            elif kind == "history":
                self.history.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                self.summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.summary.update})
            elif kind == "config":
                self.config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "artifact" and record.artifact.type.startswith("biasaudit-"):  # not the tables' own
                self.artifacts.append((record.artifact.name, record.artifact.type, [e.path for e in record.artifact.manifest.contents]))
            elif kind == "exit":
                self.exit_code = record.exit.exit_code

    def media(self, kind: str, name: str) -> Path:
        return next((self.folder / "files" / "media" / kind / "biasaudit" / kind).glob(f"{name}_*"))


def only_run(root: Path) -> OfflineRun:
    """The one offline run under `root`/wandb."""
    folders = list((root / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, folders
    return OfflineRun(folders[0])
