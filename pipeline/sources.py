"""Where the texts come from: files and folders of ``.txt`` turned into items.

A source is read lazily, one item at a time, so a folder of a million chapters
never sits in memory. A text that cannot be used (bad UTF-8, nothing to say)
becomes an ``ItemError`` in the stream instead of an exception: one bad file
must not stop a job that has hours of good ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIX = ".txt"


@dataclass(frozen=True)
class Item:
    """One text to narrate; ``voice`` overrides the job's voice when set."""

    id: str
    text: str
    voice: str | None = None


@dataclass(frozen=True)
class ItemError:
    """An item that cannot be narrated, reported in the manifest instead of raised."""

    id: str
    field: str
    message: str


def iter_text_items(path: Path) -> Iterator[Item | ItemError]:
    """Items of a ``.txt`` file (one) or of a folder (every ``.txt`` below it, sorted).

    Ids are file stems; when two files in a folder share a stem, both get their
    path relative to the folder, without suffix (``part1/intro``), so ids stay
    unique and stable between runs (resume depends on it).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            (p for p in path.rglob(f"*{TEXT_SUFFIX}") if p.is_file()),
            key=lambda p: p.relative_to(path).as_posix(),
        )
        ids = _item_ids(files, path)
        for file, item_id in zip(files, ids):
            yield _read_item(file, item_id)
    elif path.is_file() and path.suffix == TEXT_SUFFIX:
        yield _read_item(path, path.stem)
    elif path.exists():
        raise ValueError(f"source {path}: expected a {TEXT_SUFFIX} file or a folder")
    else:
        raise FileNotFoundError(f"source {path}: no such file or folder")


def _item_ids(files: list[Path], root: Path) -> list[str]:
    stem_counts = Counter(f.stem for f in files)
    return [
        f.stem if stem_counts[f.stem] == 1 else f.relative_to(root).with_suffix("").as_posix()
        for f in files
    ]


def _read_item(file: Path, item_id: str) -> Item | ItemError:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return ItemError(item_id, "text", f"cannot read {file}: {exc.strerror}")
    try:
        # utf-8-sig: a byte-order mark some editors write is not part of the text.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return ItemError(item_id, "text", f"{file} is not valid UTF-8 (byte {exc.start})")
    if not text.strip():
        return ItemError(item_id, "text", f"{file} has no text")
    return Item(id=item_id, text=text)
