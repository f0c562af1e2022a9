"""Assembly: chunk order, silence, encoded files, metadata JSON."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError

from pipeline.assembly import (
    ChunkMetadata,
    ItemMetadata,
    chunk_bounds,
    encode_audio,
    join_chunks,
    write_audio,
    write_json_atomic,
)

SR = 24_000


def test_join_puts_silence_between_chunks_only():
    a, b, c = np.full(3, 0.1), np.full(2, 0.2, np.float32), np.full(4, 0.3)
    joined = join_chunks([a, b, c], sample_rate=10, silence_s=0.2)
    assert joined.dtype == np.float32
    expected = np.concatenate([a, np.zeros(2), b, np.zeros(2), c]).astype(np.float32)
    np.testing.assert_array_equal(joined, expected)


def test_join_edge_cases():
    assert join_chunks([], SR, 0.25).shape == (0,)
    one = np.linspace(-1, 1, 5, dtype=np.float32)
    np.testing.assert_array_equal(join_chunks([one], SR, 0.25), one)
    assert len(join_chunks([one, one], SR, 0.0)) == 10
    with pytest.raises(ValueError, match="chunk 1"):
        join_chunks([one, one[None, :]], SR, 0.25)


def test_chunk_bounds_match_join():
    lengths = [SR, SR // 2, 7]
    bounds = chunk_bounds(lengths, SR, 0.25)
    assert bounds == [(0, SR), (SR + SR // 4, SR + SR // 4 + SR // 2), (2 * SR, 2 * SR + 7)]
    audios = [np.full(n, i + 1, np.float32) for i, n in enumerate(lengths)]
    joined = join_chunks(audios, SR, 0.25)
    for i, (start, end) in enumerate(bounds):
        assert np.all(joined[start:end] == i + 1)
    assert len(joined) == bounds[-1][1]


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_write_audio_round_trip(tmp_path, fmt):
    audio = 0.5 * np.sin(np.linspace(0, 200, SR // 2)).astype(np.float32)
    path = tmp_path / f"item.{fmt}"
    write_audio(path, audio, SR, fmt)
    data, rate = sf.read(path, dtype="float32")
    assert rate == SR and len(data) == len(audio)
    np.testing.assert_allclose(data, audio, atol=1 / 2**14)
    info = sf.info(path)
    assert info.format == fmt.upper() and info.subtype == "PCM_16"
    assert os.listdir(tmp_path) == [path.name]


def test_loud_and_broken_samples_are_clipped_not_wrapped(tmp_path):
    audio = np.array([2.0, -3.0, np.nan, 0.5], np.float32)
    path = tmp_path / "x.wav"
    write_audio(path, audio, SR, "wav")
    data, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(data, [1.0, -1.0, 0.0, 0.5], atol=1e-4)


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="format"):
        encode_audio(np.zeros(4, np.float32), SR, "mp3")


def metadata(**changes) -> ItemMetadata:
    fields = dict(
        id="chapter-1", status="ok", duration_s=1.5, sample_rate=SR, voice="v2/en_speaker_6",
        seed=7, model="suno/bark-small",
        chunks=[
            ChunkMetadata(index=0, text="Hello.", n_tokens=3, seed=11, start_s=0.0, end_s=1.5, samples=36_000)
        ],
        timings={"semantic": 0.5, "coarse": 1.25}, wall_s=3.0,
    )
    return ItemMetadata(**(fields | changes))


def test_metadata_json_round_trip(tmp_path):
    path = tmp_path / "chapter-1.json"
    write_json_atomic(path, metadata())
    loaded = ItemMetadata.model_validate_json(path.read_text(encoding="utf-8"))
    assert loaded == metadata()
    assert json.loads(path.read_text())["chunks"][0]["samples"] == 36_000


def test_metadata_rejects_bad_fields():
    with pytest.raises(ValidationError, match="status"):
        metadata(status="done")
    with pytest.raises(ValidationError, match="extra"):
        ItemMetadata(**metadata().model_dump(), unexpected=1)


def test_write_json_atomic_accepts_plain_data(tmp_path):
    path = tmp_path / "sub" / "data.json"
    write_json_atomic(path, {"text": "naïve ♪", "n": [1, 2]})
    write_json_atomic(path, {"text": "replaced"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"text": "replaced"}
    assert os.listdir(path.parent) == ["data.json"]
