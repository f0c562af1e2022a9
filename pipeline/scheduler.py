"""Deploys the four stage actors and streams chunks through them.

The driver never waits between stages: for a chunk it calls semantic, passes
the returned ObjectRef straight into the coarse call, that into fine, and that
into the codec, all at once. Ray starts each call when its input exists; each
actor gathers the chunks that reach it into its own batches. Only the final
audio comes back to the driver.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import ray

from pipeline.config import JobConfig
from workers.config import STAGE_NAMES, SamplingSet
from pipeline.placement import StagePlacement
from workers.records import BatchRecord, CodecRequest, CoarseRequest, FineRequest, SemanticRequest, VoicePrompt
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


class StagePipeline:
    """The replicas of every stage, and the way chunks are fed through them."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self.placement = StagePlacement(config, ray.cluster_resources().get("GPU", 0))
        self.replicas: dict[str, list] = {}
        for stage in STAGE_NAMES:
            worker = WORKER_CLASSES[stage]
            self.replicas[stage] = [
                worker.options(**self.placement.options(stage, index)).remote(config.model, config.stages.of(stage), index)
                for index in range(config.stages.of(stage).replicas)
            ]
        self._next_replica = {stage: itertools.cycle(actors) for stage, actors in self.replicas.items()}

    def placements(self) -> list[dict]:
        """Waits for every actor to load its model; fails here, before any work, if one cannot."""
        return ray.get(self.placement_refs())

    def placement_refs(self) -> list[ray.ObjectRef]:
        """Every actor's placement, ready once its model is loaded: a caller can wait on these with
        ``ray.wait`` and a timeout, and give up (a stop) while the cluster lacks room for an actor."""
        return [actor.placement.remote() for actors in self.replicas.values() for actor in actors]

    def submit(self, chunks: Sequence[ChunkWork]) -> list[ChunkRefs]:
        """Queues each chunk through all four stages at once; Ray starts each call when its inputs exist."""
        return [self._submit_one(chunk) for chunk in chunks]

    def _submit_one(self, c: ChunkWork) -> ChunkRefs:
        """One call per stage. The upstream output and the history go in as top-level
        arguments, so Ray hands them to the actor resolved, straight from the object
        store; the actor batches the chunk with whatever else is waiting there."""
        refs: list[ray.ObjectRef] = []
        for stage, request_type in TOKEN_STAGES:
            request = request_type(
                key=c.key,
                voice=c.voice,
                seed=stage_seed(c.seed, stage),
                sampling=getattr(c.sampling, stage),
                **({"text_ids": c.text_ids} if stage == "semantic" else {}),
            )
            history = getattr(c.history, stage) if c.history else None
            upstream = refs[-1] if refs else None
            refs.append(next(self._next_replica[stage]).process.remote(request, upstream, history))
        refs.append(next(self._next_replica["codec"]).process.remote(CodecRequest(key=c.key), refs[-1], None))
        return ChunkRefs(*refs)

    def finished(self, refs: ChunkRefs) -> None:
        """A chunk is back from every stage (or failed in one)."""

    def stats(self, since: float = 0.0) -> list[BatchRecord]:
        """Every replica's forward-pass spans that ended after ``since`` (unix seconds)."""
        spans = ray.get([actor.stats.remote(since) for actors in self.replicas.values() for actor in actors])
        return sorted((span for replica in spans for span in replica), key=lambda span: span.started)

    def shutdown(self) -> None:
        for actors in self.replicas.values():
            for actor in actors:
                ray.kill(actor)
        self.placement.remove()
