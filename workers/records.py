"""Records that cross a process boundary: driver -> stage actors -> driver.

Token arrays ride along as numpy arrays (Ray stores them zero-copy in the object
store); everything else is plain, validated data.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from workers.config import CoarseSampling, FineSampling, SemanticSampling


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class VoicePrompt(Record):
    """A Bark speaker prompt (history): the three token arrays of a voice preset."""

    name: str
    semantic_prompt: np.ndarray  # (T,) semantic ids in [0, semantic_vocab)
    coarse_prompt: np.ndarray  # (2, T') codebook ids in [0, codebook_size)
    fine_prompt: np.ndarray  # (8, T') codebook ids in [0, codebook_size)

    @field_validator("semantic_prompt", "coarse_prompt", "fine_prompt")
    @classmethod
    def _as_int64(cls, value: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(value).astype(np.int64, copy=False))


class SemanticRequest(Record):
    key: str
    text_ids: list[int] = Field(description="tokenizer ids of the chunk's text, no special tokens")
    voice: VoicePrompt | None = None
    seed: int
    sampling: SemanticSampling


class CoarseRequest(Record):
    key: str
    voice: VoicePrompt | None = None
    seed: int
    sampling: CoarseSampling


class FineRequest(Record):
    key: str
    voice: VoicePrompt | None = None
    seed: int
    sampling: FineSampling


class CodecRequest(Record):
    key: str


class StageOutput(Record):
    """One chunk's output of one stage, with its earlier stages' tokens and timings.

    Carrying the earlier tokens lets a later chunk use this output as its voice
    history (semantic + coarse + fine prompt), as upstream Bark's long-form does.
    """

    key: str
    tokens: np.ndarray
    semantic: np.ndarray | None = None
    coarse: np.ndarray | None = None
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per stage")
    ended_at_limit: bool = Field(
        default=False, description="the semantic stage stopped at its length cap, not at an end (EOS), for this chunk"
    )


class AudioOutput(Record):
    key: str
    audio: np.ndarray  # (samples,) float32
    sample_rate: int
    timings: dict[str, float] = Field(default_factory=dict)
    ended_at_limit: bool = False  # carried from the semantic stage (see StageOutput)


class ChunkFailure(Record):
    """A chunk that failed in a stage, in its output's place: a group call returns one output per
    chunk, so a chunk that fails is a record, not an exception that would fail its group mates.
    Later stages pass it on untouched and the writer turns it into the chunk's error receipt."""

    key: str
    error: str = Field(description="one line, starting with the stage it failed in")


class GroupEntry(Record):
    """One chunk of a group call to a stage: its request, and where among the call's top-level
    arguments (which Ray resolves before the call; a ref inside a list it would not) its inputs are.

    ``upstream``: the previous stage's output of this chunk; ``history``: an earlier chunk's output
    of this stage that it continues (chained voices); ``voice``: its voice prompt. A ref shared by
    several chunks (the job's voice) is one argument, indexed by each."""

    request: SemanticRequest | CoarseRequest | FineRequest | CodecRequest
    upstream: int | None = None
    history: int | None = None
    voice: int | None = None


class BatchRecord(Record):
    """One forward-pass span of a stage replica, for utilisation plots and tuning.

    A static stage records one per batch. A continuous stage records one per
    stretch of decode steps with unchanged membership: ``size`` chunks stepped
    ``steps`` times between ``started`` and ``ended`` (unix seconds).
    """

    stage: str
    replica: int
    started: float
    ended: float
    size: int
    steps: int = 1
    queued: int = Field(default=0, description="chunks waiting in this replica when the span began")
