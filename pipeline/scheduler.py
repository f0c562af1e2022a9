"""Deploys the four stage actors and streams chunks through them.

The driver never waits between stages: for a chunk it calls semantic, passes
the returned ObjectRef straight into the coarse call, that into fine, and that
into the codec, all at once. Ray starts each call when its input exists; each
actor gathers the chunks that reach it into its own batches. Only the final
audio comes back to the driver.

Each stage's replica is the one with the least outstanding work: the fewest chunks
submitted to it that the driver has not yet seen finish (:meth:`StagePipeline.finished`,
called when a chunk's audio arrives, ends all four of its stages at once). A
replica that falls behind keeps its chunks longer and so gets fewer new ones. A
voice prompt is put in the object store once while chunks that read it are
outstanding (:class:`VoiceShelf`) and reaches each actor as a top-level ref, not
pickled into every stage request of every chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
    replicas: tuple[int, int, int, int]  # the replica index of each stage (semantic, coarse, fine, codec) it went to
    voice: ray.ObjectRef | None = None  # the shared voice prompt its stages read (None: no voice, or a history)

    @property
    def codec_replica(self) -> int:
        """Where the chunk's audio is made: an item writer placed near it reads the audio locally."""
        return self.replicas[-1]


def least_loaded(outstanding: Sequence[int]) -> int:
    """The replica with the fewest outstanding chunks; a tie goes to the lowest index, so an
    idle stage deals chunks out in turn, as round robin did."""
    return min(range(len(outstanding)), key=outstanding.__getitem__)


@dataclass(eq=False)
class _ShelvedVoice:
    voice: VoicePrompt  # held, so that its id() is not reused while the entry lives
    ref: ray.ObjectRef
    users: int = 0


class VoiceShelf:
    """Voice prompts in the object store, one ``ray.put`` per voice object while any chunk
    that reads it is outstanding; the last chunk's release drops the ref, so memory stays
    bounded by the voices in flight. Voices are told apart by identity: the job's voice
    is one object for every item (put once per job while it stays in use), an item's own
    voice is one object per item."""

    def __init__(self) -> None:
        self._by_voice: dict[int, _ShelvedVoice] = {}
        self._by_ref: dict[ray.ObjectRef, _ShelvedVoice] = {}
        self.puts = 0  # how many voices were put in the object store, for tests and logs

    def take(self, voice: VoicePrompt) -> ray.ObjectRef:
        shelved = self._by_voice.get(id(voice))
        if shelved is None:
            shelved = _ShelvedVoice(voice, ray.put(voice))
            self._by_voice[id(voice)] = self._by_ref[shelved.ref] = shelved
            self.puts += 1
        shelved.users += 1
        return shelved.ref

    def release(self, ref: ray.ObjectRef) -> None:
        shelved = self._by_ref[ref]
        shelved.users -= 1
        if shelved.users == 0:
            del self._by_voice[id(shelved.voice)], self._by_ref[ref]

    def __len__(self) -> int:
        return len(self._by_ref)


class StagePipeline:
    """The replicas of every stage, and the way chunks are fed through them."""

    def __init__(self, config: JobConfig, worker_classes: Mapping[str, type] | None = None) -> None:
        """``worker_classes``: the Ray actor class of each stage, ``workers.actors.WORKER_CLASSES``
        unless given. A benchmark and extension hook (``bench/driver.py`` swaps in instant
        stand-ins); a replacement takes ``(model, stage_config, replica)`` and serves
        ``process``, ``placement``, ``stats`` and ``received`` as the real actors do."""
        self.config = config
        self.placement = StagePlacement(config, ray.cluster_resources().get("GPU", 0))
        self.replicas: dict[str, list] = {}
        classes = WORKER_CLASSES if worker_classes is None else worker_classes
        for stage in STAGE_NAMES:
            worker = classes[stage]
            self.replicas[stage] = [
                worker.options(**self.placement.options(stage, index)).remote(config.model, config.stages.of(stage), index)
                for index in range(config.stages.of(stage).replicas)
            ]
        # Chunks submitted to each replica and not yet finished, by stage: a count, not weighted by
        # length, since a stage's chunks are of one size class (the text front end packs them to a window).
        self.outstanding: dict[str, list[int]] = {stage: [0] * len(actors) for stage, actors in self.replicas.items()}
        self._open: set[bytes] = set()  # the audio ref ids of the chunks outstanding (ids: they pin nothing)
        self.voices = VoiceShelf()

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

    def finished(self, refs: ChunkRefs) -> None:
        """The driver has the chunk's audio (or its error): every stage of it is done, so its
        replicas have that much less outstanding work and its voice one reader fewer. Costs the
        driver nothing it did not already do; a chunk told twice counts once."""
        chunk_id = refs.audio.binary()
        if chunk_id not in self._open:
            return
        self._open.remove(chunk_id)
        for stage, replica in zip(STAGE_NAMES, refs.replicas):
            self.outstanding[stage][replica] -= 1
        if refs.voice is not None:
            self.voices.release(refs.voice)

    def _submit_one(self, c: ChunkWork) -> ChunkRefs:
        """One call per stage, each to the stage's least loaded replica. The upstream output,
        the history and the voice go in as top-level arguments, so Ray hands them to the actor
        resolved, straight from the object store; the actor batches the chunk with whatever
        else is waiting there. A chunk with a history reads its voice from that history."""
        voice = self.voices.take(c.voice) if c.voice is not None and c.history is None else None
        refs: list[ray.ObjectRef] = []
        chosen: list[int] = []
        for stage, request in stage_requests(c):
            replica = least_loaded(self.outstanding[stage])
            self.outstanding[stage][replica] += 1
            chosen.append(replica)
            history = getattr(c.history, stage) if c.history and stage != "codec" else None
            upstream = refs[-1] if refs else None
            actor = self.replicas[stage][replica]
            refs.append(actor.process.remote(request, upstream, history, voice if stage != "codec" else None))
        chunk = ChunkRefs(*refs, replicas=tuple(chosen), voice=voice)
        self._open.add(chunk.audio.binary())
        return chunk

    def stats(self, since: float = 0.0) -> list[BatchRecord]:
        """Every replica's forward-pass spans that ended after ``since`` (unix seconds)."""
        spans = ray.get([actor.stats.remote(since) for actors in self.replicas.values() for actor in actors])
        return sorted((span for replica in spans for span in replica), key=lambda span: span.started)

    def shutdown(self) -> None:
        self._open.clear()
        self.voices = VoiceShelf()
        for actors in self.replicas.values():
            for actor in actors:
                ray.kill(actor)
        self.placement.remove()


def stage_requests(c: ChunkWork) -> list[tuple[str, object]]:
    """The request of each stage for one chunk, in stage order. None carries the voice: it
    travels once, as its own object (see :class:`VoiceShelf`)."""
    requests: list[tuple[str, object]] = [
        (
            stage,
            request_type(
                key=c.key,
                seed=stage_seed(c.seed, stage),
                sampling=getattr(c.sampling, stage),
                **({"text_ids": c.text_ids} if stage == "semantic" else {}),
            ),
        )
        for stage, request_type in TOKEN_STAGES
    ]
    return requests + [("codec", CodecRequest(key=c.key))]
