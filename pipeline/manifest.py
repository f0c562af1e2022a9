"""The job manifest: one JSON line per finished item, the record resume relies on.

Lines are only ever appended and each is on disk (fsync) before the next item
counts as done, so a job killed at any moment loses at most the line being
written. Such a torn last line is ignored on reading and cut off before the
next append, and a rerun simply redoes that one item.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

MANIFEST_NAME = "manifest.jsonl"


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    status: Literal["ok", "failed"]
    uri: str | None = None
    duration_s: float | None = None
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
