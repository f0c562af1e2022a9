"""One narration job: items in, audio + metadata + subtitles + manifest out.

The driver splits each item's text into chunks and keeps at most
``scheduler.max_chunks_in_flight`` of them inside the pipeline. A chunk that
continues an earlier chunk's voice (chained voices, or a random voice fixed by
the first chunk) waits only until that chunk is *submitted*: it is handed that
chunk's ObjectRefs, and Ray runs it once they exist. An item is written as soon
as its last chunk's audio arrives. A failing chunk fails its item alone.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import ray
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from pipeline.assembly import ChunkMetadata, ItemMetadata, encode_audio, join_chunks, resample, trim_chunk
from pipeline.config import ConfigError, ItemParams, JobConfig, VoiceMode
from pipeline.console import redact
from pipeline.fingerprint import UNKNOWN_CHANGE, Fingerprinter, ItemFingerprint, changed_parts
from workers.config import SamplingSet
from pipeline.idset import DiskIdSet
from pipeline.metrics import JobMetrics
from pipeline.lease import take_lease
from pipeline.manifest import Manifest, ManifestEntry, ManifestParts, index_manifest, new_run_id
from pipeline.object_store import LocalStore, ObjectNotFound, StorageError, open_storage
from pipeline.progress import JobSummary, Progress
from workers.records import AudioOutput, VoicePrompt
from pipeline.scheduler import ChunkRefs, ChunkWork, StagePipeline
from pipeline.seeds import chunk_seed, item_seed
from pipeline.shards import Shard, select
from pipeline.sources import Item, ItemError
from pipeline.stop import StopRequested
from pipeline.storage import item_key, remove_temp_files
from pipeline.subtitles import cues_from_chunks, to_srt, to_vtt
from pipeline.text import TextChunk, detect_language, make_chunks
from pipeline.tokens import voice_npz_bytes
from pipeline.voices import VoiceError, load_item_voice, load_voice
from workers.checkpoints import load_settings_for, load_tokenizer, resolve_checkpoint_dir

log = logging.getLogger(__name__)

STOP_POLL_S = 0.5  # how often the driver looks for a stop request while chunks run or actors start
TOKEN_CACHE_TEXTS = 4096  # recent texts whose token ids are kept (an item's chunks and their candidates)


def history_sources(n_chunks: int, mode: VoiceMode, reset_every: int | None, has_voice: bool) -> list[int | None]:
    """For each chunk, the earlier chunk whose tokens it continues from (None: the item's voice).

    fixed: every chunk uses the item's voice; with no voice, chunk 0 picks a random
    voice and the rest reuse chunk 0's tokens. chained: each chunk continues the
    previous one; every ``reset_every`` chunks it goes back to the item's voice
    (chunk 0's tokens when the item has none).
    """
    item_voice = None if has_voice else 0
    sources: list[int | None] = [None]
    for index in range(1, n_chunks):
        if mode == "chained" and not (reset_every and index % reset_every == 0):
            sources.append(index - 1)
        else:
            sources.append(item_voice)
    return sources


@dataclass
class _ItemState:
    """An item whose chunks are in the pipeline."""

    item: Item
    seed: int
    voice_name: str | None
    voice_mode: VoiceMode
    language: str
    chunks: list[TextChunk]
    seeds: list[int]
    sources: list[int | None]
    works: list[ChunkWork]
    started: float
    refs: dict[int, ChunkRefs] = field(default_factory=dict)
    audio: dict[int, AudioOutput] = field(default_factory=dict)
    fine: dict[int, ray.ObjectRef] = field(default_factory=dict)
    received: int = 0
    error: str | None = None
    fingerprint: ItemFingerprint | None = None
    changed: str | None = None  # a redo: what changed since the recorded run ("voice, seed")

    def chunk_voice(self, index: int) -> str | None:
        source = self.sources[index]
        return self.voice_name if source is None else f"chunk {source}"


class NarrationJob:
    def __init__(
        self,
        config: JobConfig,
        output: str,
        *,
        quiet: bool = False,
        retry_failed: bool = False,
        force: bool = False,
        total_items: int | None = None,
        start_ray: Callable[[], None] | None = None,
        shard: Shard | None = None,
    ) -> None:
        """``start_ray`` starts or joins Ray; it is called only once an item needs narrating, so an
        input whose items are all done, failed or unreadable never starts Ray or loads a model.
        ``shard``: this driver narrates only that shard's items (:mod:`pipeline.shards`)."""
        self.config = config
        self.shard = shard
        self.settings = load_settings_for(config.model)
        window = self.settings.semantic.max_input_semantic_length
        if config.text.max_tokens > window:
            raise ConfigError(f"text.max_tokens: {config.text.max_tokens} is over the model's text window of {window} tokens")
        self.retry_failed = retry_failed
        self.force = force
        self.start_ray = start_ray
        self.progress = Progress(quiet=quiet, total_items=total_items)
        self.fingerprints = Fingerprinter(config, resolve_checkpoint_dir(config.model))
        self.tokenizer = load_tokenizer(config.model)
        self.default_voice = self._load_voice(config.voice) if config.voice else None
        self._encode = functools.lru_cache(maxsize=TOKEN_CACHE_TEXTS)(
            lambda text: tuple(self.tokenizer.encode(text, add_special_tokens=False))
        )
        # The ids this run has seen (a repeated id fails): on disk, like ``done``.
        self.seen_ids = DiskIdSet()
        self.metrics = JobMetrics()
        self.stop_requested = False
        self._polling = False  # the run loop is where it looks for stop_requested (see request_stop)
        self.narrating = False  # a chunk was submitted: a fault from now on comes after narration began
        self.pipeline: StagePipeline | None = None
        self.run_id = new_run_id()
        try:
            self._open_output(output)  # last: it takes the output's lease, which ``close`` gives back
        except BaseException:
            self.seen_ids.close()
            raise

    def _open_output(self, output: str) -> None:
        """The output, its lease (one job per output), and what earlier runs recorded there.

        The lease comes first: what earlier runs recorded is only final once no other
        job writes. Holding it, every atomic-write temp file left there is a killed
        run's, and is removed.
        """
        self.storage = open_storage(output, self.config.s3)
        if not isinstance(self.storage, LocalStore):
            self.storage.check_reachable()
        self.lease = take_lease(self.storage, self.run_id, self.config.lease, on_lost=self._lease_lost, shard=self.shard)
        try:
            # What earlier runs finished (resume skips it): on disk, so the driver's memory
            # does not grow with the input. A job runs once; ``run`` closes it at its end.
            if isinstance(self.storage, LocalStore):
                for path in remove_temp_files(self.storage.root, shared=self.shard is not None):
                    log.info("removed %s, left by a run that was killed", path)
                self.done = Manifest.index(self.storage.root, shard=self.shard)
                self.manifest = Manifest(self.storage.root, run_id=self.run_id, shard=self.shard)
            else:
                self.done = index_manifest(self.storage, shard=self.shard)
                self.manifest = ManifestParts(
                    self.storage, run_id=self.run_id, sole_writer=lambda: self.lease.held, shard=self.shard
                )
        except BaseException:
            self.lease.release()
            raise

    def close(self) -> None:
        """Removes the job's on-disk id bookkeeping and gives the output's lease back
        (``run`` does this at its end); idempotent."""
        try:
            self.seen_ids.close()
            self.done.close()
        finally:
            self.lease.release()

    def _lease_lost(self, reason: str) -> None:
        """Another job took this output over (we were presumed dead): stop writing to it."""
        log.error("%s", reason)
        self.request_stop()

    def request_stop(self) -> bool:
        """Stop admitting work and return soon; finished items stay recorded (SIGINT/SIGTERM).

        True when the run loop will notice at its next poll; False while the job is
        blocked (loading, starting Ray and the actors), where the caller interrupts it
        (:class:`pipeline.stop.StopRequested`).
        """
        self.stop_requested = True
        return self._polling

    def _load_voice(self, spec: str) -> VoicePrompt:
        return load_voice(spec, self.settings, self.config.limits)

    def _load_item_voice(self, spec: str) -> VoicePrompt:
        """An item's own voice: a preset or a file in ``voices_dir``, unless the job allows any path."""
        config = self.config
        return load_item_voice(
            spec, self.settings, config.limits, voices_dir=config.voices_dir, allow_paths=config.allow_voice_paths
        )

    def count_tokens(self, text: str) -> int:
        return len(self.token_ids(text))

    def token_ids(self, text: str) -> tuple[int, ...]:
        """Tokenizer ids, cached: the chunker counts a chunk's tokens and the stage then needs them."""
        return self._encode(text)

    # ------------------------------------------------------------------ driving

    def run(self, items: Iterator[Item | ItemError]) -> JobSummary:
        """Narrates every item that needs it and returns the summary.

        Ray and the stage actors start only when the first item needs narrating.
        A stop request (:meth:`request_stop`, or :class:`StopRequested` raised by a
        signal where the job was blocked) ends the run with ``summary.stopped``;
        any other exception propagates after the cleanup, with the summary so far
        in ``self.progress.summary`` marked ``aborted``.
        """
        started = time.perf_counter()
        states: dict[str, _ItemState] = {}
        ready: list[tuple[_ItemState, int]] = []  # chunks whose history, if any, is submitted
        in_flight: dict[ray.ObjectRef, tuple[_ItemState, int, ChunkRefs]] = {}
        items = iter(select(items, self.shard))  # other shards' items: not narrated, counted or recorded
        exhausted = finished = False
        limit = self.config.scheduler.max_chunks_in_flight
        batch = self.config.stages.semantic.batch_size
        try:
            self._polling = True
            while not self.stop_requested:
                while not exhausted and not self.stop_requested and len(ready) + len(in_flight) < limit:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                    elif (state := self._admit(item)) is not None:
                        states[state.item.id] = state
                        ready.extend((state, i) for i, source in enumerate(state.sources) if source is None)
                if ready and self.pipeline is None and not self._start_pipeline():
                    break  # stopped while the actors were starting
                while ready and not self.stop_requested and (len(ready) >= batch or exhausted or len(in_flight) < batch):
                    take, ready = ready[:batch], ready[batch:]
                    ready.extend(self._submit(self.pipeline, take, in_flight))
                if not in_flight:
                    if exhausted and not ready:
                        finished = True
                        break
                    continue
                self.metrics.chunks_in_flight(len(in_flight))
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=STOP_POLL_S)
                for ref in done:
                    state, index, _refs = in_flight.pop(ref)
                    self._receive(state, index, ref, states)
            self.metrics.chunks_in_flight(len(in_flight))
        except StopRequested:
            self.stop_requested = True
        except BaseException:
            self.progress.summary.aborted = True
            raise
        finally:
            self._polling = False
            try:
                try:
                    self._shutdown(in_flight)
                finally:
                    self.manifest.close()
            finally:
                self.close()
                self.progress.close(time.perf_counter() - started)
        summary = self.progress.summary
        summary.stopped = self.stop_requested and not finished
        return summary

    def _start_pipeline(self) -> bool:
        """Starts Ray if needed and the stage actors, and waits until every model is loaded.

        False when a stop request came first. The wait for the actors polls, so a
        stop ends a job that waits for resources the cluster lacks. Creating the
        actors (and reserving a placement group) is interrupted by the signal itself
        (the job is not ``_polling`` there). ``ray.init`` is not: interrupted while it
        starts a local Ray, it leaves some of Ray's processes running with nobody to
        end them, so a stop during it takes effect as soon as it returns.
        """
        if not ray.is_initialized():
            (self.start_ray or ray.init)()
            if self.stop_requested:
                return False
        self._polling = False
        try:
            self.pipeline = StagePipeline(self.config)
        finally:
            self._polling = True
        loading = self.pipeline.placement_refs()
        waiting = list(loading)
        while waiting:
            if self.stop_requested:
                return False
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=STOP_POLL_S)
        for placement in ray.get(loading):
            log.info("stage %(stage)s on node %(node_id)s, GPUs %(gpu_ids)s, %(device)s %(dtype)s", placement)
        return True

    def _shutdown(self, in_flight: dict[ray.ObjectRef, tuple[_ItemState, int, ChunkRefs]]) -> None:
        """Ends the stage actors. Chunks still in flight (after a stop) are cancelled first, every stage's
        call of each, so that Ray neither retries them on the killed actors (a console line per call) nor
        keeps the driver waiting for them."""
        if self.pipeline is None:
            return
        if in_flight:
            for _state, _index, refs in in_flight.values():
                for ref in (refs.audio, refs.fine, refs.coarse, refs.semantic):
                    try:
                        ray.cancel(ref)
                    except Exception:  # noqa: BLE001 - finished meanwhile, or Ray is going away: nothing to cancel
                        pass
            log.info("stopping: %d chunks in flight cancelled", len(in_flight))
        self.pipeline.shutdown()

    def _submit(self, pipeline: StagePipeline, take, in_flight) -> list[tuple[_ItemState, int]]:
        """Submits chunks; returns the chunks that this made ready (they continue these)."""
        works = [_with_history(state.works[i], state.refs.get(state.sources[i])) for state, i in take]
        unblocked = []
        for (state, index), refs in zip(take, pipeline.submit(works)):
            in_flight[refs.audio] = (state, index, refs)
            self.narrating = True
            if self.config.output.save_tokens:
                state.fine[index] = refs.fine
            followers = [i for i, source in enumerate(state.sources) if source == index]
            if followers:
                state.refs[index] = refs
            unblocked.extend((state, i) for i in followers)
            # A chunk's refs are needed until its last follower is submitted.
            source = state.sources[index]
            if source is not None and max(i for i, s in enumerate(state.sources) if s == source) == index:
                state.refs.pop(source, None)
        return unblocked

    # ------------------------------------------------------------------ items

    def _admit(self, item: Item | ItemError) -> _ItemState | None:
        """Plans an item's chunks unless an earlier run settled it; a bad item is recorded as failed at once.

        A repeated id fails on the console only: the record of the item it repeats is left as it is.
        """
        if not self.seen_ids.add(item.id):
            self.progress.item_failed(item.id, "id: duplicate item id in the input (the first one is kept)")
            self.metrics.item_done("failed")
            return None
        if isinstance(item, ItemError):
            return self._fail(item.id, f"{item.field}: {item.message}")
        max_chars = self.config.limits.max_item_chars
        if len(item.text) > max_chars:
            return self._fail(item.id, f"text: {len(item.text)} characters, over limits.max_item_chars ({max_chars})")
        try:
            params = ItemParams.model_validate(item.params or {})
            sampling = _merged_sampling(self.config.sampling, params)
        except ValidationError as exc:
            err = exc.errors()[0]
            return self._fail(item.id, f"params.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        spec = params.voice or item.voice
        try:
            voice = self._load_item_voice(spec) if spec else self.default_voice
        except VoiceError as exc:
            return self._fail(item.id, f"voice: {exc}")
        seed = params.seed if params.seed is not None else item_seed(self.config.seed, item.id)
        mode = params.voice_mode or self.config.voice_mode
        reset_every = params.voice_reset_every or self.config.voice_reset_every
        fingerprint = self.fingerprints.item(
            text=item.text, voice=voice, seed=seed, sampling=sampling, voice_mode=mode, voice_reset_every=reset_every
        )
        earlier, changed = self._already_done(item.id, fingerprint)
        if earlier == "done":
            self.progress.item_skipped()
            self.metrics.item_done("skipped")
            return None
        if earlier == "failed":
            self.progress.item_failed_earlier(item.id, self.done.get(item.id).error)
            self.metrics.item_done("failed")
            return None
        if changed:
            self.progress.item_changed()
        language = self.config.text.language
        if language == "auto":
            language = detect_language(item.text)
        try:
            chunks = make_chunks(item.text, self.count_tokens, self.config.text.max_chars, self.config.text.max_tokens, language)
        except ValueError as exc:
            return self._fail(item.id, f"text: {exc}", fingerprint)
        if not chunks:
            return self._fail(item.id, "text: empty after cleaning", fingerprint)
        seeds = [chunk_seed(seed, c.index) for c in chunks]
        sources = history_sources(len(chunks), mode, reset_every, voice is not None)
        works = [
            ChunkWork(
                key=f"{item.id}#{chunk.index}",
                text_ids=list(self.token_ids(chunk.text)),
                voice=voice,
                seed=chunk_seed_,
                sampling=sampling,
            )
            for chunk, chunk_seed_ in zip(chunks, seeds)
        ]
        return _ItemState(
            item=item,
            seed=seed,
            voice_name=voice.name if voice else None,
            voice_mode=mode,
            language=language,
            chunks=chunks,
            seeds=seeds,
            sources=sources,
            works=works,
            started=time.perf_counter(),
            fingerprint=fingerprint,
            changed=changed,
        )

    def _receive(self, state: _ItemState, index: int, ref: ray.ObjectRef, states: dict[str, _ItemState]) -> None:
        state.received += 1
        try:
            state.audio[index] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if state.error is None:
                state.error = f"chunk {index}: {_one_line(exc)}"
                self._fail(state.item.id, state.error, state.fingerprint)
        if state.received == len(state.chunks):
            del states[state.item.id]
            if state.error is None:
                self._finish(state)

    def _finish(self, state: _ItemState) -> None:
        """Writes the item's objects, metadata last; a storage fault, or metadata that cannot be
        written as JSON, fails this item alone (what it had written is removed again)."""
        try:
            objects, entry = self._item_objects(state)
        except PydanticSerializationError as exc:
            return self._fail(state.item.id, f"metadata: cannot be written as JSON ({_one_line(exc)})")
        except StorageError as exc:  # a key no storage can hold (too long for S3)
            return self._fail(state.item.id, f"storage: {exc}")
        written: list[str] = []
        try:
            for name, data in objects.items():
                self.storage.put_bytes(name, data)
                written.append(name)
        except StorageError as exc:
            self._discard(written)
            return self._fail(state.item.id, f"storage: {exc}")
        self.manifest.append(entry)
        self.progress.item_done(state.item.id, entry.duration_s, len(state.chunks), changed=state.changed)
        self.metrics.item_done("ok", entry.duration_s, time.perf_counter() - state.started)

    def _item_objects(self, state: _ItemState) -> tuple[dict[str, bytes], ManifestEntry]:
        """Every object of a finished item, encoded but not yet written (the metadata last, as its
        presence marks the item complete), and the manifest entry that records them."""
        output = self.config.output
        outputs = [state.audio[i] for i in range(len(state.chunks))]
        rate = outputs[0].sample_rate
        pieces = [trim_chunk(o.audio, rate, output.trim)[0] for o in outputs]
        audio, bounds = join_chunks(pieces, [c.break_after for c in state.chunks], rate, output.silence, output.crossfade_s)
        if output.sample_rate and output.sample_rate != rate:
            audio = resample(audio, rate, output.sample_rate)
            bounds = [(round(s * output.sample_rate / rate), round(e * output.sample_rate / rate)) for s, e in bounds]
            rate = output.sample_rate
        key = item_key(state.item.id)
        files = {"audio": f"{key}.{output.format}"}
        encoded = encode_audio(audio, rate, output.format)
        objects = {files["audio"]: encoded}
        checksum = f"sha256:{hashlib.sha256(encoded).hexdigest()}"
        chunks = [
            ChunkMetadata(
                index=chunk.index,
                text=chunk.text,
                n_tokens=chunk.n_tokens,
                seed=seed,
                voice=state.chunk_voice(chunk.index),
                break_after=chunk.break_after,
                start_s=start / rate,
                end_s=end / rate,
                samples=end - start,
            )
            for chunk, seed, (start, end) in zip(state.chunks, state.seeds, bounds)
        ]
        if output.subtitles:
            cues = cues_from_chunks([(c.start_s, c.end_s, c.text) for c in chunks])
            files["srt"], files["vtt"] = f"{key}.srt", f"{key}.vtt"
            objects[files["srt"]] = to_srt(cues).encode("utf-8")
            objects[files["vtt"]] = to_vtt(cues).encode("utf-8")
        if output.save_tokens:
            for index, fine in enumerate(ray.get([state.fine[i] for i in range(len(state.chunks))])):
                if fine.tokens.shape[-1] == 0:
                    continue  # a chunk that ended at once has no tokens to reuse as a voice
                name = files[f"tokens_{index}"] = f"{key}.tokens/{index:04d}.npz"
                objects[name] = voice_npz_bytes(name, fine.semantic, fine.coarse, fine.tokens, self.settings)
        files["metadata"] = f"{key}.json"
        duration = len(audio) / rate
        metadata = ItemMetadata(
            id=state.item.id,
            status="ok",
            title=state.item.title,
            duration_s=duration,
            sample_rate=rate,
            voice=state.voice_name,
            voice_mode=state.voice_mode,
            language=state.language,
            seed=state.seed,
            model=self.config.model.source,
            chunks=chunks,
            timings=_total_timings(outputs),
            wall_s=time.perf_counter() - state.started,
            files={kind: self.storage.uri_for(name) for kind, name in files.items()},
            audio_bytes=len(encoded),
            audio_checksum=checksum,
            extra=state.item.extra,
            fingerprint=state.fingerprint.value,
            fingerprint_parts=state.fingerprint.parts,
        )
        objects[files["metadata"]] = (metadata.model_dump_json(indent=2) + "\n").encode("utf-8")
        entry = ManifestEntry(
            id=state.item.id,
            status="ok",
            uri=metadata.files["audio"],
            duration_s=duration,
            checksum=checksum,
            bytes=len(encoded),
            fingerprint=state.fingerprint.value,
        )
        return objects, entry

    def _discard(self, keys: list[str]) -> None:
        """Best effort: removes what a failed item had written, so no final name holds half an item."""
        for key in keys:
            try:
                self.storage.delete(key)
            except StorageError as exc:
                log.warning("could not remove %s after its item failed: %s", key, exc)

    def _fail(self, item_id: str, reason: str, fingerprint: ItemFingerprint | None = None) -> None:
        """Records a failure (credentials in it redacted), unless the record already says exactly this:
        a row that fails the same way on every rerun does not grow the manifest."""
        reason = redact(reason)
        value = fingerprint.value if fingerprint is not None else None
        earlier = self.done.get(item_id) if self.done else None
        if earlier is None or (earlier.status, earlier.error, earlier.fingerprint) != ("failed", reason, value):
            self.manifest.append(
                ManifestEntry(id=item_id, status="failed", uri=None, duration_s=None, error=reason, fingerprint=value)
            )
        self.progress.item_failed(item_id, reason)
        self.metrics.item_done("failed")
        return None

    def _record_ok(
        self, item_id: str, uri: str, duration: float, checksum: str | None, size: int | None, fingerprint: str | None
    ) -> None:
        self.manifest.append(
            ManifestEntry(
                id=item_id, status="ok", uri=uri, duration_s=duration, checksum=checksum, bytes=size, fingerprint=fingerprint
            )
        )

    def _already_done(
        self, item_id: str, fingerprint: ItemFingerprint
    ) -> tuple[Literal["done", "failed", "todo"], str | None]:
        """What earlier runs left for this item: ``done`` (ok, unchanged, its objects there), ``failed``
        (recorded as failed with this same fingerprint; ``--retry-failed`` retries it), or ``todo``; with
        ``todo``, what changed since the record when the item is redone because of a change.

        The fingerprint decides first: an item whose text, voice, seed or settings differ from its
        record is redone, whether it was ok or failed (a fixed input needs no ``--retry-failed``), and
        a record without a fingerprint (an unreadable row, or an older version) counts as different.
        ``--force`` redoes every item. Only then are the objects checked: an item recorded ok must
        still have its metadata and an audio object of the recorded size; an item with no line (the run
        stopped between writing its objects and its manifest line) counts as done when its metadata
        object is there with this fingerprint and its audio matches it.
        """
        if not self.done:
            return "todo", None
        entry = self.done.get(item_id)
        key = item_key(item_id)
        audio_key = f"{key}.{self.config.output.format}"
        if entry is not None:
            if entry.fingerprint != fingerprint.value:
                return "todo", self._what_changed(key, fingerprint) if entry.status == "ok" else UNKNOWN_CHANGE
            if entry.status == "failed":
                return ("todo" if self.retry_failed or self.force else "failed"), None
            if self.force:
                return "todo", None
            done = self.storage.exists(f"{key}.json") and self.storage.size(audio_key) == entry.bytes
            return ("done" if done else "todo"), None
        try:
            metadata = ItemMetadata.model_validate_json(self.storage.get_bytes(f"{key}.json"))
        except (ObjectNotFound, ValidationError):
            return "todo", None
        if metadata.fingerprint != fingerprint.value:
            return "todo", changed_parts(metadata.fingerprint_parts, fingerprint.parts)
        if self.force or metadata.audio_bytes is None or self.storage.size(audio_key) != metadata.audio_bytes:
            return "todo", None
        self._record_ok(
            item_id, self.storage.uri_for(audio_key), metadata.duration_s, metadata.audio_checksum, metadata.audio_bytes,
            metadata.fingerprint,
        )
        return "done", None

    def _what_changed(self, key: str, fingerprint: ItemFingerprint) -> str:
        """The fingerprint parts that differ from the item's metadata object ("voice, seed")."""
        try:
            metadata = ItemMetadata.model_validate_json(self.storage.get_bytes(f"{key}.json"))
        except (ObjectNotFound, ValidationError):
            return UNKNOWN_CHANGE
        return changed_parts(metadata.fingerprint_parts, fingerprint.parts)


def _with_history(work: ChunkWork, history: ChunkRefs | None) -> ChunkWork:
    if history is None:
        return work
    return ChunkWork(**{**work.__dict__, "history": history})


def _merged_sampling(job: SamplingSet, params: ItemParams) -> SamplingSet:
    """The job's sampling with the item's per-stage overrides on top."""
    if not params.sampling:
        return job
    merged = job.model_dump()
    for stage, overrides in params.sampling.items():
        merged[stage] = {**merged[stage], **overrides}
    return SamplingSet.model_validate(merged)


def _total_timings(outputs: list[AudioOutput]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for output in outputs:
        for stage, seconds in output.timings.items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return totals


def _one_line(exc: BaseException) -> str:
    """The innermost cause of a Ray error, on one line."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__
