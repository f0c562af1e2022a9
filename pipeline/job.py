"""One narration job: items in, audio + metadata + subtitles + manifest out.

The job is a thin loop over four parts: the planner (an item in, its chunks
out), the stage pipeline (chunks through the four stages), the writers (a
chunk's audio kept as a part, an item written once its last chunk lands) and
the ledger (the lease, the resume check, the manifest and progress).

The loop admits items in order and sends their chunks in order, as long as
fewer than ``scheduler.max_chunks_in_flight`` chunks are inside the stages and
writers, counting chunks of one item as well as of many: a book's chunks are
planned at once but sent only when there is room. A chunk that continues an
earlier chunk's voice (chained voices, or a random voice fixed by the first
chunk) is handed that chunk's ObjectRefs, and Ray runs it once they exist. A
failing chunk fails its item alone; its later chunks are not sent.

The chunks one turn of the loop has room for go out as a group (at most
:attr:`StagePipeline.group_limit`): one call per stage and one to a writer for
all of them, since a call, not a chunk, is what costs the driver most. Each
chunk keeps its own refs and its own receipt inside the group's one answer.

A chunk the writer judges implausible (:mod:`pipeline.retakes`) comes back
unwritten and goes out again, first in the next turn, as its next take. While
takes are judged, a chunk that continues another waits until that one's take
is kept, so it continues the audio its item keeps.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import ray

from pipeline.audiobook import BookOrder, BookReceipt, write_audiobook
from pipeline.books import BookTracker
from pipeline.config import JobConfig
from pipeline.fingerprint import Fingerprinter, ItemFingerprint
from pipeline.ledger import Ledger
from pipeline.manifest import new_run_id
from pipeline.object_store import LocalStore, open_storage
from pipeline.planner import ItemPlan, ItemRejected, Planner, text_encoder
from pipeline.progress import JobSummary, Progress
from pipeline.retakes import Retake, TakeOrder
from pipeline.scheduler import ChunkRefs, ChunkWork, StagePipeline
from pipeline.seeds import take_seed
from pipeline.shards import Shard, select
from pipeline.sources import Item, ItemError
from pipeline.speech_time import estimate_speech_seconds
from pipeline.stop import StopRequested
from pipeline.writer import ChunkOrder, ChunkWrite, ItemOrder, ItemReceipt, PartOrder, PartReceipt
from pipeline.writer_pool import WriterPool
from workers.checkpoints import load_settings_for, load_tokenizer, resolve_text_dir
from workers.errors import last_line
from workers.records import VoicePrompt

log = logging.getLogger(__name__)

STOP_POLL_S = 0.5  # how often the driver looks for a stop request while chunks run or actors start


@dataclass(eq=False)
class _ItemRun:
    """An admitted item: which of its chunks are sent, back, and what later chunks continue from."""

    plan: ItemPlan
    finished: set[int]  # chunks whose part is written (by this run or an earlier one)
    judged: bool = False  # takes are judged and may be made again (quality.retakes > 0)
    started: float = field(default_factory=time.perf_counter)
    started_unix: float = field(default_factory=time.time)
    next_index: int = 0
    outstanding: int = 0  # chunks sent and not back
    refs: dict[int, ChunkRefs] = field(default_factory=dict)  # chunks whose followers are not all settled
    voices: dict[int, VoicePrompt] = field(default_factory=dict)  # an earlier run's chunks that later ones continue
    rejected: dict[int, list[Retake]] = field(default_factory=dict)  # takes of a chunk judged implausible, in order
    all_sent: bool = False
    error: str | None = None  # the first chunk that failed: the item is recorded failed, its later chunks not sent
    changed: str | None = None  # a redo: what changed since the recorded run ("voice, seed")

    @property
    def n_chunks(self) -> int:
        return len(self.plan.chunks)

    def next_chunk(self) -> int | None:
        """The next chunk to send (skipping those an earlier run finished), None when all are sent."""
        if self.error is not None:
            return None
        while self.next_index < self.n_chunks and self.next_index in self.finished:
            self.next_index += 1
        return self.next_index if self.next_index < self.n_chunks else None

    def may_send(self, index: int) -> bool:
        """A chunk that continues an earlier one waits, while takes are judged, until that one's take
        is kept: it must continue the take its item keeps, not one made again."""
        source = self.plan.sources[index]
        return not self.judged or source is None or source in self.finished

    def take(self, index: int) -> int:
        """The take of a chunk to send next: one past its rejected ones."""
        return len(self.rejected.get(index, ()))


@dataclass(frozen=True)
class _Outgoing:
    """A chunk of the group being gathered: sent with the others at the end of the loop's turn."""

    run: _ItemRun
    index: int
    take: TakeOrder
    work: ChunkWork


@dataclass(frozen=True)
class _Sent:
    """A chunk sent through the stages, until its receipt is back."""

    run: _ItemRun
    index: int
    take: TakeOrder
    refs: ChunkRefs


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
        pipeline: StagePipeline | None = None,
        worker_classes: Mapping[str, type] | None = None,
        progress: Progress | None = None,
    ) -> None:
        """``start_ray`` starts or joins Ray; it is called only once an item needs narrating, so an
        input whose items are all done, failed or unreadable never starts Ray or loads a model.
        ``shard``: this driver narrates only that shard's items (:mod:`pipeline.shards`).
        ``pipeline``: stage actors already running (made for this config's stages and model), used
        and left running, so several jobs share one set of loaded models; by default the job makes
        its own when it needs them and ends them at its end.
        ``worker_classes`` replaces the stage actor classes (see :class:`StagePipeline`): a
        benchmark and extension hook, None in production.
        ``progress``: where the job reports each item (by default a console one, made here;
        ``quiet`` and ``total_items`` are for that one): the Ray Data processor passes one
        that also keeps which items this run narrated."""
        self.config = config
        self.shard = shard
        self.settings = load_settings_for(config.model)
        tokenizer = load_tokenizer(config.model)
        self.planner = Planner(
            config,
            self.settings,
            text_encoder(tokenizer),
            Fingerprinter(config, resolve_text_dir(config.model)),
        )
        self.start_ray = start_ray
        self.progress = progress if progress is not None else Progress(quiet=quiet, total_items=total_items)
        self.stop_requested = False
        self._polling = False  # the run loop is where it looks for stop_requested (see request_stop)
        self.narrating = False  # a chunk was sent: a fault from now on comes after narration began
        self.pipeline = pipeline
        self._owns_pipeline = pipeline is None
        self.worker_classes = worker_classes
        self.writers: WriterPool | None = None
        self.run_id = new_run_id()
        self.storage = open_storage(output, config.s3)
        if not isinstance(self.storage, LocalStore):
            self.storage.check_reachable()
        # Last: it takes the output's lease, which ``run`` (or ``close``) gives back.
        self.ledger = Ledger(
            config, self.storage, self.run_id, progress=self.progress, retry_failed=retry_failed, force=force,
            on_lost=self._lease_lost, shard=shard,
        )
        self._sending: deque[_ItemRun] = deque()  # admitted items with chunks still to send, in order
        self._retakes: deque[tuple[_ItemRun, int]] = deque()  # chunks whose take was implausible, to send again
        self._input_exhausted = False
        self._in_flight: dict[ray.ObjectRef, list[_Sent]] = {}  # a group's receipts (one object), by the chunks sent
        self._chunks_in_flight = 0  # chunks of those groups: what max_chunks_in_flight bounds
        self._finishing: dict[ray.ObjectRef, _ItemRun] = {}  # items being assembled from their parts
        self.books = BookTracker(config.output)  # with output.audiobook: which books are whole

    def close(self) -> None:
        """Closes the records and gives the output's lease back (``run`` does this at its end); idempotent."""
        self.ledger.close()

    def _lease_lost(self, reason: str) -> None:
        """Another job took this output over (we were presumed dead): stop writing to it."""
        log.error("%s", reason)
        self.request_stop()

    def request_stop(self) -> bool:
        """Stop admitting work and return soon; finished items and chunks stay recorded (SIGINT/SIGTERM).

        True when the run loop will notice at its next poll; False while the job is
        blocked (loading, starting Ray and the actors), where the caller interrupts it
        (:class:`pipeline.stop.StopRequested`).
        """
        self.stop_requested = True
        return self._polling

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
        items = iter(select(items, self.shard))  # other shards' items: not narrated, counted or recorded
        finished = False
        try:
            self._polling = True
            while not self.stop_requested:
                exhausted = self._send_while_room(items)
                waiting = [*self._in_flight, *self._finishing]
                self.ledger.chunks_in_flight(self._chunks_in_flight)
                if not waiting:
                    if exhausted and not self._sending and not self._retakes:
                        finished = True
                        break
                    continue
                done, _ = ray.wait(waiting, num_returns=1, timeout=STOP_POLL_S)
                for ref in done:
                    self._receive(ref)
            if not finished:
                self._receive_what_is_back()
            self.ledger.chunks_in_flight(self._chunks_in_flight)
            if finished:
                self._write_books()
                finished = not self.stop_requested  # stopped while the books were made: not all done
        except StopRequested:
            self.stop_requested = True
        except BaseException:
            self.progress.summary.aborted = True
            raise
        finally:
            self._polling = False
            try:
                self._shutdown()
            finally:
                self.close()
                self.progress.close(time.perf_counter() - started)
        summary = self.progress.summary
        summary.stopped = self.stop_requested and not finished
        return summary

    def _send_while_room(self, items: Iterator[Item | ItemError]) -> bool:
        """Admits items and gathers their chunks, in order, until the bound is reached, sending them
        in groups; True once the input is exhausted (or a stop came while the actors started)."""
        group: list[_Outgoing] = []
        exhausted = self._gather(items, group)
        if group and not self.stop_requested:
            self._send_group(group)
        return exhausted

    def _gather(self, items: Iterator[Item | ItemError], group: list[_Outgoing]) -> bool:
        """The loop's turn: the chunks there is room for, into ``group``; a full group, or a chunk
        that continues one of the group's own, sends the group first."""
        limit = self.config.scheduler.max_chunks_in_flight
        while self._chunks_in_flight + len(group) < limit and not self.stop_requested:
            if self._retakes:
                run, index = self._retakes.popleft()
                if run.error is None:
                    self._add(group, run, index)
                continue
            sendable = self._next_sendable()
            if sendable is None:
                if self._input_exhausted:
                    return True
                item = next(items, None)
                if item is None:
                    self.progress.input_read()
                    self._input_exhausted = True
                    return True
                self.progress.item_read()
                if (run := self._admit(item)) is not None:
                    self._sending.append(run)
                continue
            if self.writers is None and not self._start_pipeline():
                return True  # stopped while the actors were starting
            self._add(group, *sendable)
        return False

    def _next_sendable(self) -> tuple[_ItemRun, int] | None:
        """The first admitted item's next chunk that may go now, in order; items with every chunk
        sent leave the queue. None: nothing may go until a receipt (or another item) comes."""
        for run in list(self._sending):
            index = run.next_chunk()
            if index is None:
                self._sending.remove(run)
                run.all_sent = True
                self._settle(run)
            elif run.may_send(index):
                return run, index
        return None

    def _add(self, group: list[_Outgoing], run: _ItemRun, index: int) -> None:
        """A chunk into the group; a full group, or one holding the chunk this one continues, is sent first."""
        source = run.plan.sources[index]
        if group and (
            len(group) >= self.pipeline.group_limit
            or (source is not None and any(o.run is run and o.index == source for o in group))
        ):  # a chunk's history must exist before the call that reads it
            self._send_group(group)
            group.clear()
        take = self._take(run, index)
        group.append(_Outgoing(run, index, take, self._work(run, index, take)))
        run.outstanding += 1
        run.next_index = max(run.next_index, index + 1)

    def _take(self, run: _ItemRun, index: int) -> TakeOrder:
        """Which take of the chunk goes now (one past its rejected ones), its seed, and its text's speech time."""
        plan, take = run.plan, run.take(index)
        return TakeOrder(
            take=take,
            seed=take_seed(plan.seeds[index], take),
            expected_s=estimate_speech_seconds(plan.chunks[index].text, plan.language),
            rejected=tuple(run.rejected.get(index, ())),
        )

    def _work(self, run: _ItemRun, index: int, take: TakeOrder) -> ChunkWork:
        """A chunk as the stages take it, voiced by the item's voice or continuing an earlier chunk."""
        plan = run.plan
        source = plan.sources[index]
        history = run.refs.get(source) if source is not None else None
        voice = plan.spec.voice if source is None else self._earlier_voice(run, source)
        return ChunkWork(
            key=f"{plan.item.id}#{index}",
            text_ids=list(self.planner.token_ids(plan.chunks[index].text)),
            voice=voice if history is None else plan.spec.voice,
            seed=take.seed,
            sampling=plan.spec.sampling,
            history=history,
        )

    def _send_group(self, group: list[_Outgoing]) -> None:
        """Sends a group through the stages (one call each) to the writer beside its codec replica (one
        call, its audio and tokens as top-level arguments: the audio of chunk i is argument i)."""
        submitted = self.pipeline.submit([o.work for o in group])
        self.narrating = True
        save_tokens = self.config.output.save_tokens
        writes: list[ChunkWrite] = []
        fines: list[ray.ObjectRef] = []
        sent: list[_Sent] = []
        for i, (o, refs) in enumerate(zip(group, submitted)):
            run, index, plan = o.run, o.index, o.run.plan
            if run.n_chunks == 1:
                order, keep_tokens = self._order(run), save_tokens
            else:
                keep_tokens = save_tokens or plan.has_followers(index)
                order = PartOrder(item_id=plan.item.id, parts_id=plan.parts_id, index=index, keep_tokens=keep_tokens)
            if keep_tokens:
                fines.append(refs.fine)
            writes.append(
                ChunkWrite(order=order, take=o.take, audio=i, fine=len(group) + len(fines) - 1 if keep_tokens else None)
            )
            sent.append(_Sent(run, index, o.take, refs))
            if plan.has_followers(index):
                run.refs[index] = refs  # a retake's refs replace the rejected take's
            source = plan.sources[index]
            if source is not None and not run.judged and plan.last_follower[source] == index:
                self._release_source(run, source)  # its last follower is sent (judged: once that one is kept)
        writer = self.writers.beside(submitted[0].codec_replica)  # a group is on one replica of each stage
        receipt = writer.write_group.remote(writes, *(refs.audio for refs in submitted), *fines)
        self._in_flight[receipt] = sent
        self._chunks_in_flight += len(sent)

    def _receive_what_is_back(self) -> None:
        """After a stop: records the receipts already back (items a writer has written), without waiting
        for the rest. A writer that finishes an item after this leaves it for the rerun, which finds it
        done by its metadata object."""
        waiting = [*self._in_flight, *self._finishing]
        if waiting:
            done, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
            for ref in done:
                self._receive(ref)

    def _start_pipeline(self) -> bool:
        """Starts Ray if needed, the stage actors and the writers, and waits until every model is loaded.

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
        if self.pipeline is None:
            self._polling = False
            try:
                self.pipeline = StagePipeline(self.config, self.worker_classes)
            finally:
                self._polling = True
        loading = self.pipeline.placement_refs()
        if not self._wait_for(loading):
            return False
        placements = ray.get(loading)
        for placement in placements:
            log.info("stage %(stage)s on node %(node_id)s, GPUs %(gpu_ids)s, %(device)s %(dtype)s", placement)
        codec_nodes = [p["node_id"] for p in sorted(placements, key=lambda p: p["replica"]) if p["stage"] == "codec"]
        self.writers = WriterPool(self.config, self.storage, self.settings, codec_nodes)  # ended by _shutdown
        ready = self.writers.ready_refs()
        if not self._wait_for(ready):
            return False
        ray.get(ready)  # a writer that could not start fails here, before any work
        self.progress.narration_started()
        return True

    def _wait_for(self, refs: list[ray.ObjectRef]) -> bool:
        """Waits until every ref is ready, polling for a stop request (False: stopped first)."""
        waiting = list(refs)
        while waiting:
            if self.stop_requested:
                return False
            _, waiting = ray.wait(waiting, num_returns=len(waiting), timeout=STOP_POLL_S)
        return True

    def _shutdown(self) -> None:
        """Ends the writers and the stage actors. Chunks still in flight (after a stop) are cancelled
        first, every stage's call of each, so that Ray neither retries them on the killed actors (a
        console line per call) nor keeps the driver waiting for them, and are told finished to the
        pipeline, which a later job may share. Their finished chunks stay as parts, which a rerun
        resumes from."""
        if self.pipeline is None:
            return
        sent = [chunk for group in self._in_flight.values() for chunk in group]
        pending = list(self._finishing) + list(self._in_flight)
        for chunk in sent:
            pending.extend((chunk.refs.audio, chunk.refs.fine, chunk.refs.coarse, chunk.refs.semantic))
        calls: set[bytes] = set()  # a group's refs at one stage are one call: cancelled once
        for ref in pending:
            if (call := ref.task_id().binary()) in calls:
                continue
            calls.add(call)
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001 - finished meanwhile, or Ray is going away: nothing to cancel
                pass
        if sent:
            log.info("stopping: %d chunks in flight cancelled", len(sent))
        for chunk in sent:
            self.pipeline.finished(chunk.refs)  # a shared pipeline's next job starts with these replicas' counts at rest
        if self.writers is not None:
            self.writers.shutdown()
        if self._owns_pipeline:
            self.pipeline.shutdown()

    # ------------------------------------------------------------------ items

    def _admit(self, item: Item | ItemError) -> _ItemRun | None:
        """Plans an item unless an earlier run settled it; a bad item is recorded as failed at once."""
        ledger = self.ledger
        if not ledger.first_sighting(item.id):
            return None
        if isinstance(item, Item):
            self.books.admitted(item)
        try:
            spec = self.planner.spec(item)
        except ItemRejected as exc:
            self._failed(item.id, exc.reason)
            return None
        verdict = ledger.earlier(item.id, spec.fingerprint)
        if verdict.status == "done":
            ledger.skipped()
            return None
        if verdict.status == "failed":
            ledger.failed_earlier(item.id)
            self.books.failed(item.id)
            return None
        if verdict.changed:
            ledger.redone()
        try:
            plan = self.planner.plan(spec)
        except ItemRejected as exc:
            self._failed(item.id, exc.reason, exc.fingerprint)
            return None
        finished = ledger.finished_chunks(item.id, plan.parts_id, len(plan.chunks)) if len(plan.chunks) > 1 else set()
        if finished:
            ledger.resumed(item.id, len(finished), len(plan.chunks))
        self.progress.item_planned(item.id, len(plan.chunks) - len(finished))
        return _ItemRun(plan, finished, judged=self.config.quality.retakes > 0, changed=verdict.changed)

    @staticmethod
    def _release_source(run: _ItemRun, source: int) -> None:
        """A chunk's followers are all settled: its tokens are no longer needed as a history."""
        run.refs.pop(source, None)
        run.voices.pop(source, None)

    def _earlier_voice(self, run: _ItemRun, source: int) -> VoicePrompt | None:
        """The tokens of a chunk an earlier run finished, as the voice a later chunk continues from
        (None when the source was sent by this run: its refs are the history)."""
        if source in run.refs or source not in run.finished:
            return None
        if source not in run.voices:
            part = self.ledger.part(run.plan.item.id, run.plan.parts_id, source)
            run.voices[source] = part.voice(f"chunk {source}")
        return run.voices[source]

    def _order(self, run: _ItemRun) -> ItemOrder:
        plan = run.plan
        item, spec = plan.item, plan.spec
        return ItemOrder(
            item_id=item.id,
            title=item.title,
            extra=item.extra,
            voice=plan.voice_name,
            voice_mode=spec.voice_mode,
            language=plan.language,
            seed=spec.seed,
            model=self.config.model.source,
            fingerprint=spec.fingerprint.value,
            fingerprint_parts=spec.fingerprint.parts,
            parts_id=plan.parts_id,
            chunks=[
                ChunkOrder(
                    index=chunk.index, text=chunk.text, n_tokens=chunk.n_tokens, seed=seed,
                    voice=plan.chunk_voice(chunk.index), break_after=chunk.break_after,
                )
                for chunk, seed in zip(plan.chunks, plan.seeds)
            ],
            started=run.started_unix,
        )

    def _receive(self, ref: ray.ObjectRef) -> None:
        """A group's receipts (each chunk's part written, or its one-chunk item) or an item's, from a writer."""
        if ref in self._finishing:
            run = self._finishing.pop(ref)
            receipt, error = _fetch(ref)
            self._record(run, receipt if error is None else ItemReceipt(item_id=run.plan.item.id, error=f"item: {error}"))
            return
        sent = self._in_flight.pop(ref)
        self._chunks_in_flight -= len(sent)
        receipts, error = _fetch(ref)
        if error is not None:  # the writer's call failed (a stage or writer that could not run): every chunk of it
            receipts = [ItemReceipt(item_id=c.run.plan.item.id, error=f"chunk {c.index}: {error}") for c in sent]
        for chunk, receipt in zip(sent, receipts, strict=True):
            self._receive_chunk(chunk, receipt)

    def _receive_chunk(self, chunk: _Sent, receipt: ItemReceipt | PartReceipt) -> None:
        """One chunk's receipt: its one-chunk item recorded, or its part counted (the item assembled
        once every part is in), or its error recording the item failed."""
        run = chunk.run
        run.outstanding -= 1
        self.pipeline.finished(chunk.refs)
        if receipt.retake is not None:
            self._retake(chunk, receipt.retake)
            return
        if receipt.implausible is not None:
            self.progress.chunk_kept_implausible(run.plan.item.id, chunk.index, receipt.implausible)
        if run.n_chunks == 1:
            self._record(run, receipt)
        elif receipt.error is not None:
            if run.error is None:
                run.error = receipt.error
                self._failed(run.plan.item.id, receipt.error, run.plan.spec.fingerprint)
        else:
            run.finished.add(chunk.index)
            source = run.plan.sources[chunk.index]
            if run.judged and source is not None and run.plan.last_follower[source] == chunk.index:
                self._release_source(run, source)  # its last follower is kept: no retake will read it again
            self.progress.chunk_done(run.plan.item.id, receipt.audio_s)
            if run.all_sent:
                self._settle(run)

    def _retake(self, chunk: _Sent, reason: str) -> None:
        """A take the writer judged implausible, with retakes left: the chunk is sent again with its next seed."""
        run, index, take = chunk.run, chunk.index, chunk.take
        run.rejected.setdefault(index, []).append(Retake(take=take.take, seed=take.seed, reason=reason))
        self.progress.chunk_retaken(run.plan.item.id, index, take.take + 1, reason)
        self._retakes.append((run, index))

    def _settle(self, run: _ItemRun) -> None:
        """Every chunk of a multi-chunk item is sent: once all are back as parts, the item is assembled."""
        if run.error is None and run.n_chunks > 1 and len(run.finished) == run.n_chunks and run.outstanding == 0:
            self._finishing[self.writers.any().finish.remote(self._order(run))] = run

    def _record(self, run: _ItemRun, receipt: ItemReceipt) -> None:
        item_id = run.plan.item.id
        if receipt.error is not None:
            self._failed(item_id, receipt.error, run.plan.spec.fingerprint)
        else:
            self.ledger.ok(receipt.entry, run.n_chunks, time.perf_counter() - run.started, run.changed)

    def _failed(self, item_id: str, reason: str, fingerprint: ItemFingerprint | None = None) -> None:
        self.ledger.failed(item_id, reason, fingerprint)
        self.books.failed(item_id)

    # ------------------------------------------------------------------ books

    def _write_books(self) -> None:
        """With ``output.audiobook``: once every item is settled, each book whose chapters are all ok
        gets its ``.m4b``; a book with a failed chapter gets one line instead. Made by the writers when
        this run started them (audio stays off the driver), else (every chapter was done before) here."""
        if not self.books.seen:
            return
        if self.shard is not None:
            self.progress.echo(
                "audiobooks not made with --shard (a book's chapters are in several shards): "
                "once every shard is done, run once without --shard to make them"
            )
            return
        orders, left_out = self.books.orders()
        for book_id, reason in left_out:
            self.progress.book_failed(book_id, reason)
        if self.writers is None:
            for order in orders:
                if self.stop_requested:
                    return
                self._book_receipt(order, write_audiobook(self.storage, order))
            return
        waiting = {self.writers.any().write_book.remote(order): order for order in orders}
        while waiting and not self.stop_requested:
            done, _ = ray.wait(list(waiting), num_returns=1, timeout=STOP_POLL_S)
            for ref in done:
                order = waiting.pop(ref)
                try:
                    receipt = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    receipt = BookReceipt(book_id=order.book_id, error=_one_line(exc))
                self._book_receipt(order, receipt)

    def _book_receipt(self, order: BookOrder, receipt: BookReceipt) -> None:
        if receipt.error is not None:
            self.progress.book_failed(order.book_id, receipt.error)
            return
        record = receipt.record
        state = "" if receipt.written else " (unchanged)"
        self.progress.book_done(
            f"{order.book_id}: {record.uri}, {len(record.chapters)} chapters, {record.duration_s:.1f} s{state}"
        )


def _fetch(ref: ray.ObjectRef) -> tuple[object, str | None]:
    """A writer's answer, or (None, the innermost error on one line) when its call failed."""
    try:
        return ray.get(ref), None
    except ray.exceptions.RayError as exc:
        return None, _one_line(exc)


def _one_line(exc: BaseException) -> str:
    """The innermost cause of a Ray error, on one line."""
    return last_line(getattr(exc, "cause", None) or exc)
