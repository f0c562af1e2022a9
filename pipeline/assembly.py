"""Assembly: one item's chunk audios trimmed, stitched in order, described.

Upstream Bark's long-form recipe joins sentences with a short silence. Here each
chunk first loses its long leading/trailing near-silence (Bark pads and trails
off), then chunks are joined with a silence chosen by the kind of boundary
(sentence, paragraph, chapter) and a short fade at every edge so no join clicks.
The metadata records where every chunk landed in the file (and its text, seed
and voice), which is what subtitles and debugging a bad chunk need.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy.signal import resample_poly

from pipeline.config import SilenceConfig, TrimConfig, VoiceMode
from pipeline.loudness import LoudnessReport
from pipeline.retakes import ChunkCheck, Retake
from pipeline.storage import atomic_write_bytes

# What separates chunk i from chunk i + 1; the last chunk is followed by "end".
BreakKind = Literal["sentence", "paragraph", "chapter", "end"]
BREAK_KINDS = ("sentence", "paragraph", "chapter", "end")
END = "end"

TRIM_FRAME_S = 0.010  # RMS frame for the energy trim: short enough to cut near a word's edge
# A frame quieter than this (absolute, dBFS) is silence whatever the chunk's peak:
# below 16-bit audio's useful range, so a chunk with nothing louder is all silence.
SILENCE_FLOOR_DBFS = -80.0
# An all-silent chunk becomes this much silence, not nothing: it keeps its place,
# its pause and a non-empty span for its metadata and subtitle.
SILENT_CHUNK_S = 0.1
# A fade never covers more than this share of its chunk, so a very short chunk
# keeps a middle and a chunk never overlaps more than its two neighbours.
MAX_FADE_FRACTION = 0.25


def trim_chunk(audio: np.ndarray, sample_rate: int, trim: TrimConfig) -> tuple[np.ndarray, int]:
    """The chunk without its quiet start and end, and how many samples left its start.

    Frames of ``TRIM_FRAME_S`` quieter than ``trim.threshold_db`` below the chunk's
    loudest frame (or under ``SILENCE_FLOOR_DBFS``) count as silence; leading and
    trailing silent frames go, except ``trim.keep_s`` at each edge so speech
    does not start or stop abruptly. The start offset lets callers map times in
    the chunk to times in the trimmed chunk. An all-silent chunk becomes
    ``SILENT_CHUNK_S`` of zeros (offset 0). With ``trim.enabled`` off the input
    comes back as it is.
    """
    samples = _one_channel(audio, "chunk")
    if not trim.enabled:
        return audio, 0
    frame = max(1, round(TRIM_FRAME_S * sample_rate))
    rms = _frame_rms(samples, frame)
    level = max(rms.max(initial=0.0) * _db_to_gain(trim.threshold_db), _db_to_gain(SILENCE_FLOOR_DBFS))
    loud = np.flatnonzero(rms >= level)
    if loud.size == 0:
        return np.zeros(round(SILENT_CHUNK_S * sample_rate), dtype=np.float32), 0
    keep = round(trim.keep_s * sample_rate)
    start = max(0, int(loud[0]) * frame - keep)
    end = min(len(samples), (int(loud[-1]) + 1) * frame + keep)
    return samples[start:end], start


def _frame_rms(audio: np.ndarray, frame: int) -> np.ndarray:
    """RMS of consecutive frames; the last, partial frame is padded with zeros."""
    n_frames = math.ceil(len(audio) / frame)
    padded = np.zeros(n_frames * frame, dtype=np.float64)
    padded[: len(audio)] = audio
    return np.sqrt(np.mean(padded.reshape(n_frames, frame) ** 2, axis=1))


def _db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def join_chunks(
    audios: list[np.ndarray],
    breaks: list[str],
    sample_rate: int,
    silence: SilenceConfig,
    crossfade_s: float,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Chunks in order, separated by the silence of each boundary's kind; float32.

    ``breaks[i]`` separates chunk i from chunk i + 1 and the last is ``"end"``.
    Every chunk fades in and out over ``crossfade_s`` (at most
    ``MAX_FADE_FRACTION`` of either chunk at a boundary), with raised-cosine
    curves that sum to one. A boundary's silence is measured from the middle of
    one fade to the middle of the next, so a silence shorter than the fade
    overlaps and adds the two fades (a true crossfade, no dip) and the timing
    changes smoothly with the setting; with ``crossfade_s=0`` the silence is
    exactly the gap between the chunks.

    Returns the audio and each chunk's (start, end) samples in it, fades
    included; neighbours overlap only in a crossfade.
    """
    _check_breaks(audios, breaks)
    audios = [_one_channel(audio, f"chunk {i}") for i, audio in enumerate(audios)]
    if not audios:
        return np.zeros(0, dtype=np.float32), []
    nominal = round(crossfade_s * sample_rate)
    lengths = [len(audio) for audio in audios]
    # fades[i] is the fade at the boundary before chunk i; fades[-1] is the final fade-out.
    fades = [_fade_length(nominal, lengths[0])]
    for i in range(1, len(audios)):
        fades.append(min(_fade_length(nominal, lengths[i - 1]), _fade_length(nominal, lengths[i])))
    fades.append(_fade_length(nominal, lengths[-1]))

    bounds, start = [], 0
    for i, length in enumerate(lengths):
        if i > 0:
            gap = round(getattr(silence, breaks[i - 1]) * sample_rate)
            start = bounds[-1][1] + gap - fades[i]
        bounds.append((start, start + length))
    joined = np.zeros(bounds[-1][1], dtype=np.float32)
    for i, (audio, (start, end)) in enumerate(zip(audios, bounds)):
        joined[start:end] += _faded(audio, fades[i], fades[i + 1])
    return joined, bounds


def _check_breaks(audios: list[np.ndarray], breaks: list[str]) -> None:
    if len(breaks) != len(audios):
        raise ValueError(f"got {len(breaks)} breaks for {len(audios)} chunks; need one per chunk")
    for i, kind in enumerate(breaks):
        if kind not in BREAK_KINDS:
            raise ValueError(f"break {i}: {kind!r} is not one of {', '.join(BREAK_KINDS)}")
        is_last = i == len(breaks) - 1
        if (kind == END) != is_last:
            raise ValueError(f"break {i}: only the last chunk is followed by {END!r}, got {kind!r}")


def _fade_length(nominal: int, chunk_length: int) -> int:
    return min(nominal, int(chunk_length * MAX_FADE_FRACTION))


def _faded(audio: np.ndarray, fade_in: int, fade_out: int) -> np.ndarray:
    out = audio.astype(np.float32, copy=True)
    if fade_in:
        out[:fade_in] *= _fade_curve(fade_in)
    if fade_out:
        out[len(out) - fade_out :] *= _fade_curve(fade_out)[::-1]
    return out


def _fade_curve(length: int) -> np.ndarray:
    """Raised cosine from 0 to 1, sampled at mid-points so that it plus its mirror is exactly 1."""
    phase = (np.arange(length) + 0.5) / length
    return (0.5 - 0.5 * np.cos(np.pi * phase)).astype(np.float32)


def _one_channel(audio: np.ndarray, name: str) -> np.ndarray:
    if np.ndim(audio) != 1:
        raise ValueError(f"{name}: expected 1-D audio, got shape {np.shape(audio)}")
    return np.asarray(audio, dtype=np.float32)


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """``audio`` at ``to_rate`` (polyphase, anti-aliased); the input itself when the rates match."""
    if from_rate == to_rate:
        return audio
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    divisor = math.gcd(from_rate, to_rate)
    out = resample_poly(np.asarray(audio, dtype=np.float32), to_rate // divisor, from_rate // divisor)
    return out.astype(np.float32, copy=False)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChunkMetadata(_Strict):
    index: int = Field(ge=0)
    text: str
    n_tokens: int = Field(ge=0)
    seed: int
    voice: str | None = Field(
        default=None,
        description="what the chunk was conditioned on: a preset name, an .npz path, "
        "'chunk N' (chained history), or null (no voice)",
    )
    break_after: BreakKind
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    samples: int = Field(ge=0)
    take: int = Field(default=0, ge=0, description="which take of the chunk this is: 0 unless it was made again")
    check: ChunkCheck | None = Field(default=None, description="what was measured of the take, and whether it is plausible")
    retakes: list[Retake] = Field(default_factory=list, description="the takes rejected before this one, and why")


class ItemMetadata(_Strict):
    """The JSON written next to each item's audio."""

    id: str
    title: str | None = None
    status: Literal["ok", "failed"]
    duration_s: float = Field(ge=0)
    sample_rate: int = Field(gt=0)
    loudness: LoudnessReport | None = Field(default=None, description="what output.loudness did; null when it is off")
    voice: str | None = None
    voice_mode: VoiceMode
    language: str
    seed: int
    model: str
    chunks: list[ChunkMetadata] = Field(default_factory=list)
    timings: dict[str, float] = Field(
        default_factory=dict, description="seconds per stage, summed over chunks"
    )
    wall_s: float = Field(ge=0)
    error: str | None = None
    audio_bytes: int | None = Field(default=None, description="size of the audio object, checked on resume")
    audio_checksum: str | None = Field(default=None, description="sha256 of the audio object")
    extra: dict[str, Any] = Field(default_factory=dict, description="the input's other fields, carried along")
    files: dict[str, str] = Field(
        default_factory=dict, description="kind -> URI of what was written: audio, srt, vtt, tokens ..."
    )
    fingerprint: str | None = Field(default=None, description="digest of what shaped the audio (pipeline.fingerprint)")
    fingerprint_parts: dict[str, str] = Field(
        default_factory=dict, description="the fingerprint's parts (text, voice, seed, ...), to say what changed on a redo"
    )
    subtitles_too_fast: int | None = Field(
        default=None,
        description="cues over output.subtitles.max_cps (their chunk's audio is short for its text); null: no subtitles",
    )


def write_json_atomic(path: Path, data: BaseModel | dict[str, Any] | list[Any]) -> None:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False)
    atomic_write_bytes(Path(path), (text + "\n").encode("utf-8"))
