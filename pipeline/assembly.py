"""Assembly: one item's chunk audios stitched in order, encoded, described.

Upstream Bark's long-form recipe joins sentences with a short silence; the
metadata records where every chunk landed in the file (and its text and seed),
which is what subtitles and debugging a bad chunk need.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field

from pipeline.storage import atomic_write_bytes

AudioFormat = Literal["wav", "flac"]
_SOUNDFILE_FORMATS = {"wav": "WAV", "flac": "FLAC"}
_SUBTYPE = "PCM_16"


def chunk_bounds(lengths: list[int], sample_rate: int, silence_s: float) -> list[tuple[int, int]]:
    """(start, end) sample offsets of each chunk once joined with ``silence_s`` between."""
    gap = int(round(silence_s * sample_rate))
    bounds, start = [], 0
    for length in lengths:
        bounds.append((start, start + length))
        start += length + gap
    return bounds


def join_chunks(audios: list[np.ndarray], sample_rate: int, silence_s: float) -> np.ndarray:
    """Chunks in order with silence between them (not before or after), as float32."""
    for i, audio in enumerate(audios):
        if np.ndim(audio) != 1:
            raise ValueError(f"chunk {i}: expected 1-D audio, got shape {np.shape(audio)}")
    if not audios:
        return np.zeros(0, dtype=np.float32)
    bounds = chunk_bounds([len(a) for a in audios], sample_rate, silence_s)
    joined = np.zeros(bounds[-1][1], dtype=np.float32)
    for audio, (start, end) in zip(audios, bounds):
        joined[start:end] = audio
    return joined


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: AudioFormat) -> bytes:
    """16-bit WAV or FLAC bytes.

    Samples are clipped to [-1, 1] first: the integer conversion would otherwise
    wrap a loud peak around into a click.
    """
    if fmt not in _SOUNDFILE_FORMATS:
        raise ValueError(f"audio format must be one of {sorted(_SOUNDFILE_FORMATS)}, got {fmt!r}")
    samples = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32)), -1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format=_SOUNDFILE_FORMATS[fmt], subtype=_SUBTYPE)
    return buffer.getvalue()


def write_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: AudioFormat) -> None:
    atomic_write_bytes(Path(path), encode_audio(audio, sample_rate, fmt))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChunkMetadata(_Strict):
    index: int = Field(ge=0)
    text: str
    n_tokens: int = Field(ge=0)
    seed: int
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    samples: int = Field(ge=0)


class ItemMetadata(_Strict):
    """The JSON written next to each item's audio."""

    id: str
    status: Literal["ok", "failed"]
    duration_s: float = Field(ge=0)
    sample_rate: int = Field(gt=0)
    voice: str | None = None
    seed: int
    model: str
    chunks: list[ChunkMetadata] = Field(default_factory=list)
    timings: dict[str, float] = Field(
        default_factory=dict, description="seconds per stage, summed over chunks"
    )
    wall_s: float = Field(ge=0)
    error: str | None = None


def write_json_atomic(path: Path, data: BaseModel | dict[str, Any] | list[Any]) -> None:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    else:
        text = json.dumps(data, indent=2, ensure_ascii=False)
    atomic_write_bytes(Path(path), (text + "\n").encode("utf-8"))
