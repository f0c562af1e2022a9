"""One narration job: items in, audio + metadata + manifest out.

The driver splits each item's text into chunks, keeps at most
``scheduler.max_chunks_in_flight`` chunks inside the pipeline, and writes an
item as soon as its last chunk's audio arrives. A failing chunk fails its item
alone; the job goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ray

from pipeline.assembly import ChunkMetadata, ItemMetadata, chunk_bounds, join_chunks, write_audio, write_json_atomic
from pipeline.config import JobConfig
from pipeline.manifest import Manifest, ManifestEntry
from pipeline.records import AudioOutput, VoicePrompt
from pipeline.scheduler import ChunkWork, StagePipeline
from pipeline.seeds import chunk_seed, item_seed
from pipeline.sources import Item, ItemError, iter_text_items
from pipeline.storage import LocalStorage, safe_key
from pipeline.text import TextChunk, make_chunks, normalize_text
from pipeline.voices import VoiceError, load_voice
from workers.checkpoints import load_settings_for, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class JobSummary:
    ok: int = 0
    failed: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass
class _ItemState:
    """An item whose chunks are in the pipeline."""

    item: Item
    seed: int
    voice_name: str | None
    chunks: list[TextChunk]
    seeds: list[int]
    started: float
    audio: dict[int, AudioOutput] = field(default_factory=dict)
    received: int = 0
    error: str | None = None


class NarrationJob:
    def __init__(self, config: JobConfig, output_dir: Path, *, echo=print) -> None:
        self.config = config
        self.storage = LocalStorage(output_dir)
        self.manifest = Manifest(output_dir)
        self.echo = echo
        self.tokenizer = load_tokenizer(config.model)
        self.settings = load_settings_for(config.model)
        self.default_voice = self._load_voice(config.voice) if config.voice else None
        self.summary = JobSummary()
        self.seen_ids: set[str] = set()

    def _load_voice(self, spec: str) -> VoicePrompt:
        return load_voice(spec, semantic_vocab=self.settings.semantic.semantic_vocab_size, codebook_size=self.settings.codebook_size)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def run(self, items: Iterator[Item | ItemError]) -> JobSummary:
        started = time.perf_counter()
        pipeline = StagePipeline(self.config)
        for placement in pipeline.placements():
            log.info("stage %(stage)s on node %(node_id)s, GPUs %(gpu_ids)s, %(device)s %(dtype)s", placement)
        states: dict[str, _ItemState] = {}
        in_flight: dict[ray.ObjectRef, tuple[str, int]] = {}
        pending: list[tuple[str, int, ChunkWork]] = []
        items = iter(items)
        exhausted = False
        limit = self.config.scheduler.max_chunks_in_flight
        batch = self.config.stages.semantic.batch_size
        try:
            while True:
                while not exhausted and len(pending) + len(in_flight) < limit:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                    else:
                        pending.extend(self._admit(item, states))
                while pending and (len(pending) >= batch or exhausted or len(in_flight) == 0):
                    take, pending = pending[:batch], pending[batch:]
                    refs = pipeline.submit([work for _, _, work in take])
                    in_flight.update({ref: (item_id, index) for ref, (item_id, index, _) in zip(refs, take)})
                if not in_flight:
                    if exhausted and not pending:
                        break
                    continue
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in done:
                    item_id, index = in_flight.pop(ref)
                    self._receive(states, item_id, index, ref)
        finally:
            pipeline.shutdown()
        self.summary.wall_s = time.perf_counter() - started
        return self.summary

    def _admit(self, item: Item | ItemError, states: dict[str, _ItemState]) -> list[tuple[str, int, ChunkWork]]:
        """Turns an item into chunk work; a bad item is recorded as failed at once."""
        if isinstance(item, ItemError):
            self._fail(item.id, f"{item.field}: {item.message}")
            return []
        try:
            voice = self._load_voice(item.voice) if item.voice else self.default_voice
        except VoiceError as exc:
            self._fail(item.id, f"voice: {exc}")
            return []
        text = normalize_text(item.text)
        if not text:
            self._fail(item.id, "text: empty after cleaning")
            return []
        if item.id in self.seen_ids:
            self._fail(item.id, "id: duplicate item id in the input")
            return []
        self.seen_ids.add(item.id)
        try:
            chunks = make_chunks(text, self.count_tokens, self.config.text.max_chars, self.config.text.max_tokens)
        except ValueError as exc:
            self._fail(item.id, f"text: {exc}")
            return []
        seed = item_seed(self.config.seed, item.id)
        seeds = [chunk_seed(seed, c.index) for c in chunks]
        states[item.id] = _ItemState(
            item=item,
            seed=seed,
            voice_name=voice.name if voice else None,
            chunks=chunks,
            seeds=seeds,
            started=time.perf_counter(),
        )
        work = []
        for chunk, seed_of_chunk in zip(chunks, seeds):
            ids = self.tokenizer.encode(chunk.text, add_special_tokens=False)
            key = f"{item.id}#{chunk.index}"
            work.append((item.id, chunk.index, ChunkWork(key=key, text_ids=ids, voice=voice, seed=seed_of_chunk)))
        return work

    def _receive(self, states: dict[str, _ItemState], item_id: str, index: int, ref: ray.ObjectRef) -> None:
        state = states[item_id]
        state.received += 1
        try:
            state.audio[index] = ray.get(ref)
        except ray.exceptions.RayError as exc:
            if state.error is None:
                state.error = f"chunk {index}: {_one_line(exc)}"
                self._fail(item_id, state.error)
        if state.received == len(state.chunks):
            del states[item_id]
            if state.error is None:
                self._finish(state)

    def _finish(self, state: _ItemState) -> None:
        outputs = [state.audio[i] for i in range(len(state.chunks))]
        sample_rate = outputs[0].sample_rate
        silence_s = self.config.output.silence.sentence
        audio = join_chunks([o.audio for o in outputs], sample_rate, silence_s)
        key = safe_key(state.item.id)
        audio_key = f"{key}.{self.config.output.format}"
        write_audio(self.storage.path_for(audio_key), audio, sample_rate, self.config.output.format)
        duration = len(audio) / sample_rate
        metadata = ItemMetadata(
            id=state.item.id,
            status="ok",
            duration_s=duration,
            sample_rate=sample_rate,
            voice=state.voice_name,
            seed=state.seed,
            model=self.config.model.source,
            chunks=_chunk_metadata(state, outputs, sample_rate, silence_s),
            timings=_total_timings(outputs),
            wall_s=time.perf_counter() - state.started,
        )
        write_json_atomic(self.storage.path_for(f"{key}.json"), metadata.model_dump(mode="json"))
        self.manifest.append(
            ManifestEntry(id=state.item.id, status="ok", uri=self.storage.uri_for(audio_key), duration_s=duration, error=None)
        )
        self.summary.ok += 1
        self.summary.audio_s += duration
        self.echo(f"ok      {state.item.id}: {duration:.1f} s of audio in {len(outputs)} chunks")

    def _fail(self, item_id: str, reason: str) -> None:
        self.manifest.append(ManifestEntry(id=item_id, status="failed", uri=None, duration_s=None, error=reason))
        self.summary.failed += 1
        self.echo(f"FAILED  {item_id}: {reason}")


def _chunk_metadata(state: _ItemState, outputs: list[AudioOutput], sample_rate: int, silence_s: float) -> list[ChunkMetadata]:
    bounds = chunk_bounds([len(o.audio) for o in outputs], sample_rate, silence_s)
    return [
        ChunkMetadata(
            index=chunk.index,
            text=chunk.text,
            n_tokens=chunk.n_tokens,
            seed=seed,
            start_s=start / sample_rate,
            end_s=end / sample_rate,
            samples=end - start,
        )
        for chunk, seed, (start, end) in zip(state.chunks, state.seeds, bounds)
    ]


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


def run_job(config: JobConfig, input_path: Path, output_dir: Path, *, echo=print) -> JobSummary:
    job = NarrationJob(config, output_dir, echo=echo)
    return job.run(iter_text_items(input_path))


