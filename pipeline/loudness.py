"""Loudness normalisation of one item: EBU R128 / ITU-R BS.1770 loudness, a true-peak ceiling.

Bark's chunks come out at whatever level the voice and the sampling gave them,
so items of one book differ by several dB. An item is brought to a target
integrated loudness (BS.1770 K-weighted, gated, measured by pyloudnorm) with
one gain. Speech peaks high over its loudness (its crest factor), so that gain
alone can push the true peak (the peak between samples, measured on a
``TRUE_PEAK_OVERSAMPLING`` times oversampled signal as BS.1770 Annex 2 does)
over the ceiling.

Where it would, a limiter takes the few peaks down rather than the whole item:
a lower gain would miss the target, often by several LU on speech, and the
audiobook rules ask for both (loudness and peak). The limiter is FFmpeg's
``alimiter`` (through PyAV's filter graph, the FFmpeg build the mp3 and opus
encoders come from): a look-ahead peak limiter with smooth attack and release,
its latency compensated, so the item keeps its length and every chunk's time.
It limits sample peaks, so it is set ``LIMITER_MARGIN_DB`` under the ceiling to
leave room for the peaks between samples (and lower again after a pass that
left a true peak over). Its gain reduction lowers the loudness, so the gain
before it is searched until the limited item meets the target
(:func:`_limited_to_target`). A last measurement scales down whatever true peak
is still over the ceiling (hundredths of a dB where seen).

Audio too short to measure (under one 400 ms gating block) or silent (under the
absolute gate, -70 LUFS) is left as it is.
"""

from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pyloudnorm
from av.filter import Graph
from pydantic import BaseModel, ConfigDict, Field
from scipy.signal import resample_poly

from pipeline.config import LoudnessConfig

GATING_BLOCK_S = 0.4  # BS.1770's gating block: pyloudnorm measures nothing shorter
TRUE_PEAK_OVERSAMPLING = 4  # BS.1770-4 Annex 2: 4x at 48 kHz (more below it would cost without changing much)
TRUE_PEAK_BLOCK = 1 << 20  # samples oversampled at once
TRUE_PEAK_CONTEXT = 64  # samples either side of a block: over resample_poly's filter half-length (10 input samples at 4x)
LIMITER_ATTACK_MS = 5.0  # look-ahead: long enough for a smooth gain curve, short enough to catch a plosive
LIMITER_RELEASE_MS = 50.0  # quick enough that the syllable after a peak is not ducked
ALIMITER_MIN_LIMIT_DB = -24.0  # alimiter's lowest limit (0.0625)
LIMITER_MARGIN_DB = 0.5  # the limiter bounds sample peaks; inter-sample peaks rise a little over them
MAX_LIMITER_PASSES = 6  # each corrects the gain for the limiter's loss and the limit for peaks left over; 2-3 do
MAX_LIMITING_DB = 10.0  # most gain added beyond the plain one for the limiter to take off the peaks
MIN_LIMITED_SLOPE = 0.1  # LU per dB of gain: bounds one step to 10x what is missing
LOUDNESS_TOLERANCE_LU = 0.1  # close enough to the target to stop correcting for the limiter


class LoudnessReport(BaseModel):
    """What normalisation did to an item, kept in its metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_lufs: float | None = Field(description="integrated loudness as made; null: too short or silent to measure")
    gain_db: float = Field(
        description="gain applied (before the limiter, when it ran); 0 when the item was left as it was"
    )
    limited: bool = Field(description="whether the limiter took peaks down to the ceiling")
    output_lufs: float | None
    output_true_peak_dbtp: float | None = Field(description="null: all silence")


def integrated_loudness(audio: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness in LUFS; None where there is none to measure (too short, or silent)."""
    if len(audio) < math.ceil(GATING_BLOCK_S * sample_rate):
        return None
    meter = pyloudnorm.Meter(sample_rate, block_size=GATING_BLOCK_S)
    with np.errstate(divide="ignore", invalid="ignore"):
        lufs = meter.integrated_loudness(np.asarray(audio, dtype=np.float64))
    return float(lufs) if math.isfinite(lufs) else None


def true_peak_dbtp(audio: np.ndarray) -> float:
    """The highest absolute level of the ``TRUE_PEAK_OVERSAMPLING`` times oversampled signal, in dBTP.

    Oversampled a block at a time (with the interpolation filter's reach of
    context on each side, so the result is that of the whole signal at once):
    an hour of audio oversampled in one go would take gigabytes.
    """
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio), initial=0.0))
    for start in range(0, len(audio), TRUE_PEAK_BLOCK):
        end = min(len(audio), start + TRUE_PEAK_BLOCK)
        lo, hi = max(0, start - TRUE_PEAK_CONTEXT), min(len(audio), end + TRUE_PEAK_CONTEXT)
        oversampled = resample_poly(audio[lo:hi].astype(np.float64), TRUE_PEAK_OVERSAMPLING, 1)
        inner = oversampled[(start - lo) * TRUE_PEAK_OVERSAMPLING : (end - lo) * TRUE_PEAK_OVERSAMPLING]
        peak = max(peak, float(np.max(np.abs(inner))))
    return _to_db(peak)


def normalize_loudness(audio: np.ndarray, sample_rate: int, target: LoudnessConfig) -> tuple[np.ndarray, LoudnessReport]:
    """The item at ``target.target_lufs`` with its true peak at most ``target.true_peak_dbtp`` (float32)."""
    audio = np.asarray(audio, dtype=np.float32)
    measured = integrated_loudness(audio, sample_rate)
    if measured is None:
        return audio, LoudnessReport(
            input_lufs=None, gain_db=0.0, limited=False, output_lufs=None, output_true_peak_dbtp=_finite(true_peak_dbtp(audio))
        )
    gain_db = target.target_lufs - measured
    out = audio * np.float32(_to_gain(gain_db))
    limited = true_peak_dbtp(out) > target.true_peak_dbtp
    if limited:
        out, gain_db = _limited_to_target(audio, sample_rate, target, gain_db)
    over = true_peak_dbtp(out) - target.true_peak_dbtp
    if over > 0:
        out = out * np.float32(_to_gain(-over))
    return out, LoudnessReport(
        input_lufs=measured,
        gain_db=gain_db,
        limited=limited,
        output_lufs=integrated_loudness(out, sample_rate),
        output_true_peak_dbtp=_finite(true_peak_dbtp(out)),
    )


def _limited_to_target(
    audio: np.ndarray, sample_rate: int, target: LoudnessConfig, gain_db: float
) -> tuple[np.ndarray, float]:
    """Gain then limiter, the gain searched (secant steps) until the limited audio meets the target.

    Each dB of gain adds less than a dB of loudness once the limiter works, so
    the step divides what is missing by the slope seen between the last two
    passes (1 at first; at least ``MIN_LIMITED_SLOPE``). A true peak the
    limiter left over the ceiling lowers its limit by as much for the next pass.
    The gain stays within ``MAX_LIMITING_DB`` of the plain one: a target the
    ceiling leaves no room for (a peak-to-loudness ratio far under speech's)
    ends quieter than asked, as the report then shows, rather than crushed.
    """
    limit_db = target.true_peak_dbtp - LIMITER_MARGIN_DB
    max_gain_db = gain_db + MAX_LIMITING_DB
    slope, previous = 1.0, None
    for _ in range(MAX_LIMITER_PASSES):
        applied = gain_db
        out = peak_limit(audio * np.float32(_to_gain(applied)), sample_rate, _to_gain(limit_db))
        lufs = integrated_loudness(out, sample_rate)
        if lufs is None:
            break
        over = true_peak_dbtp(out) - target.true_peak_dbtp
        missing = target.target_lufs - lufs
        if abs(missing) <= LOUDNESS_TOLERANCE_LU and over <= 0:
            break
        if previous is not None and applied != previous[0]:
            slope = min(1.0, max(MIN_LIMITED_SLOPE, (lufs - previous[1]) / (applied - previous[0])))
        previous = (applied, lufs)
        gain_db = min(applied + missing / slope, max_gain_db)
        if gain_db == applied and over <= 0:
            break  # at the gain's bound: another pass would make the same audio
        limit_db = max(limit_db - max(over, 0.0), ALIMITER_MIN_LIMIT_DB)
    return out, applied


def peak_limit(audio: np.ndarray, sample_rate: int, limit: float) -> np.ndarray:
    """``audio`` through FFmpeg's ``alimiter``, sample peaks at most ``limit`` (linear), same length and timing.

    ``level=0`` keeps alimiter from scaling its output back up to full scale;
    ``latency=1`` removes its look-ahead delay.
    """
    graph = Graph()
    source = graph.add_abuffer(format="flt", sample_rate=sample_rate, layout="mono", time_base=Fraction(1, sample_rate))
    limiter = graph.add(
        "alimiter", f"limit={limit}:attack={LIMITER_ATTACK_MS}:release={LIMITER_RELEASE_MS}:level=0:latency=1"
    )
    sink = graph.add("abuffersink")
    source.link_to(limiter)
    limiter.link_to(sink)
    graph.configure()
    frame = av.AudioFrame.from_ndarray(np.asarray(audio, dtype=np.float32).reshape(1, -1), format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
    graph.push(frame)
    graph.push(None)
    pieces = []
    while True:
        try:
            pieces.append(graph.pull().to_ndarray().reshape(-1))
        except (av.error.EOFError, av.error.BlockingIOError):
            break
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)


def _to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def _to_db(gain: float) -> float:
    return 20.0 * math.log10(gain) if gain > 0 else -math.inf


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
