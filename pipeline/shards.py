"""One job split across N drivers by input shard (``--shard I/N``).

Where one driver cannot keep up with millions of rows, N drivers run the same
command, each with ``--shard I/N``, on the same input and output. Every item
belongs to exactly one shard, ``stable_hash(id) % N``, so the drivers narrate
disjoint sets of items and a repeated id always lands in the same shard. The
hash is the first 8 bytes of sha256 of the id's UTF-8 bytes: the same on every
host and every run (Python's ``hash`` is salted per process).

How the drivers share one output (lease, manifest, temp files) is in
:mod:`pipeline.lease`, :mod:`pipeline.manifest` and :mod:`pipeline.storage`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from workers.errors import UserError

SHARD_SYNTAX = re.compile(r"(0|[1-9][0-9]*)/(0|[1-9][0-9]*)")
MAX_SHARDS = 1_000_000  # far beyond any cluster; bounds the names the shards give their records

_WithId = TypeVar("_WithId")


class ShardError(UserError):
    """A ``--shard`` value that is not ``I/N`` with ``0 <= I < N``."""


def stable_hash(item_id: str) -> int:
    """A 64-bit hash of an id, the same in every process and on every host."""
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the items whose ``stable_hash(id) % count == index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not (isinstance(self.index, int) and isinstance(self.count, int)) or isinstance(self.index, bool):
            raise ShardError(f"--shard: index and count must be whole numbers, got {self.index!r}/{self.count!r}")
        if not 1 <= self.count <= MAX_SHARDS:
            raise ShardError(f"--shard: the count N of I/N must be 1 to {MAX_SHARDS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ShardError(f"--shard: the index I of I/N must be 0 to {self.count - 1}, got {self.index}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/8"`` -> ``Shard(2, 8)``; a one-line :class:`ShardError` naming ``--shard`` otherwise."""
        match = SHARD_SYNTAX.fullmatch(text.strip())
        if match is None:
            raise ShardError(f"--shard: expected I/N (shard I of N, 0 <= I < N, e.g. 0/4), got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def holds(self, item_id: str) -> bool:
        return stable_hash(item_id) % self.count == self.index

    def select(self, items: Iterable[_WithId]) -> Iterator[_WithId]:
        """The items of this shard (anything with an ``id``: items and unreadable rows alike)."""
        return (item for item in items if self.holds(item.id))  # type: ignore[attr-defined]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def select(items: Iterable[_WithId], shard: Shard | None) -> Iterable[_WithId]:
    """``items`` as the driver of ``shard`` sees them (all of them when unsharded)."""
    return items if shard is None else shard.select(items)
