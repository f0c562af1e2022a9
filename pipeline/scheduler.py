"""Deploys the four stage actors and streams chunks through them.

The driver never waits between stages: for a group of chunks (those it sends in
one turn of its loop, at most :func:`group_limit`) it calls semantic once, passes
the returned ObjectRefs straight into one coarse call, those into fine, and
those into the codec, all at once. Each call returns one ref per chunk
(``num_returns``), so a chunk's tokens, its history for the next chunk, its
audio and its cancellation stay its own. Ray starts each call when its inputs
exist; each actor queues a group's chunks one by one into its own batches, so a
group is a transport unit, never a batching unit. Only the final audio comes
back to the driver.

Each group goes, at each stage, to the replica with the least outstanding work:
the fewest chunks submitted to it that the driver has not yet seen finish
(:meth:`StagePipeline.finished`, called when a chunk's receipt arrives, ends all
four of its stages at once). A replica that falls behind keeps its chunks longer
and so gets fewer new ones. A voice prompt is put in the object store once while
chunks that read it are outstanding (:class:`VoiceShelf`) and reaches each actor
as a top-level ref, once per call, not pickled into every request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ray

from pipeline.config import JobConfig, SchedulerConfig
from workers.config import STAGE_NAMES, SamplingSet
from pipeline.placement import StagePlacement
from workers.records import BatchRecord, CodecRequest, CoarseRequest, FineRequest, GroupEntry, SemanticRequest, VoicePrompt
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


def group_limit(scheduler: SchedulerConfig, widest: int) -> int:
    """The most chunks in one group: ``max_group``, and no more than a quarter of the chunks in
    flight per replica of the widest stage (``widest`` replicas), so that every replica of every
    stage has groups to work on while the others are busy."""
    return max(1, min(scheduler.max_group, scheduler.max_chunks_in_flight // (len(STAGE_NAMES) * widest)))


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
        ``process_group``, ``placement``, ``stats``, ``received`` and ``calls`` as the real actors do."""
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

    @property
    def group_limit(self) -> int:
        """The most chunks :meth:`submit` takes at once (see :func:`group_limit`)."""
        return group_limit(self.config.scheduler, max(len(actors) for actors in self.replicas.values()))

    def submit(self, chunks: Sequence[ChunkWork]) -> list[ChunkRefs]:
        """Queues a group of chunks through all four stages at once, one call per stage, each to the
        stage's least loaded replica; Ray starts each call when its inputs exist. The upstream outputs,
        the histories and the voices go in as top-level arguments (each distinct ref once), so Ray
        hands them to the actor resolved, straight from the object store; the entries say which
        argument is whose. A chunk with a history reads its voice from that history."""
        if not chunks:
            return []
        n = len(chunks)
        voices = [self.voices.take(c.voice) if c.voice is not None and c.history is None else None for c in chunks]
        outputs: dict[str, list[ray.ObjectRef]] = {}
        chosen: list[int] = []
        upstream: list[ray.ObjectRef] | None = None
        for stage, requests in zip(STAGE_NAMES, zip(*(stage_requests(c) for c in chunks))):
            replica = least_loaded(self.outstanding[stage])
            self.outstanding[stage][replica] += n
            chosen.append(replica)
            arguments: dict[ray.ObjectRef, int] = {}  # each distinct ref once, by its place among the arguments
            entries = [
                GroupEntry(
                    request=request,
                    upstream=_place(arguments, upstream[i]) if upstream else None,
                    history=_place(arguments, getattr(c.history, stage)) if c.history and stage != "codec" else None,
                    voice=_place(arguments, voices[i]) if voices[i] is not None and stage != "codec" else None,
                )
                for i, (c, (_, request)) in enumerate(zip(chunks, requests))
            ]
            call = self.replicas[stage][replica].process_group.options(num_returns=n)
            refs = call.remote(entries, *arguments)
            upstream = outputs[stage] = [refs] if n == 1 else list(refs)
        submitted = [
            ChunkRefs(*(outputs[stage][i] for stage in STAGE_NAMES), replicas=tuple(chosen), voice=voices[i])
            for i in range(n)
        ]
        self._open.update(c.audio.binary() for c in submitted)
        return submitted

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


def _place(arguments: dict[ray.ObjectRef, int], ref: ray.ObjectRef) -> int:
    """The index of ``ref`` among a call's arguments, adding it at the end the first time."""
    return arguments.setdefault(ref, len(arguments))


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
