"""The four Ray actors, one per Bark stage, each hosting only its own sub-model.

A call takes a batch of requests plus the previous stage's outputs as separate
arguments: when the driver passes ObjectRefs there, Ray resolves them in this
process, so tokens travel actor to actor and never through the driver. Each
call returns one object per chunk (the driver asks for ``num_returns=len(batch)``),
so every chunk has its own ObjectRef downstream.
"""

from __future__ import annotations

import os
import time
import numpy as np
import ray
import torch

from pipeline.config import ModelConfig, StageConfig, StageName
from pipeline.records import (
    AudioOutput,
    CodecRequest,
    CoarseRequest,
    FineRequest,
    SemanticRequest,
    StageOutput,
    VoicePrompt,
)
from workers.checkpoints import load_settings_for, load_stage_model
from workers.coarse import generate_coarse
from workers.codec import decode_audio
from workers.fine import generate_fine
from workers.semantic import generate_semantic

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def stage_device() -> torch.device:
    """The GPU Ray gave this actor (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


def _one_per_chunk(outputs: list):
    """Ray stores a ``num_returns=1`` result as is, and a longer one item by item."""
    return outputs[0] if len(outputs) == 1 else outputs


class StageWorker:
    """Loads one stage's sub-model onto this actor's device."""

    stage: StageName
    upstream: StageName | None  # whose output each call consumes

    def __init__(self, model: ModelConfig, config: StageConfig) -> None:
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.device = stage_device()
        dtype = TORCH_DTYPES[config.dtype] if self.device.type == "cuda" else torch.float32
        self.settings = load_settings_for(model)
        self.model = load_stage_model(model, self.stage, self.device, dtype, config.attn_implementation)
        self.dtype = dtype

    def placement(self) -> dict:
        """Where Ray put this actor: used by tests and logged at start-up."""
        context = ray.get_runtime_context()
        return {
            "stage": self.stage,
            "node_id": context.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "pid": os.getpid(),
        }

    def run(self, requests: list, *args):
        """One batch. ``args``: the upstream stage's output for each request (every stage
        but semantic), then each request's history: an earlier chunk's output of this
        same stage to continue from (chained voices), or None to use ``request.voice``.
        """
        n = len(requests)
        upstream = list(args[:n]) if self.upstream else [None] * n
        histories = args[n:] if self.upstream else args
        requests = [
            r if h is None else r.model_copy(update={"voice": self._voice_from(h)}) for r, h in zip(requests, histories)
        ]
        start = time.perf_counter()
        results = self._compute(requests, [u.tokens for u in upstream] if self.upstream else [])
        share = (time.perf_counter() - start) / n
        return _one_per_chunk([self._output(r.key, x, u, share) for r, x, u in zip(requests, results, upstream)])

    def _compute(self, requests: list, inputs: list) -> list:
        raise NotImplementedError

    def _output(self, key: str, result, upstream: StageOutput | None, seconds: float) -> StageOutput:
        """This stage's tokens, with the chunk's earlier tokens carried along for chained voices."""
        carried: dict = {}
        timings = {self.stage: seconds}
        if upstream is not None:
            carried = {"semantic": upstream.semantic, "coarse": upstream.coarse, self.upstream: upstream.tokens}
            timings = {**upstream.timings, **timings}
        return StageOutput(key=key, tokens=result, timings=timings, **carried)

    def _voice_from(self, history: StageOutput) -> VoicePrompt:
        """A voice prompt made of an earlier chunk's tokens, as far as this stage reads them."""
        tokens = {"semantic": history.semantic, "coarse": history.coarse, self.stage: history.tokens}
        return VoicePrompt(
            name=history.key,
            semantic_prompt=_or_empty(tokens.get("semantic"), (0,)),
            coarse_prompt=_or_empty(tokens.get("coarse"), (self.settings.coarse.n_coarse_codebooks, 0)),
            fine_prompt=_or_empty(tokens.get("fine"), (self.settings.fine.n_fine_codebooks, 0)),
        )


def _or_empty(tokens: np.ndarray | None, empty_shape: tuple) -> np.ndarray:
    return np.zeros(empty_shape, dtype=np.int64) if tokens is None else tokens


@ray.remote
class SemanticWorker(StageWorker):
    stage = "semantic"
    upstream = None

    def _compute(self, requests: list[SemanticRequest], _inputs: list) -> list:
        return generate_semantic(self.model, self.settings, requests)


@ray.remote
class CoarseWorker(StageWorker):
    stage = "coarse"
    upstream = "semantic"

    def _compute(self, requests: list[CoarseRequest], semantic: list) -> list:
        return generate_coarse(self.model, self.settings, requests, semantic)


@ray.remote
class FineWorker(StageWorker):
    stage = "fine"
    upstream = "coarse"

    def _compute(self, requests: list[FineRequest], coarse: list) -> list:
        return generate_fine(self.model, self.settings, requests, coarse)


@ray.remote
class CodecWorker(StageWorker):
    stage = "codec"
    upstream = "fine"

    def _compute(self, requests: list[CodecRequest], fine: list) -> list:
        return decode_audio(self.model, fine)

    def _output(self, key: str, result, upstream: StageOutput, seconds: float) -> AudioOutput:
        timings = {**upstream.timings, self.stage: seconds}
        return AudioOutput(key=key, audio=result, sample_rate=self.settings.sample_rate, timings=timings)


WORKER_CLASSES = {
    "semantic": SemanticWorker,
    "coarse": CoarseWorker,
    "fine": FineWorker,
    "codec": CodecWorker,
}
