"""Audiobooks (output.audiobook: m4b): one .m4b per EPUB and per Markdown file with headings,
read back with PyAV: duration, chapters (count, titles, start times) against the chapter items'
metadata, title/author tags and the cover. The job runs on real Ray actors and the tiny model;
the step alone runs on written chapter files of every output format."""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from ebooklib import epub
from pydantic import ValidationError

from pipeline.assembly import ItemMetadata
from pipeline.audiobook import BOOKS_DIR, BookOrder, ChapterSource, write_audiobook
from pipeline.cli import main
from pipeline.config import OutputConfig
from pipeline.encoding import encode_audio
from pipeline.object_store import LocalStore, open_storage
from pipeline.writer import ItemFiles
from tests.conftest import REPO

RATE = 24_000
AAC_FRAME_S = 1024 / RATE
GAP_S = 1.5  # output.silence.chapter's default: the pause between chapter items


def _png(width: int = 16, height: int = 12) -> bytes:
    """A real PNG image (red), built from its chunks."""
    rows = b"".join(b"\x00" + b"\xc0\x10\x10" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


COVER = _png()


def _epub(path: Path, chapters: list[tuple[str, str]], *, cover: bytes | None = COVER) -> Path:
    """A real EPUB: title, author, a cover image, and (toc title, paragraph) per chapter."""
    book = epub.EpubBook()
    book.set_identifier(path.stem)
    book.set_title("The Lighthouse Keeper")
    book.set_language("en")
    book.add_author("Ann Author")
    if cover is not None:
        book.set_cover("cover.png", cover, create_page=False)
    documents = []
    for n, (_title, text) in enumerate(chapters, 1):
        document = epub.EpubHtml(title=f"c{n}", file_name=f"c{n}.xhtml", lang="en")
        document.content = f"<html><body><p>{text}</p></body></html>"
        book.add_item(document)
        documents.append(document)
    book.toc = [epub.Link(d.file_name, title, d.id) for d, (title, _) in zip(documents, chapters)]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *documents]
    epub.write_epub(str(path), book, {"raise_exceptions": True})
    return path


MARKDOWN = """---
title: Harbour Notes
author: Ben Writer
---
A short opening line.

# The Boats

They sailed at dawn.

## The Return

They came back late.
"""


def _read_m4b(path: Path) -> dict:
    with av.open(str(path)) as container:
        pictures = [s for s in container.streams.video if s.disposition & av.stream.Disposition.attached_pic]
        cover = None
        if pictures:
            cover = bytes(next(container.demux(pictures[0])))
        return {
            "duration_s": container.duration / av.time_base,
            "audio": container.streams.audio[0].codec_context.name,
            "rate": container.streams.audio[0].codec_context.sample_rate,
            "tags": dict(container.metadata),
            "chapters": [
                (c["metadata"].get("title"), float(c["start"] * c["time_base"]), float(c["end"] * c["time_base"]))
                for c in container.chapters()
            ],
            "cover": cover,
        }


def _metadata(out: Path, item_id: str) -> dict:
    return json.loads((out / f"{item_id}.json").read_text())


# ---------------------------------------------------------------------- the job


def _config(tmp_path: Path, tiny_model_dir, **limits) -> str:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw["sampling"]["semantic"]["max_new_tokens"] = 16
    raw.setdefault("output", {})["audiobook"] = "m4b"
    raw.setdefault("limits", {}).update(limits)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_job_writes_an_m4b_per_book_and_skips_a_book_with_a_failed_chapter(ray_session, tiny_model_dir, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    _epub(source / "keeper.epub", [("The Storm", "The wind rose."), ("Morning", "The sea was calm."), ("Home", "He slept.")])
    (source / "harbour.md").write_text(MARKDOWN)
    (source / "plain.md").write_text("No headings here, just words.")
    # The second chapter is over limits.max_item_chars: it fails alone, and its book is not made.
    _epub(source / "broken.epub", [("Fine", "A short chapter."), ("Too Long", "Words " * 60)], cover=None)
    out = tmp_path / "out"
    config = _config(tmp_path, tiny_model_dir, max_item_chars=200)

    assert main(["run", "--config", config, "--input", str(source), "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "FAILED  broken/002: text:" in err
    [line] = [line for line in err.splitlines() if "book broken" in line]
    assert line == "FAILED  book broken: not made: its chapter broken/002 failed"
    assert not (out / "broken.m4b").exists() and (out / "broken" / "001.wav").exists()
    assert not (out / "plain.m4b").exists()  # no headings: no chapters, no book

    # The EPUB: three chapter items, each a chapter, the chapter pause counted in the one before.
    book = _read_m4b(out / "keeper.m4b")
    chapters = [_metadata(out, f"keeper/{n:03d}") for n in (1, 2, 3)]
    durations = [m["duration_s"] for m in chapters]
    assert (book["audio"], book["rate"]) == ("aac", chapters[0]["sample_rate"])
    assert book["duration_s"] == pytest.approx(sum(durations) + 2 * GAP_S, abs=2 * AAC_FRAME_S)
    assert [title for title, _, _ in book["chapters"]] == ["The Storm", "Morning", "Home"]
    starts = [0.0, durations[0] + GAP_S, durations[0] + durations[1] + 2 * GAP_S]
    assert [start for _, start, _ in book["chapters"]] == pytest.approx(starts, abs=1e-3)
    assert [end for _, _, end in book["chapters"]][:2] == pytest.approx(starts[1:], abs=1e-3)
    assert book["tags"]["title"] == "The Lighthouse Keeper" and book["tags"]["artist"] == "Ann Author"
    assert book["tags"]["major_brand"].strip() == "M4B"
    assert book["cover"] == COVER
    record = json.loads((out / BOOKS_DIR / "keeper.json").read_text())
    assert [c["title"] for c in record["chapters"]] == ["The Storm", "Morning", "Home"] and record["cover"]

    # The Markdown file: one item, a chapter per heading (and the opening before the first).
    notes = _read_m4b(out / "harbour.m4b")
    item = _metadata(out, "harbour")
    assert notes["duration_s"] == pytest.approx(item["duration_s"], abs=2 * AAC_FRAME_S)
    chunk_starts = [0.0] + [
        after["start_s"] for before, after in zip(item["chunks"], item["chunks"][1:]) if before["break_after"] == "chapter"
    ]
    assert [title for title, _, _ in notes["chapters"]] == ["Chapter 1", "The Boats", "The Return"]
    assert [start for _, start, _ in notes["chapters"]] == pytest.approx(chunk_starts, abs=1e-3)
    assert notes["tags"]["title"] == "Harbour Notes" and notes["tags"]["artist"] == "Ben Writer"
    assert notes["cover"] is None

    # A rerun: every chapter is done, the books are up to date: nothing is made again.
    written = {p: p.stat().st_mtime_ns for p in (out / "keeper.m4b", out / "harbour.m4b")}
    assert main(["run", "--config", config, "--input", str(source), "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert "book    keeper: " in err and "3 chapters" in err and "(unchanged)" in err
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())

    # The m4b gone (or its record): the rerun makes it again from the chapters already there,
    # without narrating anything (no writers: the driver makes it).
    (out / "keeper.m4b").unlink()
    assert main(["run", "--config", config, "--input", str(source), "--output", str(out), "--quiet"]) == 1
    assert _read_m4b(out / "keeper.m4b")["chapters"] == book["chapters"]


# ---------------------------------------------------------------------- the step alone


def _chapter_item(store: LocalStore, item_id: str, audio: np.ndarray, fmt: str, title: str) -> ChapterSource:
    """A written chapter item as the writer leaves it: its audio file and its metadata."""
    files = ItemFiles.of(item_id, fmt)
    encoded = encode_audio(audio, RATE, fmt)
    store.put_bytes(files.audio, encoded)
    metadata = ItemMetadata(
        id=item_id, status="ok", title=title, duration_s=len(audio) / RATE, sample_rate=RATE, voice_mode="fixed",
        language="en", seed=0, model="tiny", wall_s=0.0, audio_bytes=len(encoded), audio_checksum=f"x:{len(encoded)}",
    )
    store.put_bytes(files.metadata, metadata.model_dump_json().encode())
    return ChapterSource(item_id=item_id, title=title, audio_key=files.audio, metadata_key=files.metadata)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_step_decodes_every_output_format_to_exact_chapter_times(tmp_path, fmt):
    store = LocalStore(tmp_path)
    rng = np.random.default_rng(0)
    lengths = [RATE + 123, 2 * RATE - 77, RATE // 2]
    sources = [
        _chapter_item(store, f"b/{n}", (0.2 * rng.standard_normal(length)).astype(np.float32), fmt, f"Part {n}")
        for n, length in enumerate(lengths, 1)
    ]
    order = BookOrder(book_id="b", title="B", author=None, cover=None, items=sources, chapter_titles=None, gap_s=0.5)
    receipt = write_audiobook(store, order)
    assert receipt.error is None and receipt.written
    book = _read_m4b(tmp_path / "b.m4b")
    total = (sum(lengths) + 2 * RATE // 2) / RATE
    assert book["duration_s"] == pytest.approx(total, abs=2 * AAC_FRAME_S)
    starts = [0.0, (lengths[0] + RATE // 2) / RATE, (lengths[0] + lengths[1] + RATE) / RATE]
    assert [(t, s) for t, s, _ in book["chapters"]] == [(f"Part {n}", pytest.approx(s, abs=1e-3)) for n, s in enumerate(starts, 1)]
    assert receipt.record.duration_s == pytest.approx(total, abs=1e-9)
    assert "artist" not in book["tags"]  # no author: no tag


def test_step_on_s3_writes_once_and_finds_the_book_up_to_date(s3_env, tmp_path):
    store = open_storage(f"s3://{s3_env.bucket}/books-{uuid.uuid4().hex[:8]}")
    rng = np.random.default_rng(1)
    sources = [
        _chapter_item(store, f"s/{n}", (0.1 * rng.standard_normal(RATE)).astype(np.float32), "flac", f"S{n}")
        for n in (1, 2)
    ]
    order = BookOrder(book_id="s", title="S", author="A", cover=COVER, items=sources, chapter_titles=None, gap_s=0.25)
    first = write_audiobook(store, order)
    assert first.error is None and first.written and first.record.cover
    path = tmp_path / "s.m4b"
    path.write_bytes(store.get_bytes("s.m4b"))
    book = _read_m4b(path)
    assert [t for t, _, _ in book["chapters"]] == ["S1", "S2"] and book["cover"] == COVER
    again = write_audiobook(store, order)
    assert again.error is None and not again.written and again.record == first.record
    retitled = write_audiobook(store, order.model_copy(update={"title": "S, revised"}))
    assert retitled.written and retitled.record.digest != first.record.digest


def test_step_fails_one_line_when_a_chapter_is_missing(tmp_path):
    store = LocalStore(tmp_path)
    source = _chapter_item(store, "b/1", np.zeros(RATE, np.float32), "wav", "One")
    missing = ChapterSource(item_id="b/2", title="Two", audio_key="b/2.wav", metadata_key="b/2.json")
    order = BookOrder(book_id="b", title="B", author="A", cover=b"not an image", items=[source, missing], chapter_titles=None, gap_s=0)
    receipt = write_audiobook(store, order)
    assert receipt.error.startswith("chapter metadata: ") and "\n" not in receipt.error
    assert not (tmp_path / "b.m4b").exists()


def test_config_takes_m4b_or_nothing():
    assert OutputConfig().audiobook is None
    assert OutputConfig(audiobook="m4b").audiobook == "m4b"
    with pytest.raises(ValidationError, match="audiobook"):
        OutputConfig(audiobook="mp3")
