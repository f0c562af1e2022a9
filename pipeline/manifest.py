"""The job manifest: one JSON line per finished item, the record resume relies on.

Lines are only ever appended and each is on disk (fsync) before the next item
counts as done, so a job killed at any moment loses at most the line being
written. Such a torn last line is ignored on reading and cut off before the
next append, and a rerun simply redoes that one item.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST_NAME = "manifest.jsonl"


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    status: Literal["ok", "failed"]
    uri: str | None = None
    duration_s: float | None = None
    checksum: str | None = Field(default=None, description="sha256 of the audio object")
    bytes: int | None = Field(default=None, description="size of the audio object, checked on resume")
    error: str | None = None


class Manifest:
    """Appends entries to ``<directory>/manifest.jsonl``; use as a context manager."""

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / MANIFEST_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _repair_tail(self.path)
        self._file = open(self.path, "a", encoding="utf-8", newline="\n")

    def append(self, entry: ManifestEntry) -> None:
        self._file.write(entry.model_dump_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def read(directory: str | Path) -> dict[str, ManifestEntry]:
        """Latest entry per id (a retried item's last line wins); {} when there is no manifest."""
        path = Path(directory) / MANIFEST_NAME
        entries: dict[str, ManifestEntry] = {}
        try:
            file = open(path, encoding="utf-8", errors="replace", newline="\n")
        except FileNotFoundError:
            return entries
        with file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                entry = _parse(line)
                if entry is None and line.endswith("\n"):
                    raise ValueError(f"{path}:{number}: not a manifest entry")
                if entry is not None:  # None here: the torn last line of a crash
                    entries[entry.id] = entry
        return entries


def _parse(line: str) -> ManifestEntry | None:
    try:
        return ManifestEntry.model_validate_json(line)
    except ValidationError:
        return None


def _repair_tail(path: Path) -> None:
    """End the file with a newline: keep a complete last entry, cut a torn one."""
    try:
        file = open(path, "r+b")
    except FileNotFoundError:
        return
    with file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return
        start = _last_line_start(file, size)
        file.seek(start)
        tail = file.read().decode("utf-8", errors="replace")
        if _parse(tail) is not None:
            file.write(b"\n")
        else:
            file.truncate(start)
        file.flush()
        os.fsync(file.fileno())


def _last_line_start(file, size: int, block: int = 1 << 16) -> int:
    """Offset just after the last newline, reading backwards so a big manifest is not read whole."""
    end = size
    while end > 0:
        start = max(0, end - block)
        file.seek(start)
        newline = file.read(end - start).rfind(b"\n")
        if newline != -1:
            return start + newline + 1
        end = start
    return 0


PARTS_PREFIX = "manifest.parts/"
PART_MAX_ENTRIES = 200  # an object store cannot append: a run writes its lines in part objects
PART_MAX_AGE_S = 10.0


class ManifestParts:
    """The manifest on object storage, where nothing can be appended.

    Each run buffers its lines and writes them as its own part objects
    (``manifest.parts/<run>-<n>.jsonl``) every ``PART_MAX_ENTRIES`` lines or
    ``PART_MAX_AGE_S`` seconds; concurrent runs never write the same object. At
    the end a run merges every part into ``manifest.jsonl`` and deletes its own
    parts. A crash loses at most the unwritten buffer: resume then finds those
    items through their metadata objects.
    """

    def __init__(self, storage, run_id: str) -> None:
        self.storage = storage
        self.run_id = run_id
        self._buffer: list[str] = []
        self._written: list[str] = []
        self._last_flush = time.monotonic()

    def append(self, entry: ManifestEntry) -> None:
        self._buffer.append(entry.model_dump_json())
        if len(self._buffer) >= PART_MAX_ENTRIES or time.monotonic() - self._last_flush >= PART_MAX_AGE_S:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            key = f"{PARTS_PREFIX}{self.run_id}-{len(self._written):06d}.jsonl"
            self.storage.put_bytes(key, ("\n".join(self._buffer) + "\n").encode("utf-8"))
            self._written.append(key)
            self._buffer = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        merged = read_manifest(self.storage)
        lines = "".join(entry.model_dump_json() + "\n" for entry in merged.values())
        self.storage.put_bytes(MANIFEST_NAME, lines.encode("utf-8"))
        for key in self._written:
            self.storage.delete(key)


def read_manifest(storage) -> dict[str, ManifestEntry]:
    """Latest entry per id from ``manifest.jsonl`` and every part object, in that order."""
    entries: dict[str, ManifestEntry] = {}
    sources = [MANIFEST_NAME] if storage.exists(MANIFEST_NAME) else []
    for key in sources + list(storage.list_keys(PARTS_PREFIX)):
        for line in storage.get_bytes(key).decode("utf-8", errors="replace").splitlines():
            entry = _parse(line) if line.strip() else None
            if entry is not None:
                entries[entry.id] = entry
    return entries
