"""The item writer alone (no Ray): parts kept under .bark/parts, an item assembled from them, files named once."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from pipeline.config import OutputConfig, QualityConfig
from pipeline.object_store import LocalStore
from pipeline.retakes import TakeOrder, judge
from pipeline.storage import BOOKKEEPING_DIR
from pipeline.tokens import Codebooks
from pipeline.writer import (
    PARTS_DIR,
    ChunkOrder,
    ChunkPart,
    ItemFiles,
    ItemOrder,
    ItemWriter,
    PartOrder,
    part_index,
    part_key,
)
from workers.records import AudioOutput, StageOutput
from workers.settings import BarkSettings

RATE = 24_000
FINGERPRINT = "fp1:" + "ab" * 16


def _audio(index: int, seconds: float = 0.5) -> AudioOutput:
    t = np.arange(int(RATE * seconds)) / RATE
    tone = (0.3 * np.sin(2 * np.pi * (220 + 40 * index) * t)).astype(np.float32)
    return AudioOutput(key=f"x#{index}", audio=tone, sample_rate=RATE, timings={"semantic": 0.1, "codec": 0.2})


def _fine(index: int) -> StageOutput:
    rng = np.random.default_rng(index)
    return StageOutput(
        key=f"x#{index}",
        tokens=rng.integers(0, 1024, (8, 30)),
        semantic=rng.integers(0, 10_000, 20),
        coarse=rng.integers(0, 1024, (2, 30)),
    )


def _take(index: int) -> TakeOrder:
    return TakeOrder(seed=100 + index, expected_s=0.5)


def _order(item_id: str, n: int) -> ItemOrder:
    return ItemOrder(
        item_id=item_id, title="T", extra={"row": 1}, voice="v2/en_speaker_6", voice_mode="chained", language="en",
        seed=5, model="tiny", fingerprint=FINGERPRINT, fingerprint_parts={"text": "t"}, parts_id=FINGERPRINT,
        chunks=[
            ChunkOrder(index=i, text=f"Chunk {i}.", n_tokens=3, seed=100 + i, voice="chunk", break_after="end" if i == n - 1 else "sentence")
            for i in range(n)
        ],
        started=0.0,
    )


def test_parts_are_kept_then_assembled_into_the_item_and_removed(tmp_path):
    store = LocalStore(tmp_path)
    writer = ItemWriter(store, OutputConfig(save_tokens=True), Codebooks.of(BarkSettings()))
    for index in (2, 0, 1):  # parts land in any order
        receipt = writer.write_part(PartOrder(item_id="book/1", parts_id=FINGERPRINT, index=index, keep_tokens=True), _audio(index), _take(index), _fine(index))
        assert receipt.error is None
    names = list(store.list_keys(f"{PARTS_DIR}/"))
    assert names == [part_key("book/1", FINGERPRINT, i) for i in range(3)]
    assert all(n.startswith(f"{BOOKKEEPING_DIR}/parts/book/1/{'ab' * 16}/") for n in names)
    assert [part_index(n) for n in names] == [0, 1, 2]

    receipt = writer.finish(_order("book/1", 3))
    assert receipt.error is None
    files = ItemFiles.of("book/1", "wav")
    audio, rate = sf.read(io.BytesIO(store.get_bytes(files.audio)))
    assert rate == RATE and receipt.entry.bytes == store.size(files.audio)
    metadata = json.loads(store.get_bytes(files.metadata))
    assert [c["seed"] for c in metadata["chunks"]] == [100, 101, 102]
    assert metadata["timings"] == {"semantic": pytest.approx(0.3), "codec": pytest.approx(0.6)}
    assert metadata["extra"] == {"row": 1} and metadata["fingerprint"] == FINGERPRINT
    assert set(metadata["files"]) == {"audio", "srt", "vtt", "metadata", "tokens_0", "tokens_1", "tokens_2"}
    assert not (tmp_path / PARTS_DIR / "book" / "1").exists()  # the parts went, folder and all


def test_a_part_round_trips_exactly_and_never_unpickles():
    kept = _take(1).kept(judge(_audio(1).audio, RATE, 0.5, False, QualityConfig()))
    part = ChunkPart.made(_audio(1), _fine(1), kept)
    back = ChunkPart.from_bytes(part.to_bytes())
    assert back.audio.dtype == np.float32 and np.array_equal(back.audio, part.audio)
    assert back.sample_rate == RATE and back.timings == part.timings and back.kept == kept
    for stage in ("semantic", "coarse", "fine"):
        assert np.array_equal(back.tokens[stage], part.tokens[stage])
    voice = back.voice("chunk 1")
    assert np.array_equal(voice.fine_prompt, _fine(1).tokens)
    assert ChunkPart.from_bytes(ChunkPart.made(_audio(0), None, kept).to_bytes()).tokens is None

    buffer = io.BytesIO()
    np.savez(buffer, audio=np.array([object()], dtype=object))  # a pickled array where audio should be
    with pytest.raises(ValueError, match="allow_pickle"):
        ChunkPart.from_bytes(buffer.getvalue())


def test_an_item_whose_part_is_missing_fails_alone_and_keeps_its_parts(tmp_path):
    store = LocalStore(tmp_path)
    writer = ItemWriter(store, OutputConfig(), Codebooks.of(BarkSettings()))
    writer.write_part(PartOrder(item_id="a", parts_id=FINGERPRINT, index=0, keep_tokens=False), _audio(0), _take(0))
    receipt = writer.finish(_order("a", 2))
    assert receipt.entry is None and receipt.error.startswith("storage: ") and "\n" not in receipt.error
    assert list(store.list_keys(f"{PARTS_DIR}/")) == [part_key("a", FINGERPRINT, 0)]
    assert not store.exists(ItemFiles.of("a", "wav").audio)


def test_an_item_of_one_chunk_is_written_without_parts(tmp_path):
    store = LocalStore(tmp_path)
    receipt = ItemWriter(store, OutputConfig(format="flac"), Codebooks.of(BarkSettings())).write_item(_order("solo", 1), _audio(0), _take(0))
    assert receipt.error is None and receipt.entry.uri.endswith("solo.flac")
    assert sorted(store.list_keys("")) == ["solo.flac", "solo.json", "solo.srt", "solo.vtt"]
