"""Whether a chunk's audio is plausible for its text, and what a retake of it is.

Bark fails audibly now and then: a chunk drops most of its words, runs on past
them until its semantic stage reaches its length cap, or comes back as
near-silence. The writer judges each chunk's audio as it arrives (``judge``);
an implausible chunk is generated again, up to ``quality.retakes`` times, with
the next seed derived from its own (:func:`pipeline.seeds.take_seed`), so a
retake is as reproducible as the first take and no other chunk's seed moves.
The rejected takes, and why, go in the item's metadata.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import QualityConfig

SILENT_DBFS = -200.0  # the level reported for all-zero audio (its RMS is 0, whose log is -inf)


class ChunkCheck(BaseModel):
    """What was measured of one take of a chunk, and the verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    audio_s: float = Field(ge=0, description="seconds of audio the stages made")
    expected_s: float = Field(ge=0, description="estimated speech seconds of the chunk's text (pipeline.speech_time)")
    rms_dbfs: float = Field(description="RMS level of the chunk's audio, dB below full scale")
    ended_at_limit: bool = Field(description="the semantic stage stopped at its length cap, not at an end")
    implausible: str | None = Field(default=None, description="why the take is implausible; null: it is plausible")


class Retake(BaseModel):
    """A rejected take of a chunk: which, its seed, and why it was rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    take: int = Field(ge=0, description="0 is the first take")
    seed: int
    reason: str


def rms_dbfs(audio: np.ndarray) -> float:
    """The RMS level of ``audio`` (floats in [-1, 1]) in dBFS."""
    if audio.size == 0:
        return SILENT_DBFS
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    return max(SILENT_DBFS, 20 * math.log10(rms)) if rms > 0 else SILENT_DBFS


def judge(audio: np.ndarray, sample_rate: int, expected_s: float, ended_at_limit: bool, quality: QualityConfig) -> ChunkCheck:
    """Measures one take of a chunk and says whether it is plausible for a text of ``expected_s`` seconds."""
    audio_s = len(audio) / sample_rate
    level = rms_dbfs(audio)
    low, high = quality.duration_band
    reasons = []
    if ended_at_limit:
        reasons.append("ran to the semantic length cap without ending")
    if audio_s < low * expected_s:
        reasons.append(f"{audio_s:.2f} s of audio for {expected_s:.1f} s of text (under {low:g}x)")
    elif audio_s > high * expected_s + quality.slack_s:
        reasons.append(f"{audio_s:.2f} s of audio for {expected_s:.1f} s of text (over {high:g}x + {quality.slack_s:g} s)")
    if level < quality.silence_dbfs:
        reasons.append(f"near-silence ({level:.1f} dBFS, under {quality.silence_dbfs:g})")
    return ChunkCheck(
        audio_s=audio_s,
        expected_s=expected_s,
        rms_dbfs=level,
        ended_at_limit=ended_at_limit,
        implausible="; ".join(reasons) or None,
    )


class TakeOrder(BaseModel):
    """Which take of a chunk the writer is handed, and what it judges the take against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    take: int = Field(default=0, ge=0)
    seed: int
    expected_s: float = Field(ge=0)
    rejected: tuple[Retake, ...] = ()  # the chunk's earlier takes, in order

    def kept(self, check: ChunkCheck) -> KeptTake:
        return KeptTake(take=self.take, seed=self.seed, check=check, retakes=self.rejected)


class KeptTake(BaseModel):
    """The take of a chunk that its item keeps, as its metadata tells it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    take: int = Field(ge=0)
    seed: int
    check: ChunkCheck
    retakes: tuple[Retake, ...] = ()
