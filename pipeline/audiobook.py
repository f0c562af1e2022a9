"""Audiobooks: one ``.m4b`` per book, made from its chapters' audio once all are written.

A book's chapters are items of their own (an EPUB) or chapters inside one item
(a Markdown file with headings), so the audiobook is a step after them: it reads
the chapters' metadata and audio back from the output, decodes the audio (any
format the writer makes) and encodes it once more as AAC in an MP4 container,
with a chapter marker per chapter, the book's title and author, and its cover
as the iTunes cover picture. All of it through PyAV (FFmpeg's native AAC encoder
and its ``mp4`` muxer: the ``ipod`` muxer FFmpeg picks for ``.m4b`` refuses a
picture stream, the ``mp4`` one writes it as the ``covr`` atom), with the
``M4B`` brand audiobook players look for.

Chapter times come from the chapters' metadata, not from decoding: FFmpeg's
MP4 muxer lays out its chapter track when the header is written, before any
audio. Each chapter item's audio is decoded to exactly its recorded duration
(padded or cut by the few samples a resampled Opus stream may differ), so the
markers fall where the metadata says. Between chapter items goes
``output.silence.chapter`` of silence, counted in the chapter before it; a
one-item book's chapters start at the first chunk after each chapter break.

A book's record (``.bark/books/<book key>.json``: the chapters, the digest of
everything the file was made from) is written after the ``.m4b``; a rerun that
finds both, with the same digest, does not make the file again.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.assembly import ItemMetadata
from pipeline.console import redact
from pipeline.object_store import Storage, StorageError
from pipeline.storage import BOOKKEEPING_DIR, item_key
from workers.errors import last_line

AUDIOBOOK_SUFFIX = "m4b"
BOOKS_DIR = f"{BOOKKEEPING_DIR}/books"  # <book key>.json: what each audiobook was made from
MUXER = "mp4"
MUXER_OPTIONS = {"brand": "M4B ", "movflags": "+faststart"}  # the index first: players start at once
AAC_ENCODER = "aac"  # FFmpeg's own AAC-LC encoder
AAC_BITRATE_KBPS = 64  # mono speech at 24 kHz: transparent enough for the spoken word
GENRE = "Audiobook"
FRAME_SAMPLES = 1 << 16  # silence between chapters goes to the encoder in frames of at most this
# Bump when the same chapters would make a different file (a changed encoder setting).
AUDIOBOOK_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChapterSource(_Record):
    """One item of a book: where its audio and metadata are in the output, and its title."""

    item_id: str
    title: str | None
    audio_key: str
    metadata_key: str


class BookOrder(_Record):
    """Everything the audiobook step needs of one book, bar what it reads back from the output."""

    book_id: str
    title: str | None
    author: str | None
    cover: bytes | None
    items: list[ChapterSource]  # in reading order
    chapter_titles: list[str | None] | None  # a one-item book: the chapters in its text (its headings)
    gap_s: float  # silence between chapter items


class BookChapter(_Record):
    title: str
    start_s: float
    end_s: float


class BookRecord(_Record):
    """What a written audiobook holds, and the digest of what it was made from."""

    id: str
    uri: str
    title: str | None
    author: str | None
    cover: bool
    duration_s: float
    sample_rate: int
    chapters: list[BookChapter]
    bytes: int
    checksum: str
    digest: str


class BookReceipt(_Record):
    """An audiobook written (``written``), found up to date (not ``written``), or not (``error``)."""

    book_id: str
    record: BookRecord | None = None
    written: bool = False
    error: str | None = None


def audiobook_key(book_id: str) -> str:
    return f"{item_key(book_id)}.{AUDIOBOOK_SUFFIX}"


def record_key(book_id: str) -> str:
    return f"{BOOKS_DIR}/{item_key(book_id)}.json"


def write_audiobook(storage: Storage, order: BookOrder) -> BookReceipt:
    """Makes the book's ``.m4b`` from its chapters in ``storage`` (unless an up-to-date one is there)."""
    try:
        metadata = [ItemMetadata.model_validate_json(storage.get_bytes(c.metadata_key)) for c in order.items]
    except (StorageError, ValidationError) as exc:
        return BookReceipt(book_id=order.book_id, error=redact(f"chapter metadata: {last_line(exc)}"))
    rate = metadata[0].sample_rate
    lengths = [round(m.duration_s * rate) for m in metadata]
    gap = round(order.gap_s * rate)
    marks = _chapter_marks(order, metadata, lengths, gap, rate)
    if isinstance(marks, str):
        return BookReceipt(book_id=order.book_id, error=marks)
    digest = _digest(order, metadata, marks)
    key = audiobook_key(order.book_id)
    earlier = _earlier_record(storage, order.book_id)
    if earlier is not None and earlier.digest == digest and storage.size(key) == earlier.bytes:
        return BookReceipt(book_id=order.book_id, record=earlier)
    total = sum(lengths) + gap * (len(lengths) - 1)
    try:
        with tempfile.TemporaryDirectory(prefix="bark-m4b-") as folder:
            path = Path(folder) / f"book.{AUDIOBOOK_SUFFIX}"
            has_cover = _encode(path, storage, order, lengths, gap, rate, marks, total)
            data_bytes = path.stat().st_size
            checksum = f"sha256:{_file_sha256(path)}"
            storage.put_file(key, path)
        record = BookRecord(
            id=order.book_id, uri=storage.uri_for(key), title=order.title, author=order.author, cover=has_cover,
            duration_s=total / rate, sample_rate=rate,
            chapters=[BookChapter(title=t, start_s=s / rate, end_s=e / rate) for t, s, e in marks],
            bytes=data_bytes, checksum=checksum, digest=digest,
        )
        storage.put_bytes(record_key(order.book_id), (record.model_dump_json(indent=2) + "\n").encode("utf-8"))
    except StorageError as exc:
        return BookReceipt(book_id=order.book_id, error=redact(f"storage: {exc}"))
    except (av.FFmpegError, ValueError, OSError) as exc:
        return BookReceipt(book_id=order.book_id, error=f"audio: {last_line(exc)}")
    return BookReceipt(book_id=order.book_id, record=record, written=True)


def _chapter_marks(
    order: BookOrder, metadata: list[ItemMetadata], lengths: list[int], gap: int, rate: int
) -> list[tuple[str, int, int]] | str:
    """(title, start, end) in samples of each chapter of the book; a one-line reason when the
    chapters cannot be placed. A chapter's end is the next one's start (or the book's end)."""
    if order.chapter_titles is None:
        titles = [c.title for c in order.items]
        starts, offset = [], 0
        for length in lengths:
            starts.append(offset)
            offset += length + gap
        total = offset - gap
    else:  # one item: a chapter starts at the first chunk after each chapter break
        [item] = metadata
        starts = [0] + [
            round(after.start_s * rate) for before, after in zip(item.chunks, item.chunks[1:]) if before.break_after == "chapter"
        ]
        titles = list(order.chapter_titles)
        if len(starts) != len(titles):
            return f"chapters: {len(titles)} headings read, but the audio has {len(starts)} chapters"
        total = lengths[0]
    ends = [*starts[1:], total]
    return [(title or f"Chapter {n}", s, e) for n, (title, s, e) in enumerate(zip(titles, starts, ends), 1)]


def _digest(order: BookOrder, metadata: list[ItemMetadata], marks: list[tuple[str, int, int]]) -> str:
    """Everything the file is made from: the chapters' audio by checksum, the marks, the book's tags."""
    made_of = {
        "version": AUDIOBOOK_VERSION,
        "audio": [(c.item_id, m.audio_checksum, m.sample_rate) for c, m in zip(order.items, metadata)],
        "marks": marks,
        "tags": [order.title, order.author],
        "cover": hashlib.sha256(order.cover).hexdigest() if order.cover else None,
        "aac": [AAC_ENCODER, AAC_BITRATE_KBPS],
    }
    return "sha256:" + hashlib.sha256(json.dumps(made_of, sort_keys=True).encode("utf-8")).hexdigest()


def _earlier_record(storage: Storage, book_id: str) -> BookRecord | None:
    try:
        return BookRecord.model_validate_json(storage.get_bytes(record_key(book_id)))
    except (StorageError, ValidationError):
        return None


def _encode(
    path: Path, storage: Storage, order: BookOrder, lengths: list[int], gap: int, rate: int,
    marks: list[tuple[str, int, int]], total: int,
) -> bool:
    """Writes the .m4b at ``path``, one chapter item's audio at a time; True when it has a cover."""
    time_base = Fraction(1, rate)
    with av.open(str(path), "w", format=MUXER, options=MUXER_OPTIONS) as container:
        audio = container.add_stream(AAC_ENCODER, rate=rate, layout="mono")
        audio.bit_rate = AAC_BITRATE_KBPS * 1000
        cover = _add_cover(container, order.cover)
        tags = {"title": order.title, "album": order.title, "artist": order.author, "album_artist": order.author}
        container.metadata.update({k: v for k, v in tags.items() if v} | {"genre": GENRE})
        container.set_chapters(
            [
                {"id": n, "start": start, "end": end, "time_base": time_base, "metadata": {"title": title}}
                for n, (title, start, end) in enumerate(marks, 1)
            ]
        )
        if cover is not None:
            container.mux(cover)
        pts = 0
        for n, (source, length) in enumerate(zip(order.items, lengths)):
            if n:
                for samples in _silence(gap):
                    pts = _encode_samples(container, audio, samples, pts, rate)
            for samples in _decoded(storage.get_bytes(source.audio_key), rate, length):
                pts = _encode_samples(container, audio, samples, pts, rate)
        container.mux(audio.encode(None))
    if pts != total:
        raise ValueError(f"encoded {pts} samples, expected {total}")
    return cover is not None


def _add_cover(container, image: bytes | None) -> av.Packet | None:
    """The cover as an attached picture (a stream of one packet), or None when there is none or
    FFmpeg cannot read it as an image (the book is made without one)."""
    if not image:
        return None
    try:
        with av.open(io.BytesIO(image)) as probe:
            context = probe.streams.video[0].codec_context
            codec, width, height = context.name, context.width, context.height
    except (av.FFmpegError, IndexError, ValueError):
        return None
    if codec not in ("mjpeg", "png"):
        return None
    stream = container.add_mux_stream(codec, width=width, height=height)
    stream.disposition = av.stream.Disposition.attached_pic
    packet = av.Packet(image)
    packet.stream, packet.pts, packet.dts, packet.is_keyframe = stream, 0, 0, True
    return packet


def _decoded(data: bytes, rate: int, length: int) -> Iterator[np.ndarray]:
    """The file's audio as float32 mono pieces at ``rate``, exactly ``length`` samples in all."""
    left = length
    with av.open(io.BytesIO(data)) as source:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in _resampled(source.decode(source.streams.audio[0]), resampler):
            samples = frame.to_ndarray().reshape(-1)[:left]
            left -= len(samples)
            if len(samples):
                yield samples
            if left == 0:
                break
    yield from _silence(left)


def _resampled(frames, resampler: av.AudioResampler) -> Iterator[av.AudioFrame]:
    for frame in frames:
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


def _silence(n: int) -> Iterator[np.ndarray]:
    while n > 0:
        size = min(n, FRAME_SAMPLES)
        yield np.zeros(size, dtype=np.float32)
        n -= size


def _encode_samples(container, stream, samples: np.ndarray, pts: int, rate: int) -> int:
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    container.mux(stream.encode(frame))
    return pts + len(samples)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
