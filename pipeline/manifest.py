"""The job manifest: one JSON line per finished item, the record resume relies on.

Lines are only ever appended, each in one ``write`` before the next item counts
as done, so a job killed at any moment loses at most the line being written.
Such a torn last line is ignored on reading and cut off before the next append,
and a rerun simply redoes that one item. The lines are synced to disk (fsync) at
most every ``FSYNC_EVERY_S`` and at close, not once per line (one fsync per item
was a seventh of the driver's time at a few hundred items per second): a crash of
the machine itself may lose the last fraction of a second of lines, whose items a
rerun finds done by their metadata objects (``Ledger.earlier``).

A manifest has one line per item, millions for a large dataset. Resume looks
entries up one id at a time, so they are streamed into a :class:`ManifestIndex`
(an on-disk map, :mod:`pipeline.idset`) rather than held in a dict: reading a
manifest of any size takes a bounded amount of the driver's memory.

Records are read only from objects the job itself names: ``manifest.jsonl``
and part objects under ``.bark/manifest.parts/`` whose names fit
:data:`PART_NAME` exactly. Item objects can never have such names
(:mod:`pipeline.storage`), so no item id can forge a record.

**Shards** (``--shard I/N``): the drivers of one job share an output, so each
records its items in parts of its own, named by its run id and shard
(``<run>.I-of-N-<n>.jsonl``): on S3 as any run does, locally in one appended
part file instead of ``manifest.jsonl``. Readers take ``manifest.jsonl``, then
every part in name order, which is start-time order (run ids begin with the
UTC start time), so the newest record per id wins. At its end a driver merges
``manifest.jsonl`` and every part into a new ``manifest.jsonl`` and deletes the
parts no other live driver can be writing: its own, earlier runs' of its own
shard, and those of runs whose items overlap its own (an unsharded run, another
shard count), which cannot be live while it holds its lease. Parts of the other
shards of its count stay for their own drivers. Merges, and a driver's first
read of the records, hold the manifest lock (``.bark/manifest.lock``: an
``flock`` locally, a conditionally created object on S3), so no read ever
misses a part that a merge folded in and deleted. An unsharded local job, the
output's only writer, folds any parts into ``manifest.jsonl`` before it appends.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import io
import os
import re
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.idset import DiskIdMap
from pipeline.object_store import LocalStore, ObjectNotFound, PreconditionFailed, S3Storage, StorageError
from pipeline.shards import Shard
from pipeline.storage import BOOKKEEPING_DIR, MANIFEST_NAME

__all__ = ["MANIFEST_NAME", "PARTS_PREFIX", "Manifest", "ManifestEntry", "ManifestError", "ManifestParts", "new_run_id"]

# A run's id: its UTC start time and a random tag, e.g. 20240501T120000-1a2b3c4d.
FSYNC_EVERY_S = 0.2  # how stale the manifest on disk may be after a machine crash (a killed job loses nothing)
RUN_ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{8}")


def new_run_id() -> str:
    """A fresh id for one run of a job (names its manifest parts and its lease)."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}"


class ManifestError(StorageError):
    """The manifest cannot be written: the job stops rather than narrate what it cannot record."""


class ManifestEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    status: Literal["ok", "failed"]
    uri: str | None = None
    duration_s: float | None = None
    checksum: str | None = Field(default=None, description="sha256 of the audio object")
    bytes: int | None = Field(default=None, description="size of the audio object, checked on resume")
    error: str | None = None
    fingerprint: str | None = Field(
        default=None, description="digest of what shaped the item's audio (pipeline.fingerprint); a rerun redoes the item when it differs"
    )


class Manifest:
    """Appends entries to ``<directory>/manifest.jsonl``; use as a context manager.

    Each line goes to the file in one unbuffered ``write`` (O_APPEND), so a line
    that fails (disk full) leaves nothing behind to be written later by surprise;
    a partial one is cut off by the next run, like a crash's torn line.

    The driver of a ``shard`` appends to its own part file instead (named by
    ``run_id``; no other process writes it, so a repair never cuts another
    driver's line) and merges at :meth:`close` (see the module docstring).
    Unsharded, the job is the output's only writer: parts that shards left are
    folded into ``manifest.jsonl`` first, so appended lines stay the newest.
    """

    def __init__(self, directory: str | Path, *, run_id: str | None = None, shard: Shard | None = None):
        self.directory = Path(directory)
        self.shard = shard
        if shard is None:
            self.path = self.directory / MANIFEST_NAME
        elif run_id is None or not RUN_ID.fullmatch(run_id):
            raise ValueError(f"a shard's manifest needs a run id matching {RUN_ID.pattern}, got {run_id!r}")
        else:
            self.path = self.directory.joinpath(*part_key(run_id, shard, 0).split("/"))
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if shard is None:
                store = LocalStore(self.directory)
                if next(part_keys(store), None) is not None:
                    _merge_parts(store, lambda key: True)
            _repair_tail(self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._synced = time.monotonic()
            self._unsynced = False
        except OSError as exc:
            raise ManifestError(f"cannot open the manifest {self.path}: {exc.strerror}") from exc

    def append(self, entry: ManifestEntry) -> None:
        line = (entry.model_dump_json() + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(28, os.strerror(28))  # a short write: the file system is full
            self._unsynced = True
            if time.monotonic() - self._synced >= FSYNC_EVERY_S:
                self._sync()
        except OSError as exc:
            raise ManifestError(f"cannot write the manifest {self.path}: {exc.strerror}") from exc

    def _sync(self) -> None:
        os.fsync(self._fd)
        self._synced, self._unsynced = time.monotonic(), False

    def close(self) -> None:
        """Syncs and closes the file; a shard's driver then merges every driver's records into ``manifest.jsonl``."""
        if self._fd is None:
            return
        try:
            if self._unsynced:
                self._sync()
        except OSError as exc:
            raise ManifestError(f"cannot write the manifest {self.path}: {exc.strerror}") from exc
        finally:
            os.close(self._fd)
            self._fd = None
        if self.shard is not None:
            store = LocalStore(self.directory)
            own = self.path.relative_to(store.root).as_posix()
            with manifest_lock(store):
                _merge_parts(store, lambda key: key == own or not _writer_may_be_live(key, self.shard))

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def read(directory: str | Path) -> dict[str, ManifestEntry]:
        """Latest entry per id (a retried item's last line wins); {} when there is no manifest.

        Holds every entry in memory: for a job's resume use :meth:`index`.
        """
        return {entry.id: entry for entry in Manifest.iter_entries(directory)}

    @staticmethod
    def index(directory: str | Path, shard: Shard | None = None) -> ManifestIndex:
        """Latest entry per id, streamed into an on-disk :class:`ManifestIndex`; a shard's driver
        reads under the manifest lock (no merge deletes a part under it)."""
        index = ManifestIndex()
        try:
            if shard is None or not Path(directory).is_dir():
                index.update(Manifest.iter_entries(directory))
            else:
                with manifest_lock(LocalStore(directory)):
                    index.update(Manifest.iter_entries(directory))
        except BaseException:
            index.close()
            raise
        return index

    @staticmethod
    def iter_entries(directory: str | Path) -> Iterator[ManifestEntry]:
        """Every entry of ``manifest.jsonl`` in file order, then of each part (the shards' records) in
        name order, one line at a time; nothing when there is no manifest.

        A line that is not an entry raises, unless it is the torn last line of a crash
        (or the line a running shard's driver is writing).
        """
        directory = Path(directory)
        yield from _file_entries(directory / MANIFEST_NAME)
        if (directory / PARTS_PREFIX).is_dir():
            for key in part_keys(LocalStore(directory)):
                yield from _file_entries(directory.joinpath(*key.split("/")))


def _file_entries(path: Path) -> Iterator[ManifestEntry]:
    """The entries of one manifest file; nothing when it is not there."""
    try:
        file = open(path, encoding="utf-8", errors="replace", newline="\n")
    except FileNotFoundError:
        return
    with file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            entry = _parse(line)
            if entry is None and line.endswith("\n"):
                raise ValueError(f"{path}:{number}: not a manifest entry")
            if entry is not None:  # None here: the torn last line of a crash
                yield entry


class ManifestIndex:
    """The latest entry per id of a manifest, held on disk: ``get``, ``in``, ``len``, ``entries``.

    Adding an id again replaces its entry (the last line wins) but keeps its
    place, so :meth:`entries` gives one entry per id in first-seen order, which
    is how a merged manifest is written. Close it (or use it as a context
    manager) to remove its file.
    """

    def __init__(self) -> None:
        self._entries = DiskIdMap()

    def add(self, entry: ManifestEntry) -> None:
        self._entries[entry.id] = entry.model_dump_json()

    def update(self, entries: Iterable[ManifestEntry]) -> None:
        for entry in entries:
            self.add(entry)

    def get(self, item_id: str) -> ManifestEntry | None:
        raw = self._entries.get(item_id)
        return None if raw is None else ManifestEntry.model_validate_json(raw)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return len(self._entries) > 0

    def entries(self) -> Iterator[ManifestEntry]:
        for _, raw in self._entries.items():
            yield ManifestEntry.model_validate_json(raw)

    def close(self) -> None:
        self._entries.close()

    def __enter__(self) -> ManifestIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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


PARTS_PREFIX = f"{BOOKKEEPING_DIR}/manifest.parts/"
# The only names read as parts, directly in PARTS_PREFIX: <run id>[.<I>-of-<N>]-<6-digit number>.jsonl.
PART_NAME = re.compile(
    r"(?P<run>" + RUN_ID.pattern + r")(?:\.(?P<index>0|[1-9][0-9]*)-of-(?P<count>[1-9][0-9]*))?-\d{6}\.jsonl"
)
MANIFEST_LOCK_KEY = f"{BOOKKEEPING_DIR}/manifest.lock"
# On S3 the lock is an object: its holder is presumed gone after this long (a merge of
# millions of lines takes a minute or two), or at once when it was a process of this host
# that no longer exists.
MANIFEST_LOCK_EXPIRY_S = 600.0
MANIFEST_LOCK_POLL_S = 0.2


def part_key(run_id: str, shard: Shard | None, number: int) -> str:
    """The key of a run's ``number``-th part (a shard's driver names its shard in it)."""
    shard_tag = "" if shard is None else f".{shard.index}-of-{shard.count}"
    return f"{PARTS_PREFIX}{run_id}{shard_tag}-{number:06d}.jsonl"


def _writer_may_be_live(key: str, shard: Shard | None) -> bool:
    """Whether the run that wrote the part ``key`` can still be writing while ``shard``'s driver holds
    its lease: only the driver of another shard of the same count can (its items are disjoint)."""
    match = PART_NAME.fullmatch(key[len(PARTS_PREFIX):])
    if shard is None or match is None or match.group("count") is None:
        return False
    return int(match.group("count")) == shard.count and int(match.group("index")) != shard.index


@contextlib.contextmanager
def manifest_lock(storage):
    """Held while a shard's driver reads the records or merges them (see the module docstring)."""
    if isinstance(storage, LocalStore):
        path = storage.root.joinpath(*MANIFEST_LOCK_KEY.split("/"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ManifestError(f"cannot open the manifest lock {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held by a merge for seconds at most; dropped when its process ends
            yield
        finally:
            os.close(fd)
    elif isinstance(storage, S3Storage):
        etag = _take_s3_manifest_lock(storage)
        try:
            yield
        finally:
            try:
                storage.delete_tagged(MANIFEST_LOCK_KEY, etag)
            except (PreconditionFailed, ObjectNotFound):
                pass  # taken over as stale meanwhile: it is not ours to delete
    else:
        yield  # a storage without concurrent drivers (tests' in-memory stores)


def _take_s3_manifest_lock(storage: S3Storage) -> str:
    """Creates the lock object (``If-None-Match``), waiting while a live holder has it; a holder that is
    gone (see :func:`pipeline.lease._why_gone`) is replaced (``If-Match``). Returns its ETag."""
    from pipeline.lease import LeaseRecord, _parse as parse_record, _why_gone

    now = datetime.datetime.now(datetime.timezone.utc)
    me = LeaseRecord(
        host=socket.gethostname(), pid=os.getpid(), run_id=new_run_id(), started=now, renewed=now,
        expiry_s=MANIFEST_LOCK_EXPIRY_S,
    )
    body = me.model_dump_json().encode("utf-8")
    while True:
        try:
            return storage.create(MANIFEST_LOCK_KEY, body)
        except PreconditionFailed:
            pass
        try:
            current = storage.read_tagged(MANIFEST_LOCK_KEY)
        except ObjectNotFound:
            continue
        if _why_gone(parse_record(current.data), current.age_s, me.host, MANIFEST_LOCK_EXPIRY_S) is not None:
            try:
                return storage.replace(MANIFEST_LOCK_KEY, body, current.etag)
            except (PreconditionFailed, ObjectNotFound):
                continue
        time.sleep(MANIFEST_LOCK_POLL_S)


def _merge_parts(storage, doomed: Callable[[str], bool]) -> None:
    """Rewrites ``manifest.jsonl`` from itself and every part (latest entry per id), then deletes the
    merged parts that ``doomed`` names: those no live writer can still be appending to. Streams
    through an on-disk index and a temporary file, so a manifest of millions of lines is never held
    in memory."""
    parts = list(part_keys(storage))
    with _index(storage, parts) as merged, tempfile.TemporaryDirectory(prefix="bark-manifest-") as folder:
        path = os.path.join(folder, MANIFEST_NAME)
        with open(path, "w", encoding="utf-8", newline="\n") as file:
            for entry in merged.entries():
                file.write(entry.model_dump_json() + "\n")
        try:
            storage.put_file(MANIFEST_NAME, path)
        except StorageError as exc:
            raise ManifestError(f"cannot write the manifest: {exc}") from exc
    for key in parts:
        if doomed(key):
            storage.delete(key)


PART_MAX_ENTRIES = 200  # an object store cannot append: a run writes its lines in part objects
PART_MAX_AGE_S = 10.0


class ManifestParts:
    """The manifest on object storage, where nothing can be appended.

    Each run buffers its lines and writes them as its own part objects
    (``.bark/manifest.parts/<run>-<n>.jsonl``) every ``PART_MAX_ENTRIES`` lines or
    ``PART_MAX_AGE_S`` seconds; concurrent runs never write the same object. At
    the end a run merges every part into ``manifest.jsonl`` and deletes its own
    parts, or every part it merged when ``sole_writer()`` says it holds the
    output's lease (so the parts of killed runs go too). A run that lost its
    lease writes its parts and leaves the merge to the holder. A crash loses at
    most the unwritten buffer: resume then finds those items through their
    metadata objects. A part that cannot be written is a :class:`ManifestError`.
    """

    def __init__(
        self, storage, run_id: str, sole_writer: Callable[[], bool] | None = None, shard: Shard | None = None
    ) -> None:
        if not RUN_ID.fullmatch(run_id):
            raise ValueError(f"run id {run_id!r} does not match {RUN_ID.pattern}")
        self.storage = storage
        self.run_id = run_id
        self.sole_writer = sole_writer
        self.shard = shard
        self._buffer: list[str] = []
        self._written: list[str] = []
        self._last_flush = time.monotonic()

    def append(self, entry: ManifestEntry) -> None:
        self._buffer.append(entry.model_dump_json())
        if len(self._buffer) >= PART_MAX_ENTRIES or time.monotonic() - self._last_flush >= PART_MAX_AGE_S:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            key = part_key(self.run_id, self.shard, len(self._written))
            try:
                self.storage.put_bytes(key, ("\n".join(self._buffer) + "\n").encode("utf-8"))
            except StorageError as exc:
                raise ManifestError(f"cannot write the manifest: {exc}") from exc
            self._written.append(key)
            self._buffer = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Writes the last part, then merges every part into ``manifest.jsonl``.

        A shard's driver merges under the manifest lock and keeps the parts of the
        other live shards (see the module docstring). The merge streams through an
        on-disk index and a temporary file, so a manifest of millions of lines is
        never held in memory.
        """
        self.flush()
        sole = self.sole_writer() if self.sole_writer is not None else None
        if sole is False:
            return  # the lease went to another job: its merge takes our parts in
        own = set(self._written)
        if sole is None:  # no lease to tell which other writers are gone: only our own parts go
            _merge_parts(self.storage, lambda key: key in own)
        elif self.shard is None:
            _merge_parts(self.storage, lambda key: True)  # the only writer: every part goes
        else:
            with manifest_lock(self.storage):
                _merge_parts(self.storage, lambda key: key in own or not _writer_may_be_live(key, self.shard))


def read_manifest(storage) -> dict[str, ManifestEntry]:
    """Latest entry per id from ``manifest.jsonl`` and every part object, in that order.

    Holds every entry in memory: for a job's resume use :func:`index_manifest`.
    """
    return {entry.id: entry for entry in iter_manifest_entries(storage)}


def index_manifest(storage, parts: list[str] | None = None, shard: Shard | None = None) -> ManifestIndex:
    """:func:`read_manifest` streamed into an on-disk :class:`ManifestIndex`; a shard's driver reads
    under the manifest lock (no merge deletes a part under it)."""
    if shard is None:
        return _index(storage, parts)
    with manifest_lock(storage):
        return _index(storage, parts)


def _index(storage, parts: list[str] | None = None) -> ManifestIndex:
    index = ManifestIndex()
    try:
        index.update(iter_manifest_entries(storage, parts))
    except BaseException:
        index.close()
        raise
    return index


def part_keys(storage) -> Iterator[str]:
    """The manifest parts in storage: only names that fit :data:`PART_NAME`, directly in PARTS_PREFIX."""
    for key in storage.list_keys(PARTS_PREFIX):
        if PART_NAME.fullmatch(key[len(PARTS_PREFIX):]):
            yield key


def iter_manifest_entries(storage, parts: list[str] | None = None) -> Iterator[ManifestEntry]:
    """Entries of ``manifest.jsonl``, then of every part object (or of ``parts``), line by line;
    unreadable lines are skipped (a part object is written whole, and a torn merged manifest is
    rewritten from the parts)."""
    sources = [MANIFEST_NAME] if storage.exists(MANIFEST_NAME) else []
    for key in sources + (list(part_keys(storage)) if parts is None else parts):
        try:
            for raw in _object_lines(storage, key):
                line = raw.decode("utf-8", errors="replace")
                entry = _parse(line) if line.strip() else None
                if entry is not None:
                    yield entry
        except ObjectNotFound:
            continue  # a part merged into manifest.jsonl and deleted since the listing


def _object_lines(storage, key: str) -> Iterator[bytes]:
    """The lines of one stored object.

    A storage that can stream an object line by line (``iter_lines(key)``)
    does; otherwise the object's bytes are read whole and split lazily.
    """
    iter_lines = getattr(storage, "iter_lines", None)
    if iter_lines is not None:
        yield from iter_lines(key)
    else:
        yield from io.BytesIO(storage.get_bytes(key))
