"""Assembly: trimming, joining with silences and fades, resampling, encoded files, metadata JSON."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
from pydantic import ValidationError

from pipeline.assembly import (
    SILENT_CHUNK_S,
    ChunkMetadata,
    ItemMetadata,
    join_chunks,
    resample,
    trim_chunk,
    write_json_atomic,
)
from pipeline.config import SilenceConfig, TrimConfig
from pipeline.encoding import encode_audio, write_audio

SR = 24_000
NO_FADE = 0.0
SILENCE = SilenceConfig(sentence=0.2, paragraph=0.5, chapter=1.0)


def tone(seconds: float, amplitude: float = 0.5, rate: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# --- trim ---------------------------------------------------------------------


def test_trim_drops_quiet_edges_but_keeps_a_margin():
    speech = tone(0.5)
    hiss = np.full(SR, 1e-4, np.float32)  # 71 dB under the tone: silence
    audio = np.concatenate([hiss, speech, hiss[: SR // 2]])
    trimmed, removed = trim_chunk(audio, SR, TrimConfig(threshold_db=-45, keep_s=0.05))
    keep = round(0.05 * SR)
    assert removed == SR - keep
    assert len(trimmed) == keep + len(speech) + keep
    np.testing.assert_array_equal(trimmed, audio[removed : removed + len(trimmed)])


def test_trim_cuts_a_quiet_tail_relative_to_the_peak():
    mumble = tone(0.5, amplitude=0.001)  # -54 dB under the speech: below -45
    audio = np.concatenate([tone(0.5), mumble])
    trimmed, removed = trim_chunk(audio, SR, TrimConfig(threshold_db=-45, keep_s=0.0))
    assert removed == 0 and len(trimmed) == SR // 2
    kept, _ = trim_chunk(audio, SR, TrimConfig(threshold_db=-60, keep_s=0.0))
    assert len(kept) == len(audio)


def test_trim_keeps_loud_audio_and_can_be_disabled():
    audio = tone(0.3)
    trimmed, removed = trim_chunk(audio, SR, TrimConfig())
    assert removed == 0 and len(trimmed) == len(audio)
    quiet_edges = np.concatenate([np.zeros(SR), audio])
    same, removed = trim_chunk(quiet_edges, SR, TrimConfig(enabled=False))
    assert same is quiet_edges and removed == 0


@pytest.mark.parametrize("audio", [np.zeros(SR, np.float32), np.full(SR, 1e-6, np.float32), np.zeros(0, np.float32)])
def test_all_silent_chunk_becomes_a_short_silence(audio):
    trimmed, removed = trim_chunk(audio, SR, TrimConfig())
    assert removed == 0
    assert len(trimmed) == round(SILENT_CHUNK_S * SR) and not trimmed.any()


def test_trim_refuses_stereo():
    with pytest.raises(ValueError, match="1-D"):
        trim_chunk(np.zeros((2, 100), np.float32), SR, TrimConfig())


# --- join ---------------------------------------------------------------------


def test_join_puts_the_silence_of_each_break_between_chunks_only():
    a, b, c = np.full(3, 0.1), np.full(2, 0.2, np.float32), np.full(4, 0.3)
    silence = SilenceConfig(sentence=0.2, paragraph=0.3, chapter=1.0)
    joined, bounds = join_chunks([a, b, c], ["sentence", "paragraph", "end"], 10, silence, NO_FADE)
    assert joined.dtype == np.float32
    expected = np.concatenate([a, np.zeros(2), b, np.zeros(3), c]).astype(np.float32)
    np.testing.assert_array_equal(joined, expected)
    assert bounds == [(0, 3), (5, 7), (10, 14)]


def test_bounds_locate_each_chunk_in_the_joined_audio():
    lengths = [SR, SR // 2, 7]
    audios = [np.full(n, i + 1, np.float32) for i, n in enumerate(lengths)]
    joined, bounds = join_chunks(audios, ["chapter", "sentence", "end"], SR, SILENCE, NO_FADE)
    assert bounds == [(0, SR), (2 * SR, 2 * SR + SR // 2), (2 * SR + SR // 2 + SR // 5, 2 * SR + SR // 2 + SR // 5 + 7)]
    for i, (start, end) in enumerate(bounds):
        assert np.all(joined[start:end] == i + 1)
    assert len(joined) == bounds[-1][1]


def test_every_chunk_fades_in_and_out():
    fade = round(0.01 * SR)
    joined, bounds = join_chunks([np.ones(SR), np.ones(SR)], ["sentence", "end"], SR, SILENCE, 0.01)
    for start, end in bounds:
        chunk = joined[start:end]
        assert chunk[0] < 0.01 and chunk[-1] < 0.01  # no step at either edge
        assert np.all(np.diff(chunk[:fade]) > 0) and np.all(np.diff(chunk[-fade:]) < 0)
        np.testing.assert_array_equal(chunk[fade:-fade], 1.0)
    # The silence runs from the middle of one fade to the middle of the next.
    assert bounds[1][0] - bounds[0][1] == round(0.2 * SR) - fade


def test_a_silence_shorter_than_the_fade_is_a_true_crossfade():
    fade = round(0.01 * SR)
    joined, bounds = join_chunks([np.ones(SR), np.ones(SR)], ["sentence", "end"], SR, SilenceConfig(sentence=0), 0.01)
    assert bounds[1][0] == bounds[0][1] - fade  # the two fades overlap entirely
    assert len(joined) == 2 * SR - fade
    inner = joined[fade:-fade]
    np.testing.assert_allclose(inner, 1.0, atol=1e-6)  # the fades add up: no dip at the join


def test_fades_are_clamped_on_very_short_chunks():
    short = np.ones(8, np.float32)
    joined, bounds = join_chunks([np.ones(SR), short, np.ones(SR)], ["sentence", "sentence", "end"], SR,
                                 SilenceConfig(sentence=0), 0.01)
    start, end = bounds[1]
    assert end - start == 8
    # Each neighbour overlaps the short chunk by at most a quarter of it.
    assert bounds[0][1] - start <= 2 and end - bounds[2][0] <= 2
    assert len(joined) == bounds[2][1] and np.all(np.isfinite(joined))


def test_join_edge_cases():
    joined, bounds = join_chunks([], [], SR, SILENCE, 0.01)
    assert joined.shape == (0,) and bounds == []
    one = np.linspace(-1, 1, 5, dtype=np.float32)
    joined, bounds = join_chunks([one], ["end"], SR, SILENCE, NO_FADE)
    np.testing.assert_array_equal(joined, one)
    assert bounds == [(0, 5)]
    joined, _ = join_chunks([one, np.zeros(0), one], ["sentence", "sentence", "end"], SR, SilenceConfig(sentence=0), 0.01)
    assert len(joined) == 10


@pytest.mark.parametrize(
    "breaks, message",
    [(["sentence"], "2 chunks"), (["sentence", "sentence"], "last"), (["end", "end"], "only the last"),
     (["line", "end"], "not one of")],
)
def test_join_refuses_bad_breaks(breaks, message):
    one = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=message):
        join_chunks([one, one], breaks, SR, SILENCE, NO_FADE)


def test_join_refuses_stereo():
    one = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="chunk 1"):
        join_chunks([one, one[None, :]], ["sentence", "end"], SR, SILENCE, NO_FADE)


# --- resample -----------------------------------------------------------------


def test_resample_keeps_duration_and_pitch():
    audio = tone(1.0)
    out = resample(audio, SR, 16_000)
    assert out.dtype == np.float32 and len(out) == 16_000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 220  # 1 s of audio: bin n is n Hz
    np.testing.assert_allclose(np.sqrt(np.mean(out[1000:-1000] ** 2)), 0.5 / np.sqrt(2), rtol=0.01)


def test_resample_to_the_same_rate_is_the_identity():
    audio = tone(0.1)
    assert resample(audio, SR, SR) is audio


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
        encode_audio(np.zeros(4, np.float32), SR, "aac")


def metadata(**changes) -> ItemMetadata:
    fields = dict(
        id="chapter-1", status="ok", duration_s=1.5, sample_rate=SR, voice="v2/en_speaker_6",
        voice_mode="chained", language="en", title="Chapter One", seed=7, model="suno/bark-small",
        chunks=[
            ChunkMetadata(index=0, text="Hello.", n_tokens=3, seed=11, voice="v2/en_speaker_6", break_after="paragraph",
                          start_s=0.0, end_s=1.0, samples=24_000),
            ChunkMetadata(index=1, text="Naïve ♪.", n_tokens=4, seed=12, voice="chunk 0", break_after="end",
                          start_s=1.6, end_s=2.1, samples=12_000),
        ],
        timings={"semantic": 0.5, "coarse": 1.25}, wall_s=3.0,
        extra={"author": "A. N. Author", "row": 3},
        files={"audio": "file:///out/chapter-1.wav", "srt": "file:///out/chapter-1.srt"},
    )
    return ItemMetadata(**(fields | changes))


def test_metadata_json_round_trip(tmp_path):
    path = tmp_path / "chapter-1.json"
    write_json_atomic(path, metadata())
    loaded = ItemMetadata.model_validate_json(path.read_text(encoding="utf-8"))
    assert loaded == metadata()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["chunks"][0]["samples"] == 24_000
    assert [c["voice"] for c in data["chunks"]] == ["v2/en_speaker_6", "chunk 0"]
    assert data["extra"]["author"] == "A. N. Author" and data["files"]["audio"].endswith(".wav")


def test_metadata_rejects_bad_fields():
    with pytest.raises(ValidationError, match="status"):
        metadata(status="done")
    with pytest.raises(ValidationError, match="extra"):
        ItemMetadata(**metadata().model_dump(), unexpected=1)
    with pytest.raises(ValidationError, match="voice_mode"):
        metadata(voice_mode="random")
    chunk = metadata().chunks[0].model_dump()
    with pytest.raises(ValidationError, match="break_after"):
        ChunkMetadata(**(chunk | {"break_after": "line"}))


def test_write_json_atomic_accepts_plain_data(tmp_path):
    path = tmp_path / "sub" / "data.json"
    write_json_atomic(path, {"text": "naïve ♪", "n": [1, 2]})
    write_json_atomic(path, {"text": "replaced"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"text": "replaced"}
    assert os.listdir(path.parent) == ["data.json"]
