"""The item writer: where a chunk's audio goes when the codec stage has made it.

It runs beside the codec replicas (a Ray actor per replica, see
:mod:`pipeline.writer_pool`), so audio never passes through the driver:

- a chunk of a multi-chunk item is written at once as a *part* under the
  item's part folder (its audio, and its tokens where a later chunk continues
  from them or tokens are saved), so a stopped or crashed item resumes from
  its last finished chunk;
- when every chunk is there, :meth:`ItemWriter.finish` reads the parts back,
  trims, joins, resamples and encodes the audio, writes the item's audio,
  subtitles, saved tokens and metadata (metadata last: its presence marks the
  item complete), removes the parts and returns the manifest entry;
  loudness normalisation (:mod:`pipeline.loudness`), where asked for, comes
  after resampling and before encoding;
- an item of one chunk skips the part and is written at once.

The driver sends the chunks of a group (those it sent through the stages
together) in one call, :meth:`ItemWriter.write_group`, and gets their receipts
back as one object; each chunk is still written on its own, by ``write_part``
or ``write_item``, and a chunk that failed in a stage (its audio is a
:class:`workers.records.ChunkFailure`) or in its write fails alone.

This module is the one place that names an item's files (:class:`ItemFiles`)
and its parts (:func:`part_key`). The class itself knows nothing of Ray.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticSerializationError

from pipeline.assembly import BreakKind, ChunkMetadata, ItemMetadata, join_chunks, resample, trim_chunk
from pipeline.audiobook import BookOrder, BookReceipt, write_audiobook
from pipeline.config import OutputConfig, QualityConfig, VoiceMode
from pipeline.console import redact
from pipeline.encoding import encode_audio
from pipeline.loudness import normalize_loudness
from pipeline.manifest import ManifestEntry
from pipeline.object_store import Storage, StorageError
from pipeline.retakes import ChunkCheck, KeptTake, TakeOrder, judge
from pipeline.storage import BOOKKEEPING_DIR, item_key
from pipeline.subtitles import count_too_fast, cues_from_chunks, to_srt, to_vtt
from pipeline.tokens import Codebooks, voice_npz_bytes
from workers.errors import last_line
from workers.records import AudioOutput, ChunkFailure, StageOutput, VoicePrompt

PARTS_DIR = f"{BOOKKEEPING_DIR}/parts"  # <item key>/<parts id digest>/<chunk index>.npz
PART_INDEX_DIGITS = 6
TOKEN_STAGES = ("semantic", "coarse", "fine")


@dataclass(frozen=True)
class ItemFiles:
    """The names of one item's objects: audio, metadata, subtitles, saved tokens."""

    key: str
    audio_format: str

    @classmethod
    def of(cls, item_id: str, audio_format: str) -> ItemFiles:
        return cls(item_key(item_id), audio_format)

    @property
    def audio(self) -> str:
        return f"{self.key}.{self.audio_format}"

    @property
    def metadata(self) -> str:
        return f"{self.key}.json"

    @property
    def srt(self) -> str:
        return f"{self.key}.srt"

    @property
    def vtt(self) -> str:
        return f"{self.key}.vtt"

    def tokens(self, index: int) -> str:
        return f"{self.key}.tokens/{index:04d}.npz"


def parts_folder(key: str) -> str:
    """Every part of an item, whatever the fingerprint it was made with."""
    return f"{PARTS_DIR}/{key}/"


def part_prefix(key: str, parts_id: str) -> str:
    """The parts of an item made with this fingerprint and split (:attr:`pipeline.planner.ItemPlan.parts_id`):
    a changed item never reuses another's parts."""
    return f"{parts_folder(key)}{parts_id.split(':')[-1]}/"


def part_key(key: str, parts_id: str, index: int) -> str:
    return f"{part_prefix(key, parts_id)}{index:0{PART_INDEX_DIGITS}d}.npz"


def part_index(name: str) -> int | None:
    """The chunk index of a part's name (the last segment), None for anything else."""
    stem, _, ext = name.rpartition("/")[2].partition(".")
    return int(stem) if ext == "npz" and len(stem) == PART_INDEX_DIGITS and stem.isdigit() else None


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChunkOrder(_Record):
    """What the writer needs of one chunk for its metadata and subtitles."""

    index: int
    text: str
    n_tokens: int
    seed: int  # its first take's
    voice: str | None
    break_after: BreakKind


class ItemOrder(_Record):
    """Everything the writer needs to write an item, bar the audio (sent once, at the end)."""

    item_id: str
    title: str | None
    extra: dict[str, Any]
    voice: str | None
    voice_mode: VoiceMode
    language: str
    seed: int
    model: str
    fingerprint: str
    fingerprint_parts: dict[str, str]
    parts_id: str  # what its parts are named by (pipeline.planner.ItemPlan.parts_id)
    chunks: list[ChunkOrder]
    started: float  # unix seconds the item was admitted, for its wall time


class PartOrder(_Record):
    """One chunk of a multi-chunk item, to be kept as a part."""

    item_id: str
    parts_id: str  # its item's (pipeline.planner.ItemPlan.parts_id)
    index: int
    keep_tokens: bool


class ChunkWrite(_Record):
    """One chunk of a group write: its order, and where among the call's top-level arguments (which
    Ray resolves before the call) its audio and, where kept, its tokens are."""

    order: PartOrder | ItemOrder
    take: TakeOrder  # which take of the chunk it is
    audio: int
    fine: int | None = None


class PartReceipt(_Record):
    """A chunk kept as a part (``audio_s``: its audio's length, for the progress bar; ``implausible``: kept
    though it is, out of retakes), not kept because it must be made again (``retake``: why), or not
    kept (``error``)."""

    item_id: str
    index: int
    audio_s: float = 0.0
    retake: str | None = None
    implausible: str | None = None
    error: str | None = None


class ItemReceipt(_Record):
    """An item written (``entry``), its one chunk to be made again (``retake``: why), or neither
    (``error``, one line). ``implausible``: its one chunk kept though it is, out of retakes."""

    item_id: str
    entry: ManifestEntry | None = None
    retake: str | None = None
    implausible: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ChunkPart:
    """A finished chunk as kept between its making and its item's assembly."""

    audio: np.ndarray  # (samples,) float32
    sample_rate: int
    timings: dict[str, float]
    tokens: dict[str, np.ndarray] | None  # semantic (T,), coarse (2, T'), fine (8, T')
    kept: KeptTake | None = None  # which take it is and what it measured (None: a part from before takes)

    @classmethod
    def made(cls, audio: AudioOutput, fine: StageOutput | None, kept: KeptTake) -> ChunkPart:
        tokens = None if fine is None else {"semantic": fine.semantic, "coarse": fine.coarse, "fine": fine.tokens}
        return cls(audio.audio, audio.sample_rate, dict(audio.timings), tokens, kept)

    def to_bytes(self) -> bytes:
        """Plain arrays in an ``.npz``: nothing pickled, read back with ``allow_pickle=False``."""
        arrays = {
            "audio": np.asarray(self.audio, dtype=np.float32),
            "sample_rate": np.int64(self.sample_rate),
            "timing_stages": np.array(list(self.timings), dtype=np.str_),
            "timing_seconds": np.array(list(self.timings.values()), dtype=np.float64),
        }
        if self.kept is not None:
            arrays["kept"] = np.array(self.kept.model_dump_json())
        for stage, tokens in (self.tokens or {}).items():
            arrays[stage] = np.asarray(tokens, dtype=np.int64)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ChunkPart:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            audio = npz["audio"]
            tokens = {stage: npz[stage] for stage in TOKEN_STAGES} if "fine" in npz.files else None
            timings = dict(zip(npz["timing_stages"].tolist(), npz["timing_seconds"].tolist()))
            kept = KeptTake.model_validate_json(str(npz["kept"])) if "kept" in npz.files else None
            return cls(audio, int(npz["sample_rate"]), timings, tokens, kept)

    def voice(self, name: str) -> VoicePrompt:
        """This chunk's tokens as the voice a later chunk continues from (a chained voice on resume)."""
        if self.tokens is None:
            raise ValueError(f"part {name} has no tokens")
        return VoicePrompt(
            name=name,
            semantic_prompt=self.tokens["semantic"],
            coarse_prompt=self.tokens["coarse"],
            fine_prompt=self.tokens["fine"],
        )


class ItemWriter:
    """Writes parts and items to one output. One per codec replica; stateless between calls."""

    def __init__(
        self, storage: Storage, output: OutputConfig, codebooks: Codebooks, quality: QualityConfig = QualityConfig()
    ) -> None:
        self.storage = storage
        self.output = output
        self.codebooks = codebooks
        self.quality = quality

    def files(self, item_id: str) -> ItemFiles:
        return ItemFiles.of(item_id, self.output.format)

    def ready(self) -> bool:
        """Answers once the writer is up: the job sends no chunk before its writers can take them."""
        return True

    def write_group(self, writes: list[ChunkWrite], *outputs: AudioOutput | StageOutput | ChunkFailure) -> list[PartReceipt | ItemReceipt]:
        """Every chunk of a group, one by one; their receipts in order, in one object."""
        return [
            self._write_chunk(w.order, w.take, outputs[w.audio], outputs[w.fine] if w.fine is not None else None)
            for w in writes
        ]

    def _write_chunk(
        self,
        order: PartOrder | ItemOrder,
        take: TakeOrder,
        audio: AudioOutput | ChunkFailure,
        fine: StageOutput | ChunkFailure | None,
    ) -> PartReceipt | ItemReceipt:
        """One chunk of a group: kept as a part, or written as its one-chunk item; a chunk that failed
        in a stage, or whose write raised, gets its error receipt and its group mates go on."""
        index = order.index if isinstance(order, PartOrder) else 0
        try:
            if isinstance(audio, ChunkFailure):
                error = audio.error
            elif isinstance(order, PartOrder):
                return self.write_part(order, audio, take, fine)
            else:
                return self.write_item(order, audio, take, fine)
        except Exception as exc:  # noqa: BLE001 - a fault of this chunk's write: its item fails, with one line
            error = last_line(exc)
        error = f"chunk {index}: {error}"
        if isinstance(order, PartOrder):
            return PartReceipt(item_id=order.item_id, index=index, error=error)
        return ItemReceipt(item_id=order.item_id, error=error)

    def write_part(
        self, order: PartOrder, audio: AudioOutput, take: TakeOrder, fine: StageOutput | None = None
    ) -> PartReceipt:
        """Keeps one take of a chunk (``fine``: its tokens, when a later chunk or the output needs them),
        unless it is implausible with retakes left: then nothing is written and the receipt asks for one."""
        check = self._judge(audio, take)
        receipt = PartReceipt(item_id=order.item_id, index=order.index)
        if self._retake(check, take):
            return receipt.model_copy(update={"retake": check.implausible})
        part = ChunkPart.made(audio, fine if order.keep_tokens else None, take.kept(check))
        try:
            self.storage.put_bytes(part_key(item_key(order.item_id), order.parts_id, order.index), part.to_bytes())
        except StorageError as exc:
            return receipt.model_copy(update={"error": redact(f"storage: {exc}")})
        return receipt.model_copy(update={"audio_s": check.audio_s, "implausible": self._kept_implausible(check)})

    def write_item(
        self, order: ItemOrder, audio: AudioOutput, take: TakeOrder, fine: StageOutput | None = None
    ) -> ItemReceipt:
        """An item of one chunk, written straight from this take of its audio, unless the take is
        implausible with retakes left: then nothing is written and the receipt asks for one."""
        check = self._judge(audio, take)
        if self._retake(check, take):
            return ItemReceipt(item_id=order.item_id, retake=check.implausible)
        part = ChunkPart.made(audio, fine if self.output.save_tokens else None, take.kept(check))
        return self._write(order, [part]).model_copy(update={"implausible": self._kept_implausible(check)})

    def _judge(self, audio: AudioOutput, take: TakeOrder) -> ChunkCheck:
        return judge(audio.audio, audio.sample_rate, take.expected_s, audio.ended_at_limit, self.quality)

    def _kept_implausible(self, check: ChunkCheck) -> str | None:
        """Why a kept take is implausible, to be told on the console: only where takes are judged
        (``quality.retakes`` > 0); the metadata records every take's check either way."""
        return check.implausible if self.quality.retakes > 0 else None

    def _retake(self, check: ChunkCheck, take: TakeOrder) -> bool:
        """Whether a take is to be made again rather than kept: implausible, and retakes left."""
        return check.implausible is not None and take.take < self.quality.retakes

    def finish(self, order: ItemOrder) -> ItemReceipt:
        """Assembles an item from its parts, writes it, and removes the parts."""
        key = item_key(order.item_id)
        try:
            parts = [
                ChunkPart.from_bytes(self.storage.get_bytes(part_key(key, order.parts_id, chunk.index)))
                for chunk in order.chunks
            ]
        except StorageError as exc:
            return ItemReceipt(item_id=order.item_id, error=redact(f"storage: {exc}"))
        receipt = self._write(order, parts)
        if receipt.error is None:
            remove_parts(self.storage, key)
        return receipt

    def write_book(self, order: BookOrder) -> BookReceipt:
        """A book's audiobook, from its chapters already in the output (:mod:`pipeline.audiobook`)."""
        return write_audiobook(self.storage, order)

    def _write(self, order: ItemOrder, parts: list[ChunkPart]) -> ItemReceipt:
        """Writes the item's objects, metadata last; a storage fault, or metadata that cannot be written
        as JSON, fails this item alone (what it had written is removed again)."""
        try:
            objects, entry = self._objects(order, parts)
        except PydanticSerializationError as exc:
            return ItemReceipt(item_id=order.item_id, error=f"metadata: cannot be written as JSON ({last_line(exc)})")
        except StorageError as exc:  # a key no storage can hold (too long for S3)
            return ItemReceipt(item_id=order.item_id, error=redact(f"storage: {exc}"))
        written: list[str] = []
        try:
            for name, data in objects.items():
                self.storage.put_bytes(name, data)
                written.append(name)
        except StorageError as exc:
            self._discard(written)
            return ItemReceipt(item_id=order.item_id, error=redact(f"storage: {exc}"))
        return ItemReceipt(item_id=order.item_id, entry=entry)

    def _objects(self, order: ItemOrder, parts: list[ChunkPart]) -> tuple[dict[str, bytes], ManifestEntry]:
        """Every object of a finished item, encoded but not yet written (the metadata last, as its
        presence marks the item complete), and the manifest entry that records them."""
        output = self.output
        rate = parts[0].sample_rate
        pieces = [trim_chunk(p.audio, rate, output.trim)[0] for p in parts]
        audio, bounds = join_chunks(pieces, [c.break_after for c in order.chunks], rate, output.silence, output.crossfade_s)
        if output.sample_rate and output.sample_rate != rate:
            audio = resample(audio, rate, output.sample_rate)
            bounds = [(round(s * output.sample_rate / rate), round(e * output.sample_rate / rate)) for s, e in bounds]
            rate = output.sample_rate
        loudness = None
        if output.loudness is not None:
            audio, loudness = normalize_loudness(audio, rate, output.loudness)
        files = self.files(order.item_id)
        written = {"audio": files.audio}
        encoded = encode_audio(audio, rate, output.format, output.bitrate)
        objects = {files.audio: encoded}
        checksum = f"sha256:{hashlib.sha256(encoded).hexdigest()}"
        chunks = [
            ChunkMetadata(
                **{**chunk.model_dump(), **_kept_fields(part.kept)},
                start_s=start / rate, end_s=end / rate, samples=end - start,
            )
            for chunk, part, (start, end) in zip(order.chunks, parts, bounds)
        ]
        too_fast = None
        if output.subtitles.enabled:
            cues = cues_from_chunks([(c.start_s, c.end_s, c.text) for c in chunks], output.subtitles, order.language)
            too_fast = count_too_fast(cues, output.subtitles.max_cps)
            written["srt"], written["vtt"] = files.srt, files.vtt
            objects[files.srt] = to_srt(cues).encode("utf-8")
            objects[files.vtt] = to_vtt(cues).encode("utf-8")
        if output.save_tokens:
            for index, part in enumerate(parts):
                if part.tokens is None or part.tokens["fine"].shape[-1] == 0:
                    continue  # a chunk that ended at once has no tokens to reuse as a voice
                name = written[f"tokens_{index}"] = files.tokens(index)
                objects[name] = voice_npz_bytes(name, *(part.tokens[s] for s in TOKEN_STAGES), self.codebooks)
        written["metadata"] = files.metadata
        duration = len(audio) / rate
        metadata = ItemMetadata(
            id=order.item_id,
            status="ok",
            title=order.title,
            duration_s=duration,
            sample_rate=rate,
            loudness=loudness,
            voice=order.voice,
            voice_mode=order.voice_mode,
            language=order.language,
            seed=order.seed,
            model=order.model,
            chunks=chunks,
            timings=_total_timings(parts),
            wall_s=max(0.0, time.time() - order.started),
            files={kind: self.storage.uri_for(name) for kind, name in written.items()},
            audio_bytes=len(encoded),
            audio_checksum=checksum,
            extra=order.extra,
            fingerprint=order.fingerprint,
            fingerprint_parts=order.fingerprint_parts,
            subtitles_too_fast=too_fast,
        )
        objects[files.metadata] = (metadata.model_dump_json(indent=2) + "\n").encode("utf-8")
        entry = ManifestEntry(
            id=order.item_id,
            status="ok",
            uri=metadata.files["audio"],
            duration_s=duration,
            checksum=checksum,
            bytes=len(encoded),
            fingerprint=order.fingerprint,
        )
        return objects, entry

    def _discard(self, keys: list[str]) -> None:
        """Best effort: removes what a failed item had written, so no final name holds half an item."""
        for key in keys:
            try:
                self.storage.delete(key)
            except StorageError:
                pass  # the item is recorded failed; a rerun overwrites whatever is left


def remove_parts(storage: Storage, key: str) -> None:
    """Best effort: the parts of an item that is written (any fingerprint's)."""
    try:
        storage.delete_folder(parts_folder(key))
    except StorageError:
        pass  # left for the next run that finishes this item


def _kept_fields(kept: KeptTake | None) -> dict[str, Any]:
    """A chunk's metadata from the take its item keeps: its seed (a retake's own), the take, what
    was measured and the takes rejected before it. None (a part kept before takes were judged): none."""
    if kept is None:
        return {}
    return {"seed": kept.seed, "take": kept.take, "check": kept.check, "retakes": list(kept.retakes)}


def _total_timings(parts: list[ChunkPart]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for part in parts:
        for stage, seconds in part.timings.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return totals
