"""Exact sets and maps keyed by item id, kept on disk so that a job's memory does not grow with its input.

A dataset job may see millions of item ids. The driver needs two things per id:
whether it was seen before in this run (a duplicate id fails its item), and for
resume, what an earlier run's manifest recorded for it. A Python ``set`` or
``dict`` of a million ids costs about a hundred MB in the driver; these classes
keep the ids in a private SQLite database (stdlib ``sqlite3``) instead, with a
small in-memory batch of recent writes and SQLite's page cache (``CACHE_KIB``)
as the only memory they use, whatever the number of ids.

Answers are exact (a B-tree lookup; nothing probabilistic, so no false
positives). Ids are stored as UTF-8 bytes (``surrogatepass``), so every Python
string, even one holding undecodable bytes from a file name, round-trips.

Each table is a SQLite *temporary database* (opened with an empty file name):
it lives in the page cache until that is full, then spills to a file that
SQLite creates in ``SQLITE_TMPDIR``, else ``TMPDIR``, else ``/var/tmp`` and
deletes as soon as it is open. Nothing is left behind however the process
ends, even by SIGKILL; :meth:`close` (or garbage collection) frees the space.
"""

from __future__ import annotations

import sqlite3
import weakref
from collections.abc import Iterator

# Writes are buffered and sent to SQLite in one transaction per batch: one
# executemany of this many rows costs about as much as a few single inserts.
WRITE_BATCH = 4096
# SQLite's page cache per table (KiB): the memory a table may use. Beyond it, pages
# spill to the temporary file and are read back through the operating system's cache.
CACHE_KIB = 8192
# What a repeated id in one input is told (the job, and the plan that predicts it).
DUPLICATE_ID_REASON = "id: duplicate item id in the input (the first one is kept)"


def _key(item_id: str) -> bytes:
    return item_id.encode("utf-8", "surrogatepass")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogatepass")


class _DiskTable:
    """One SQLite table in a temporary file, written through a bounded in-memory batch."""

    _schema = ""

    def __init__(self, *, batch: int = WRITE_BATCH, cache_kib: int = CACHE_KIB):
        if batch < 1 or cache_kib < 1:
            raise ValueError("batch and cache_kib must be at least 1")
        # "": a temporary database. One thread at a time uses a job's tables, not always the one that made them.
        db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        self._db = db
        self._finalizer = weakref.finalize(self, db.close)
        for pragma in (
            "journal_mode = OFF",  # scratch data: nothing to roll back to after a crash
            "synchronous = OFF",
            f"cache_size = -{int(cache_kib)}",
        ):
            db.execute(f"PRAGMA {pragma}")
        db.execute(self._schema)
        self._batch = batch
        self._pending: dict[bytes, bytes | None] = {}  # insertion-ordered, like the table
        self._length: int | None = 0

    # -- lifetime

    def close(self) -> None:
        """Drops the table and frees its memory and disk space; idempotent."""
        self._pending = {}
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading and writing

    def _write(self, key: bytes, value: bytes | None) -> None:
        self._check_open()
        self._pending[key] = value
        self._length = None
        if len(self._pending) >= self._batch:
            self.flush()

    def flush(self) -> None:
        """Sends the buffered writes to the database (lookups see them either way)."""
        self._check_open()
        if not self._pending:
            return
        rows = list(self._pending.items())
        self._pending = {}
        self._db.execute("BEGIN")
        try:
            self._insert(rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _insert(self, rows: list[tuple[bytes, bytes | None]]) -> None:
        raise NotImplementedError

    def _has(self, key: bytes) -> bool:
        self._check_open()
        if key in self._pending:
            return True
        return self._db.execute("SELECT 1 FROM ids WHERE id = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        """Distinct ids held (counted once, then cached until the next write)."""
        if self._length is None:
            self.flush()
            self._length = self._db.execute("SELECT COUNT(*) FROM ids").fetchone()[0]
        return self._length

    def __bool__(self) -> bool:
        return len(self) > 0

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self._has(_key(item_id))

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{type(self).__name__} is closed")


class DiskIdSet(_DiskTable):
    """An exact set of item ids on disk: ``add`` (says whether the id was new), ``in``, ``len``."""

    _schema = "CREATE TABLE ids (id BLOB PRIMARY KEY) WITHOUT ROWID"

    def add(self, item_id: str) -> bool:
        """Adds ``item_id``; False when it was already there (a duplicate)."""
        key = _key(item_id)
        if self._has(key):
            return False
        self._write(key, None)
        return True

    def _insert(self, rows: list[tuple[bytes, bytes | None]]) -> None:
        self._db.executemany("INSERT OR IGNORE INTO ids (id) VALUES (?)", ((key,) for key, _ in rows))


class DiskIdMap(_DiskTable):
    """An exact map from item id to a text value, on disk.

    Setting an id again replaces its value but keeps its place: :meth:`items`
    yields ids in the order they were first set, each with its latest value
    (what merging a manifest, where the last line per id wins, needs).
    """

    _schema = "CREATE TABLE ids (seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, value BLOB NOT NULL)"

    def __setitem__(self, item_id: str, value: str) -> None:
        self._write(_key(item_id), value.encode("utf-8", "surrogatepass"))

    def get(self, item_id: str, default: str | None = None) -> str | None:
        self._check_open()
        key = _key(item_id)
        value = self._pending.get(key)
        if value is None:
            row = self._db.execute("SELECT value FROM ids WHERE id = ?", (key,)).fetchone()
            if row is None:
                return default
            value = row[0]
        return _text(value)

    def __getitem__(self, item_id: str) -> str:
        value = self.get(item_id)
        if value is None:
            raise KeyError(item_id)
        return value

    def items(self) -> Iterator[tuple[str, str]]:
        """(id, latest value) in first-set order, read from disk a page at a time."""
        self.flush()
        cursor = self._db.execute("SELECT id, value FROM ids ORDER BY seq")
        try:
            while rows := cursor.fetchmany(self._batch):
                for key, value in rows:
                    yield _text(key), _text(value)
        finally:
            cursor.close()

    def _insert(self, rows: list[tuple[bytes, bytes | None]]) -> None:
        self._db.executemany(
            "INSERT INTO ids (id, value) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET value = excluded.value",
            rows,
        )
