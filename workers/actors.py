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

    def run(self, requests: list, *previous: StageOutput):
        """One batch: ``previous`` holds the upstream stage's output for each request, in order."""
        start = time.perf_counter()
        results = self._compute(requests, [p.tokens for p in previous])
        share = (time.perf_counter() - start) / len(requests)
        upstream = [p.timings for p in previous] or [{} for _ in requests]
        return _one_per_chunk(
            [self._output(r.key, x, {**t, self.stage: share}) for r, x, t in zip(requests, results, upstream)]
        )

    def _compute(self, requests: list, inputs: list) -> list:
        raise NotImplementedError

    def _output(self, key: str, result, timings: dict[str, float]) -> StageOutput:
        return StageOutput(key=key, tokens=result, timings=timings)


@ray.remote
class SemanticWorker(StageWorker):
    stage = "semantic"

    def _compute(self, requests: list[SemanticRequest], _inputs: list) -> list:
        return generate_semantic(self.model, self.settings, requests)


@ray.remote
class CoarseWorker(StageWorker):
    stage = "coarse"

    def _compute(self, requests: list[CoarseRequest], semantic: list) -> list:
        return generate_coarse(self.model, self.settings, requests, semantic)


@ray.remote
class FineWorker(StageWorker):
    stage = "fine"

    def _compute(self, requests: list[FineRequest], coarse: list) -> list:
        return generate_fine(self.model, self.settings, requests, coarse)


@ray.remote
class CodecWorker(StageWorker):
    stage = "codec"

    def _compute(self, requests: list[CodecRequest], fine: list) -> list:
        return decode_audio(self.model, fine)

    def _output(self, key: str, result, timings: dict[str, float]) -> AudioOutput:
        return AudioOutput(key=key, audio=result, sample_rate=self.settings.sample_rate, timings=timings)


WORKER_CLASSES = {
    "semantic": SemanticWorker,
    "coarse": CoarseWorker,
    "fine": FineWorker,
    "codec": CodecWorker,
}
