"""Where results go: safe object names and atomic writes to a local folder.

Item ids come from users (file names, dataset rows) and become file names, so
an id like ``../../etc/x`` must not leave the output folder and two ids must
never share a file. Every object is written whole or not at all (temp file in
the same folder, then rename), so a job stopped at any moment leaves no
half-written audio that a rerun would mistake for a finished one.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

# Kept as they are; everything else (including % itself) is percent-encoded,
# which alone makes the mapping injective.
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
# Room for a suffix such as ".metadata.json" within the usual 255-byte name limit.
MAX_KEY_CHARS = 200
_HASH_CHARS = 16
_HASH_SEPARATOR = "~"  # never produced by the encoding, so hashed names are distinct


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
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    room = MAX_KEY_CHARS - len(_HASH_SEPARATOR) - _HASH_CHARS
    return f"{_cut(encoded, room)}{_HASH_SEPARATOR}{digest}"


def item_key(item_id: str) -> str:
    """The object name of an item: ``/`` in an id (``book/003``) makes folders, each part
    made safe by :func:`safe_key`, so no id escapes the output prefix and ids stay distinct."""
    return "/".join(safe_key(part) for part in item_id.split("/"))


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
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
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


COPY_CHUNK_BYTES = 8 * 1024 * 1024


def atomic_copy_file(source: Path, path: Path) -> None:
    """Copy ``source`` to ``path`` with :func:`atomic_write_bytes`' guarantee, streaming:
    long-form audio can be larger than one wants to hold in memory."""
    with open(source, "rb") as reader, _atomic_file(path) as writer:
        while chunk := reader.read(COPY_CHUNK_BYTES):
            writer.write(chunk)
