"""The job's records: what earlier runs left, and what this run records, behind one API.

The ledger owns the output's lease (one job per output), the index of what
earlier runs finished (the resume check), the manifest this run appends to,
the parts of unfinished items (chunk-level resume), the console progress and
the driver's metrics. The loop asks it one question per item (:meth:`earlier`)
and tells it one thing per item (ok, failed, skipped); how each is stored
depends on the storage kind, chosen once in :data:`BOOKS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from pipeline.assembly import ItemMetadata
from pipeline.config import JobConfig
from pipeline.console import redact
from pipeline.fingerprint import UNKNOWN_CHANGE, ItemFingerprint, changed_parts
from pipeline.idset import DUPLICATE_ID_REASON, DiskIdSet
from pipeline.lease import Lease, take_lease
from pipeline.manifest import Manifest, ManifestEntry, ManifestIndex, ManifestParts, index_manifest
from pipeline.metrics import JobMetrics
from pipeline.object_store import LocalStore, ObjectNotFound, S3Storage, Storage
from pipeline.progress import Progress
from pipeline.shards import Shard
from pipeline.storage import remove_temp_files
from pipeline.writer import PARTS_DIR, ChunkPart, ItemFiles, part_index, part_key, part_prefix, remove_parts

log = logging.getLogger(__name__)

Status = Literal["done", "failed", "todo"]


@dataclass(frozen=True)
class Verdict:
    """What earlier runs left for an item: ``done``, ``failed`` (not retried) or ``todo``;
    with ``todo``, what changed since the record when the item is redone because of a change."""

    status: Status
    changed: str | None = None


class _LocalBooks:
    """A local folder: an appended manifest (``manifest.jsonl``, or the shard's own part); temp files
    of killed runs are removed on open (only stale ones where other shards' drivers may be writing)."""

    def __init__(self, storage: LocalStore, run_id: str, lease: Lease, shard: Shard | None) -> None:
        for path in remove_temp_files(storage.root, shared=shard is not None):
            log.info("removed %s, left by a run that was killed", path)
        self.index: ManifestIndex = Manifest.index(storage.root, shard=shard)
        self.manifest = Manifest(storage.root, run_id=run_id, shard=shard)


class _S3Books:
    """S3: one manifest part per run under ``.bark/``, merged into ``manifest.jsonl`` at close."""

    def __init__(self, storage: S3Storage, run_id: str, lease: Lease, shard: Shard | None) -> None:
        self.index = index_manifest(storage, shard=shard)
        self.manifest = ManifestParts(storage, run_id=run_id, sole_writer=lambda: lease.held, shard=shard)


BOOKS: dict[type, type] = {LocalStore: _LocalBooks, S3Storage: _S3Books}


_ITEM_WITH_PARTS = "\x1f"  # marks an item key in Ledger.partial (no item key holds a control character)


class Ledger:
    def __init__(
        self,
        config: JobConfig,
        storage: Storage,
        run_id: str,
        *,
        progress: Progress,
        retry_failed: bool = False,
        force: bool = False,
        on_lost: Callable[[str], None] | None = None,
        shard: Shard | None = None,
    ) -> None:
        """Takes the output's lease (of ``shard`` where the job is one), then reads what earlier runs recorded there: that is only
        final once no other job writes."""
        self.config = config
        self.storage = storage
        self.progress = progress
        self.retry_failed = retry_failed
        self.force = force
        self.metrics = JobMetrics()
        self.seen_ids = DiskIdSet()  # the ids this run has seen (a repeated id fails): on disk, like the index
        # "<item key>/<parts id>" of every item with parts left by an earlier run, and the item key alone
        # (marked): parts of another fingerprint or split are removed once the item is done.
        self.partial = DiskIdSet()
        try:
            self.lease = take_lease(storage, run_id, config.lease, on_lost=on_lost, shard=shard)
            try:
                books = BOOKS[type(storage)](storage, run_id, self.lease, shard)
                self.done, self.manifest = books.index, books.manifest
                self._index_parts()
            except BaseException:
                self.lease.release()
                raise
        except BaseException:
            self.seen_ids.close()
            self.partial.close()
            raise

    def close(self) -> None:
        """Closes the manifest, the on-disk id bookkeeping and gives the lease back; idempotent."""
        try:
            try:
                self.manifest.close()
            finally:
                self.seen_ids.close()
                self.partial.close()
                self.done.close()
        finally:
            self.lease.release()

    # ------------------------------------------------------------------ resume

    def first_sighting(self, item_id: str) -> bool:
        """False for an id this run saw before: the repeat fails on the console only, the record of
        the item it repeats is left as it is."""
        if self.seen_ids.add(item_id):
            return True
        self.progress.item_failed(item_id, DUPLICATE_ID_REASON, repeat=True)
        self.metrics.item_done("failed")
        return False

    def earlier(self, item_id: str, fingerprint: ItemFingerprint) -> Verdict:
        """What earlier runs left for this item.

        The fingerprint decides first: an item whose text, voice, seed or settings differ from its
        record is redone, whether it was ok or failed (a fixed input needs no ``--retry-failed``), and
        a record without a fingerprint (an unreadable row, or an older version) counts as different.
        ``--force`` redoes every item. Only then are the objects checked: an item recorded ok must
        still have its metadata and an audio object of the recorded size; an item with no line (the run
        stopped between writing its objects and its manifest line) counts as done when its metadata
        object is there with this fingerprint and its audio matches it.
        """
        if not self.done:
            return Verdict("todo")
        entry = self.done.get(item_id)
        files = ItemFiles.of(item_id, self.config.output.format)
        if entry is not None:
            if entry.fingerprint != fingerprint.value:
                return Verdict("todo", self._what_changed(files, fingerprint) if entry.status == "ok" else UNKNOWN_CHANGE)
            if entry.status == "failed":
                return Verdict("todo" if self.retry_failed or self.force else "failed")
            if self.force:
                return Verdict("todo")
            done = self.storage.exists(files.metadata) and self.storage.size(files.audio) == entry.bytes
            return self._settled(files, fingerprint) if done else Verdict("todo")
        try:
            metadata = ItemMetadata.model_validate_json(self.storage.get_bytes(files.metadata))
        except (ObjectNotFound, ValidationError):
            return Verdict("todo")
        if metadata.fingerprint != fingerprint.value:
            return Verdict("todo", changed_parts(metadata.fingerprint_parts, fingerprint.parts))
        if self.force or metadata.audio_bytes is None or self.storage.size(files.audio) != metadata.audio_bytes:
            return Verdict("todo")
        self.manifest.append(
            ManifestEntry(
                id=item_id, status="ok", uri=self.storage.uri_for(files.audio), duration_s=metadata.duration_s,
                checksum=metadata.audio_checksum, bytes=metadata.audio_bytes, fingerprint=metadata.fingerprint,
            )
        )
        return self._settled(files, fingerprint)

    def finished_chunks(self, item_id: str, parts_id: str, n_chunks: int) -> set[int]:
        """The chunks of this item (as fingerprinted and split now: :attr:`ItemPlan.parts_id`) that an
        earlier run left as parts."""
        key = ItemFiles.of(item_id, self.config.output.format).key
        if self._part_folder(key, parts_id) not in self.partial:
            return set()
        indices = (part_index(name) for name in self.storage.list_keys(part_prefix(key, parts_id)))
        return {i for i in indices if i is not None and i < n_chunks}

    def part(self, item_id: str, parts_id: str, index: int) -> ChunkPart:
        """An earlier run's part, read back (for the tokens a later chunk continues from)."""
        key = ItemFiles.of(item_id, self.config.output.format).key
        return ChunkPart.from_bytes(self.storage.get_bytes(part_key(key, parts_id, index)))

    def _index_parts(self) -> None:
        """One listing of the parts folder at the start, so an item without parts costs no request."""
        for name in self.storage.list_keys(f"{PARTS_DIR}/"):
            if part_index(name) is not None:
                folder = name.removeprefix(f"{PARTS_DIR}/").rsplit("/", 1)[0]
                self.partial.add(folder)
                self.partial.add(_ITEM_WITH_PARTS + folder.rsplit("/", 1)[0])

    def _settled(self, files: ItemFiles, fingerprint: ItemFingerprint) -> Verdict:
        """A done item; parts left by a run stopped between writing it and removing them go now."""
        if _ITEM_WITH_PARTS + files.key in self.partial:
            remove_parts(self.storage, files.key)
        return Verdict("done")

    @staticmethod
    def _part_folder(key: str, parts_id: str) -> str:
        return part_prefix(key, parts_id).removeprefix(f"{PARTS_DIR}/").rstrip("/")

    def _what_changed(self, files: ItemFiles, fingerprint: ItemFingerprint) -> str:
        """The fingerprint parts that differ from the item's metadata object ("voice, seed")."""
        try:
            metadata = ItemMetadata.model_validate_json(self.storage.get_bytes(files.metadata))
        except (ObjectNotFound, ValidationError):
            return UNKNOWN_CHANGE
        return changed_parts(metadata.fingerprint_parts, fingerprint.parts)

    # ------------------------------------------------------------------ records

    def ok(self, entry: ManifestEntry, n_chunks: int, latency_s: float, changed: str | None) -> None:
        self.manifest.append(entry)
        self.progress.item_done(entry.id, entry.duration_s or 0.0, n_chunks, changed=changed)
        self.metrics.item_done("ok", entry.duration_s or 0.0, latency_s)

    def failed(self, item_id: str, reason: str, fingerprint: ItemFingerprint | None = None) -> None:
        """Records a failure (credentials in it redacted), unless the record already says exactly this:
        a row that fails the same way on every rerun does not grow the manifest."""
        reason = redact(reason)
        value = fingerprint.value if fingerprint is not None else None
        earlier = self.done.get(item_id) if self.done else None
        if earlier is None or (earlier.status, earlier.error, earlier.fingerprint) != ("failed", reason, value):
            self.manifest.append(
                ManifestEntry(id=item_id, status="failed", uri=None, duration_s=None, error=reason, fingerprint=value)
            )
        self.progress.item_failed(item_id, reason)
        self.metrics.item_done("failed")

    def skipped(self) -> None:
        self.progress.item_skipped()
        self.metrics.item_done("skipped")

    def failed_earlier(self, item_id: str) -> None:
        self.progress.item_failed_earlier(item_id, self.done.get(item_id).error)
        self.metrics.item_done("failed")

    def resumed(self, item_id: str, chunks_done: int, n_chunks: int) -> None:
        self.progress.echo(f"resumed {item_id}: {chunks_done} of {n_chunks} chunks were done by an earlier run")

    def redone(self) -> None:
        self.progress.item_changed()

    def chunks_in_flight(self, n: int) -> None:
        self.metrics.chunks_in_flight(n)
