"""Instant stand-ins for the four stage actors, for measuring the driver alone (``bench/driver.py``).

Each is a Ray actor with the methods the pipeline calls on a stage replica
(``process_group``, ``placement``, ``stats``, ``received``, ``calls``), async
like the real ones, taking the same requests and returning the same records
(:mod:`workers.records`) with correctly shaped tokens and audio, but with no
model: a chunk costs its stage only the making of a few arrays. The chunk's
length follows its request as in Bark: the semantic stand-in makes exactly
``sampling.max_new_tokens`` semantic ids (a job sets it to fix the audio per
chunk), coarse and fine make the matching frames, the codec the matching audio.

Only numpy, pydantic and :mod:`workers.records` are imported here (no torch, no
transformers), so 128 of them start quickly and fit beside each other.
"""

from __future__ import annotations

import os
import time

import numpy as np
import ray

from workers.config import ModelConfig, StageConfig
from workers.records import AudioOutput, BatchRecord, ChunkFailure, CodecRequest, GroupEntry, SemanticRequest, StageOutput

# Bark's rates (the stand-ins load no generation config, so they are fixed here).
SEMANTIC_RATE_HZ = 49.9  # semantic tokens per second of audio
COARSE_RATE_HZ = 75.0  # EnCodec frames per second of audio
SAMPLE_RATE = 24_000
N_COARSE, N_FINE = 2, 8  # codebooks
DEFAULT_SEMANTIC_TOKENS = 50  # a request without max_new_tokens: about one second of audio


def semantic_tokens_for(audio_seconds: float) -> int:
    """The semantic tokens (``sampling.semantic.max_new_tokens``) that make ``audio_seconds`` of audio."""
    return max(1, round(audio_seconds * SEMANTIC_RATE_HZ))


def frames_for(semantic_tokens: int) -> int:
    return max(1, round(semantic_tokens * COARSE_RATE_HZ / SEMANTIC_RATE_HZ))


class _StandIn:
    """What every stand-in shares with :class:`workers.actors.StageWorker`, minus the model."""

    stage: str

    def __init__(self, model: ModelConfig, config: StageConfig, replica: int = 0) -> None:
        self.config = config
        self.replica = replica
        self.chunks_received = 0
        self.calls_received = 0
        self._spans: list[BatchRecord] = []
        self._audio: dict[int, np.ndarray] = {}  # samples -> one tone, made once and reused

    def placement(self) -> dict:
        context = ray.get_runtime_context()
        return {
            "stage": self.stage,
            "replica": self.replica,
            "node_id": context.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": "stand-in",
            "dtype": "none",
            "pid": os.getpid(),
        }

    async def process_group(self, entries: list[GroupEntry], *inputs):
        """A group's chunks at once: no queue, no batch (the driver, not the stages, is measured). A
        failed upstream is passed on, as the real stages do; the history and voice are not read."""
        self.calls_received += 1
        self.chunks_received += len(entries)
        started = time.time()
        outputs = []
        for entry in entries:
            upstream = inputs[entry.upstream] if entry.upstream is not None else None
            failed = isinstance(upstream, ChunkFailure)
            outputs.append(upstream if failed else self._make(entry.request, upstream))
        self._spans.append(BatchRecord(stage=self.stage, replica=self.replica, started=started, ended=time.time(), size=len(entries)))
        if len(self._spans) > 10_000:
            del self._spans[:5_000]
        return outputs[0] if len(outputs) == 1 else outputs

    def stats(self, since: float = 0.0) -> list[BatchRecord]:
        return [span for span in self._spans if span.ended > since]

    def received(self) -> int:
        return self.chunks_received

    def calls(self) -> int:
        return self.calls_received

    def _make(self, request, upstream: StageOutput | None) -> StageOutput | AudioOutput:
        raise NotImplementedError

    def _carry(self, key: str, tokens: np.ndarray, upstream: StageOutput, upstream_stage: str) -> StageOutput:
        """This stage's tokens with the chunk's earlier ones, as :meth:`StageWorker._output` carries them."""
        carried = {"semantic": upstream.semantic, "coarse": upstream.coarse, upstream_stage: upstream.tokens}
        return StageOutput(key=key, tokens=tokens, timings={**upstream.timings, self.stage: 0.0}, **carried)


@ray.remote
class SemanticStandIn(_StandIn):
    stage = "semantic"

    def _make(self, request: SemanticRequest, upstream: None) -> StageOutput:
        n = request.sampling.max_new_tokens or DEFAULT_SEMANTIC_TOKENS
        tokens = np.arange(n, dtype=np.int64) % 10_000  # (T_semantic,) ids below the semantic vocab
        return StageOutput(key=request.key, tokens=tokens, timings={self.stage: 0.0})


@ray.remote
class CoarseStandIn(_StandIn):
    stage = "coarse"

    def _make(self, request, upstream: StageOutput) -> StageOutput:
        frames = frames_for(upstream.tokens.shape[-1])
        tokens = np.zeros((N_COARSE, frames), dtype=np.int64)  # (2, T) codebook ids
        return self._carry(request.key, tokens, upstream, "semantic")


@ray.remote
class FineStandIn(_StandIn):
    stage = "fine"

    def _make(self, request, upstream: StageOutput) -> StageOutput:
        frames = upstream.tokens.shape[-1]
        tokens = np.zeros((N_FINE, frames), dtype=np.int64)  # (8, T) codebook ids, the coarse two included
        return self._carry(request.key, tokens, upstream, "coarse")


@ray.remote
class CodecStandIn(_StandIn):
    stage = "codec"

    def _make(self, request: CodecRequest, upstream: StageOutput) -> AudioOutput:
        samples = round(upstream.tokens.shape[-1] * SAMPLE_RATE / COARSE_RATE_HZ)
        if samples not in self._audio:
            # (samples,) float32: a quiet tone, not silence, so the writer's trimming keeps it whole.
            self._audio[samples] = (0.1 * np.sin(np.arange(samples) * (2 * np.pi * 220 / SAMPLE_RATE))).astype(np.float32)
        timings = {**upstream.timings, self.stage: 0.0}
        return AudioOutput(key=request.key, audio=self._audio[samples], sample_rate=SAMPLE_RATE, timings=timings)


STANDIN_CLASSES = {
    "semantic": SemanticStandIn,
    "coarse": CoarseStandIn,
    "fine": FineStandIn,
    "codec": CodecStandIn,
}
