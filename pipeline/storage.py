"""Where results go: safe object names, the output's layout, atomic writes to a local folder.

Item ids come from users (file names, dataset rows) and become file names, so
an id like ``../../etc/x`` must not leave the output folder and two ids must
never share a file. Every object is written whole or not at all (temp file in
the same folder, then rename), so a job stopped at any moment leaves no
half-written audio that a rerun would mistake for a finished one.

The output is split into two namespaces that no id can cross:

- **Item objects**: ``item_key(id)`` plus a suffix (``.wav``, ``.json``, ...).
  No segment of an item key starts with ``.`` (a leading dot is
  percent-encoded), and the first segment is never ``manifest.jsonl`` in any
  letter case (its dot is encoded). Keys are ASCII (everything else is
  percent-encoded), so no file system folds two of them into one by Unicode
  normalisation either.
- **The job's own records**: ``manifest.jsonl`` at the root (the one file meant
  for users), and everything else under the reserved dot-folder ``.bark/``
  (manifest parts on S3, the lease), plus the hidden ``.<name>.<hex>.tmp``
  files of atomic writes. Bookkeeping is only ever read from names the job
  itself makes (see :mod:`pipeline.manifest`), never from whatever a listing
  returns.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Kept as they are; everything else (including % itself) is percent-encoded,
# which alone makes the mapping injective.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# Room for a suffix such as ".metadata.json" within the usual 255-byte name limit.
MAX_KEY_CHARS = 200
_HASH_CHARS = 16
_HASH_SEPARATOR = "~"  # never produced by the encoding, so hashed names are distinct

# The job's own records: the merged manifest at the root, everything else in one dot-folder.
MANIFEST_NAME = "manifest.jsonl"
BOOKKEEPING_DIR = ".bark"
# First segments an item key may not have (compared in lower case, trailing dots dropped:
# case-insensitive file systems, and Windows, treat those as the same name).
RESERVED_ROOT_NAMES = frozenset({MANIFEST_NAME})
# The temp files of atomic writes: hidden, the final name, 32 hex digits of uuid4.
_TEMP_SUFFIX = ".tmp"
TEMP_FILE_PATTERN = re.compile(r"\..+\.[0-9a-f]{32}" + re.escape(_TEMP_SUFFIX))
# Where other drivers (shards of the same job) may be writing, a temp file counts as a killed
# run's only once untouched this long: a live write renames its temp file within seconds, and
# a long copy touches it with every chunk it writes.
SHARED_TEMP_STALE_S = 3600.0


def safe_key(item_id: str) -> str:
    """A flat, ASCII, bounded-length object name for ``item_id``; different ids, different names.

    Safe characters are kept and others percent-encoded (UTF-8 bytes); a leading
    dot is encoded too, so no name is hidden, ``.`` or ``..``. A name that had to
    change or be shortened gets ``~`` and a hash of the original id appended.
    """
    encoded = "".join(ch if ch in _SAFE else _percent(ch) for ch in item_id)
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if encoded == item_id and 0 < len(encoded) <= MAX_KEY_CHARS:
        return encoded
    return _hashed(encoded, item_id)


def _hashed(encoded: str, item_id: str) -> str:
    """``encoded`` (cut to fit) + ``~`` + a hash of the original: a changed name stays unique."""
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    room = MAX_KEY_CHARS - len(_HASH_SEPARATOR) - _HASH_CHARS
    return f"{_cut(encoded, room)}{_HASH_SEPARATOR}{digest}"


def item_key(item_id: str) -> str:
    """The object name of an item: ``/`` in an id (``book/003``) makes folders, each part
    made safe by :func:`safe_key`, so no id escapes the output prefix and ids stay distinct.

    No part starts with ``.`` (so nothing lands in ``.bark/`` or looks like a temp
    file) and the first part is never a reserved root name such as ``manifest.jsonl``.
    """
    parts = [safe_key(part) for part in item_id.split("/")]
    if _is_reserved_root(parts[0]):
        parts[0] = _hashed(parts[0].replace(".", "%2E"), item_id.split("/")[0])
    return "/".join(parts)


def _is_reserved_root(name: str) -> bool:
    return name.rstrip(".").lower() in RESERVED_ROOT_NAMES


def _percent(ch: str) -> str:
    return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))


def _cut(encoded: str, limit: int) -> str:
    """Shorten without leaving half a %XX escape at the end."""
    cut = encoded[:limit]
    tail = cut.rfind("%", max(0, len(cut) - 2))
    return cut[:tail] if tail != -1 else cut


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with _atomic_file(path) as file:
        file.write(data)


@contextmanager
def _atomic_file(path: Path):
    """A hidden temp file beside ``path``, renamed onto it once written and on disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{_TEMP_SUFFIX}")
    try:
        with open(temp, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStorage:
    """Objects as files under ``root``; keys are ``/``-separated relative names."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    def path_for(self, key: str) -> Path:
        parts = key.split("/")
        if not key or "\0" in key or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*parts)

    def uri_for(self, key: str) -> str:
        return self.path_for(key).as_uri()

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` atomically under ``key``; returns its URI."""
        atomic_write_bytes(self.path_for(key), data)
        return self.uri_for(key)

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of our atomic-write temp files (no item file can look like one)."""
    return TEMP_FILE_PATTERN.fullmatch(name) is not None


def remove_temp_files(root: Path, shared: bool = False) -> Iterator[Path]:
    """Deletes the atomic-write temp files under ``root``; yields each one removed.

    Only safe while no writer is at work there: the job calls it once it holds the
    output's lease, so every such file is the leftover of a run that was killed.
    A ``shared`` output (the driver of one shard holds only its shard's lease; the
    other shards' drivers may be writing) loses only the temp files untouched for
    :data:`SHARED_TEMP_STALE_S`, never another live driver's.
    """
    cutoff = time.time() - SHARED_TEMP_STALE_S
    for directory, _, names in os.walk(root):
        for name in names:
            if is_temp_file(name):
                path = Path(directory) / name
                try:
                    if shared and path.stat().st_mtime > cutoff:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                yield path


COPY_CHUNK_BYTES = 8 * 1024 * 1024


def atomic_copy_file(source: Path, path: Path) -> None:
    """Copy ``source`` to ``path`` with :func:`atomic_write_bytes`' guarantee, streaming:
    long-form audio can be larger than one wants to hold in memory."""
    with open(source, "rb") as reader, _atomic_file(path) as writer:
        while chunk := reader.read(COPY_CHUNK_BYTES):
            writer.write(chunk)
