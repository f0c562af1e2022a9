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

from pipeline.config import STAGE_NAMES, ConfigError, JobConfig, SamplingSet, StageName
from pipeline.records import CodecRequest, CoarseRequest, FineRequest, SemanticRequest, VoicePrompt
from pipeline.seeds import stage_seed
from workers.actors import WORKER_CLASSES

log = logging.getLogger(__name__)

# The stages that make tokens, in order, with the request each takes.
TOKEN_STAGES = (("semantic", SemanticRequest), ("coarse", CoarseRequest), ("fine", FineRequest))


@dataclass(frozen=True)
class ChunkWork:
    """One chunk as the scheduler sees it.

    ``history`` (chained voices): the refs of the earlier chunk whose tokens this
    chunk continues from; ``voice`` is then only the item's voice on record.
    """

    key: str
    text_ids: list[int]
    voice: VoicePrompt | None
    seed: int
    sampling: SamplingSet
    history: ChunkRefs | None = None


@dataclass(frozen=True)
class ChunkRefs:
    """A submitted chunk's output of every stage, as ObjectRefs (never fetched by the driver
    except ``audio``, and ``fine`` when tokens are saved)."""

    semantic: ray.ObjectRef
    coarse: ray.ObjectRef
    fine: ray.ObjectRef
    audio: ray.ObjectRef


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

    def submit(self, chunks: Sequence[ChunkWork]) -> list[ChunkRefs]:
        """Queues chunks through all four stages at once; Ray starts each call when its inputs exist."""
        outputs: list[list[ray.ObjectRef]] = []
        for stage, request_type in TOKEN_STAGES:
            requests = [
                request_type(
                    key=c.key,
                    voice=c.voice,
                    seed=stage_seed(c.seed, stage),
                    sampling=getattr(c.sampling, stage),
                    **({"text_ids": c.text_ids} if stage == "semantic" else {}),
                )
                for c in chunks
            ]
            histories = [getattr(c.history, stage) if c.history else None for c in chunks]
            outputs.append(self._call(stage, requests, outputs[-1] if outputs else [], histories))
        audio = self._call("codec", [CodecRequest(key=c.key) for c in chunks], outputs[-1], [None] * len(chunks))
        return [ChunkRefs(*refs) for refs in zip(*outputs, audio)]

    def _call(self, stage: str, requests: list, inputs: list, histories: list) -> list[ray.ObjectRef]:
        """Splits the requests into this stage's batches, each to the next replica.

        Upstream outputs and histories go in as top-level arguments, so Ray hands
        them to the actor resolved, straight from the object store.
        """
        batch_size = self.config.stages.of(stage).batch_size
        refs: list[ray.ObjectRef] = []
        for start in range(0, len(requests), batch_size):
            batch = slice(start, start + batch_size)
            size = len(requests[batch])
            actor = next(self._next_replica[stage])
            out = actor.run.options(num_returns=size).remote(requests[batch], *inputs[batch], *histories[batch])
            refs.extend([out] if size == 1 else out)
        return refs

    def shutdown(self) -> None:
        for actors in self.replicas.values():
            for actor in actors:
                ray.kill(actor)
