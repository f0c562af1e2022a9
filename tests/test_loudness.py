"""Loudness normalisation (EBU R128 / BS.1770 loudness, true-peak ceiling), alone and through the writer.

The audio is :func:`speech_like.speech_like`: a synthetic speech-like signal (glottal
pulses through vowel formants, stressed syllables, pauses, plosive bursts), about
20 dB from peak to loudness, so the audiobook ceiling (-3 dBTP at -18 LUFS: 15 dB)
bites. No real recording ships with the installed packages. Loudness is checked with
pyloudnorm's meter directly and the true peak also with an independent 8x FFT
oversampling, not only with the module's own measures.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from pydantic import ValidationError
from scipy.signal import resample, resample_poly

from pipeline.assembly import ItemMetadata
from pipeline.config import LOUDNESS_PRESETS, LoudnessConfig, OutputConfig
from pipeline import loudness
from pipeline.loudness import (
    GATING_BLOCK_S,
    TRUE_PEAK_OVERSAMPLING,
    integrated_loudness,
    normalize_loudness,
    true_peak_dbtp,
)
from pipeline.object_store import LocalStore
from pipeline.writer import ItemWriter
from item_audio import decode, one_chunk_item
from speech_like import RATE, speech_like
from workers.settings import BarkSettings

AUDIOBOOK = LOUDNESS_PRESETS["audiobook"]
LOUDNESS_TOLERANCE_LU = 0.5
FFT_OVERSAMPLING = 8
# A lossy codec does not give back the waveform it was given: its peaks may land a little over.
LOSSY_PEAK_TOLERANCE_DB = 0.5


def lufs(audio: np.ndarray, rate: int = RATE) -> float:
    return pyloudnorm.Meter(rate).integrated_loudness(np.asarray(audio, dtype=np.float64))


def fft_true_peak_dbtp(audio: np.ndarray) -> float:
    """Band-limited interpolation by FFT: a second, independent look between the samples."""
    oversampled = resample(np.asarray(audio, dtype=np.float64), FFT_OVERSAMPLING * len(audio))
    return 20 * np.log10(np.max(np.abs(oversampled)))


def lag(a: np.ndarray, b: np.ndarray, max_lag: int = 200) -> int:
    """The shift of ``b`` against ``a`` that lines them up best."""
    lags = range(-max_lag, max_lag + 1)
    return max(lags, key=lambda k: float(np.dot(a[max_lag : len(a) - max_lag], b[max_lag + k : len(b) - max_lag + k])))


@pytest.mark.parametrize("level_db", [-12.0, 0.0, 4.0])  # quiet, as made, and loud (over full scale)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speech_reaches_the_audiobook_target_under_its_ceiling(seed, level_db):
    audio = speech_like(seed=seed) * np.float32(10 ** (level_db / 20))
    plain_gain = AUDIOBOOK.target_lufs - lufs(audio)
    assert true_peak_dbtp(audio) + plain_gain > AUDIOBOOK.true_peak_dbtp + 1  # the ceiling bites: not a trivial case

    out, report = normalize_loudness(audio, RATE, AUDIOBOOK)
    assert len(out) == len(audio) and out.dtype == np.float32
    assert lufs(out) == pytest.approx(AUDIOBOOK.target_lufs, abs=LOUDNESS_TOLERANCE_LU)
    assert true_peak_dbtp(out) <= AUDIOBOOK.true_peak_dbtp
    assert fft_true_peak_dbtp(out) <= AUDIOBOOK.true_peak_dbtp + 0.05
    assert report.limited and report.input_lufs == pytest.approx(lufs(audio))
    assert report.gain_db > plain_gain  # the limiter's loss made up
    assert report.output_lufs == pytest.approx(lufs(out)) and report.output_true_peak_dbtp <= AUDIOBOOK.true_peak_dbtp
    assert lag(audio, out) == 0  # the limiter's look-ahead is compensated: chunk times hold


def test_speech_with_room_under_the_ceiling_gets_one_plain_gain():
    target = LOUDNESS_PRESETS["ebu_r128"]  # -23 LUFS, -1 dBTP: room for 22 dB of peaks
    audio = speech_like(seed=3)
    out, report = normalize_loudness(audio, RATE, target)
    assert not report.limited
    assert report.gain_db == pytest.approx(target.target_lufs - lufs(audio))
    np.testing.assert_allclose(out, audio * 10 ** (report.gain_db / 20), rtol=1e-5, atol=1e-7)
    assert lufs(out) == pytest.approx(target.target_lufs, abs=0.01)


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(RATE * 2, np.float32),  # silence: -inf LUFS
        np.full(RATE * 2, 1e-6, np.float32) * np.sign(np.sin(np.arange(RATE * 2))),  # under the -70 LUFS gate
        speech_like(seconds=GATING_BLOCK_S * 0.9),  # shorter than one gating block
    ],
    ids=["silent", "under-the-gate", "too-short"],
)
def test_audio_with_no_loudness_to_measure_is_left_as_it_is(audio):
    out, report = normalize_loudness(audio, RATE, AUDIOBOOK)
    assert np.array_equal(out, audio)
    assert report.input_lufs is None and report.gain_db == 0.0 and not report.limited and report.output_lufs is None
    assert integrated_loudness(audio, RATE) is None


def test_a_ceiling_that_leaves_no_room_ends_quieter_not_crushed():
    """-8 LUFS under -6 dBTP: a 2 dB peak-to-loudness ratio, ten under this speech's. The gain
    stops at its bound; the report says where the item ended."""
    target = LoudnessConfig(target_lufs=-8.0, true_peak_dbtp=-6.0)
    out, report = normalize_loudness(speech_like(), RATE, target)
    assert np.all(np.isfinite(out)) and true_peak_dbtp(out) <= target.true_peak_dbtp
    assert report.output_lufs < target.target_lufs - 1 and report.output_lufs == pytest.approx(lufs(out))


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_the_writer_normalises_each_item_before_encoding_and_records_it(tmp_path, fmt):
    """Read back from the file: within 0.5 LU of the target, true peak under the ceiling
    (lossy formats: within what their reconstruction overshoots)."""
    store = LocalStore(tmp_path)
    output = OutputConfig(format=fmt, loudness="audiobook")
    receipt = ItemWriter(store, output, BarkSettings()).write_item(*one_chunk_item("ch1", speech_like()))
    assert receipt.error is None
    data = store.get_bytes(f"ch1.{fmt}")
    if fmt in ("wav", "flac"):
        audio, rate = sf.read(io.BytesIO(data), dtype="float64")
        peak_tolerance = 0.0
    else:
        audio, rate, _ = decode(data)
        peak_tolerance = LOSSY_PEAK_TOLERANCE_DB
    assert lufs(audio, rate) == pytest.approx(AUDIOBOOK.target_lufs, abs=LOUDNESS_TOLERANCE_LU)
    assert true_peak_dbtp(audio) <= AUDIOBOOK.true_peak_dbtp + peak_tolerance

    metadata = ItemMetadata.model_validate(json.loads(store.get_bytes("ch1.json")))
    assert metadata.loudness is not None and metadata.loudness.limited
    assert metadata.loudness.input_lufs == pytest.approx(lufs(speech_like()), abs=0.5)  # trimmed edges aside
    assert metadata.loudness.gain_db > 0
    assert metadata.duration_s == pytest.approx(len(audio) / rate, abs=0.05)


def test_a_short_item_is_written_unchanged_with_its_loudness_unmeasured(tmp_path):
    store = LocalStore(tmp_path)
    short = speech_like(seconds=0.3)
    writer = ItemWriter(store, OutputConfig(format="wav", loudness="audiobook", trim={"enabled": False}), BarkSettings())
    assert writer.write_item(*one_chunk_item("tiny", short)).error is None
    loudness = json.loads(store.get_bytes("tiny.json"))["loudness"]
    assert loudness["input_lufs"] is None and loudness["gain_db"] == 0.0
    audio, _ = sf.read(io.BytesIO(store.get_bytes("tiny.wav")), dtype="float32")
    assert np.max(np.abs(audio)) == pytest.approx(np.max(np.abs(short)), abs=1e-3)  # no gain applied


def test_loudness_config_takes_a_preset_name_or_its_own_numbers():
    assert OutputConfig(loudness="audiobook").loudness == LoudnessConfig(target_lufs=-18.0, true_peak_dbtp=-3.0)
    assert OutputConfig(loudness={"target_lufs": -16, "true_peak_dbtp": -1.5}).loudness.target_lufs == -16
    assert OutputConfig().loudness is None
    with pytest.raises(ValidationError, match="unknown loudness preset 'podcast'; presets: audiobook, ebu_r128"):
        OutputConfig(loudness="podcast")
    with pytest.raises(ValidationError, match="true_peak_dbtp .* must be above target_lufs"):
        OutputConfig(loudness={"target_lufs": -10, "true_peak_dbtp": -12})
    with pytest.raises(ValidationError, match="less than or equal to 0"):
        OutputConfig(loudness={"target_lufs": -18, "true_peak_dbtp": 1})
    with pytest.raises(ValidationError, match="Extra inputs"):
        OutputConfig(loudness={"target_lufs": -18, "true_peak_dbtp": -3, "range_lu": 7})


def test_true_peak_measured_a_block_at_a_time_is_that_of_the_whole(monkeypatch):
    audio = speech_like(seconds=3.0)
    whole = 20 * np.log10(np.max(np.abs(resample_poly(audio.astype(np.float64), TRUE_PEAK_OVERSAMPLING, 1))))
    monkeypatch.setattr(loudness, "TRUE_PEAK_BLOCK", 997)  # many blocks, edges in odd places
    assert true_peak_dbtp(audio) == pytest.approx(whole, abs=1e-9)
    assert true_peak_dbtp(np.zeros(0, np.float32)) == -np.inf
