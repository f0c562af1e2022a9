"""Deploys the four stage actors and streams chunk batches through them.

The driver never waits between stages: for a batch it calls semantic, passes
the returned ObjectRefs straight into the coarse call, those into fine, and
those into the codec, all at once. Ray starts each call when its inputs exist,
so while the codec decodes one batch the coarse stage already works on the
next. Only the final audio comes back to the driver.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from pipeline.config import STAGE_NAMES, ConfigError, JobConfig, StageName
from pipeline.records import CodecRequest, CoarseRequest, FineRequest, SemanticRequest, VoicePrompt
from pipeline.seeds import stage_seed
from workers.actors import WORKER_CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkWork:
    """One chunk as the scheduler sees it."""

    key: str
    text_ids: list[int]
    voice: VoicePrompt | None
    seed: int


def resolve_gpu_share(config: JobConfig, stage: StageName, cluster_gpus: float) -> float:
    """GPU share per replica; 'auto' takes one GPU where the cluster has any."""
    requested = config.stages.of(stage).num_gpus
    if requested == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    if requested > 0 and cluster_gpus <= 0:
        raise ConfigError(f"stages.{stage}.num_gpus: asks for {requested} GPU but the Ray cluster has none")
    return float(requested)


class StagePipeline:
    """The replicas of every stage and the way one batch is fed through them."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        self.replicas: dict[str, list] = {}
        for stage in STAGE_NAMES:
            stage_config = config.stages.of(stage)
            options = {
                "num_gpus": resolve_gpu_share(config, stage, cluster_gpus),
                "num_cpus": stage_config.num_cpus,
                "max_restarts": stage_config.max_restarts,
                "max_task_retries": stage_config.max_task_retries,
            }
            worker = WORKER_CLASSES[stage].options(**options)
            self.replicas[stage] = [worker.remote(config.model, stage_config) for _ in range(stage_config.replicas)]
        self._next_replica = {stage: itertools.cycle(actors) for stage, actors in self.replicas.items()}

    def placements(self) -> list[dict]:
        """Waits for every actor to load its model; fails here, before any work, if one cannot."""
        return ray.get([actor.placement.remote() for actors in self.replicas.values() for actor in actors])

    def submit(self, chunks: Sequence[ChunkWork]) -> list[ray.ObjectRef]:
        """Queues chunks through all four stages; returns one AudioOutput ref per chunk, in order."""
        sampling = self.config.sampling
        semantic = self._call(
            "semantic",
            [
                SemanticRequest(
                    key=c.key,
                    text_ids=c.text_ids,
                    voice=c.voice,
                    seed=stage_seed(c.seed, "semantic"),
                    sampling=sampling.semantic,
                )
                for c in chunks
            ],
            [],
        )
        coarse = self._call(
            "coarse",
            [
                CoarseRequest(key=c.key, voice=c.voice, seed=stage_seed(c.seed, "coarse"), sampling=sampling.coarse)
                for c in chunks
            ],
            semantic,
        )
        fine = self._call(
            "fine",
            [FineRequest(key=c.key, voice=c.voice, seed=stage_seed(c.seed, "fine"), sampling=sampling.fine) for c in chunks],
            coarse,
        )
        return self._call("codec", [CodecRequest(key=c.key) for c in chunks], fine)

    def _call(self, stage: str, requests: list, inputs: list[ray.ObjectRef]) -> list[ray.ObjectRef]:
        """Splits the requests into this stage's batches, each to the next replica."""
        batch_size = self.config.stages.of(stage).batch_size
        refs: list[ray.ObjectRef] = []
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            actor = next(self._next_replica[stage])
            out = actor.run.options(num_returns=len(batch)).remote(batch, *inputs[start : start + batch_size])
            refs.extend([out] if len(batch) == 1 else out)
        return refs

    def shutdown(self) -> None:
        for actors in self.replicas.values():
            for actor in actors:
                ray.kill(actor)
