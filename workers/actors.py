"""The four Ray actors, one per Bark stage, each hosting only its own sub-model.

The driver calls ``process_group`` once per group of chunks (one chunk or
several sent in one turn of its loop) with the previous stage's output refs as
top-level arguments: Ray resolves them in this process, so tokens travel actor
to actor and never through the driver, and each chunk has its own output ref
(``num_returns``). A group is how chunks travel, never how they are batched:
each of its chunks is queued on its own (:class:`workers.batching.BatchQueue`)
and handed back as its own output, or as a :class:`ChunkFailure` that fails it
alone. Each actor is an async actor: calls only queue their chunks and wait,
while one serving thread owns the model and drives the stage's engine, the same
loop for every stage:

- semantic and coarse: the slot engine (:class:`workers.engine.GptEngine`): a
  finished chunk leaves its slot at once and a queued one is prefilled into it
  before the next step (``continuous: false``: a new batch only enters an empty
  engine);
- fine and codec: a batch engine, up to ``batch_size`` chunks of similar length
  at a time, waiting at most ``max_wait_ms`` for a partial batch to fill.

Every chunk keeps its own seed and settings, so its tokens never depend on what
it was batched with; a chunk whose numbers go bad fails alone.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from workers.batching import BatchQueue
from workers.checkpoints import load_settings_for, load_stage_model
from workers.codec import CodecEngine
from workers.coarse import CoarsePolicy
from workers.config import ModelConfig, StageConfig, StageName
from workers.engine import Admission, Engine, Finished, GptEngine
from workers.errors import last_line
from workers.fine import FineEngine
from workers.metrics import StageMetrics
from workers.records import AudioOutput, BatchRecord, ChunkFailure, GroupEntry, StageOutput, VoicePrompt
from workers.semantic import SemanticPolicy

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SPANS_KEPT = 50_000  # forward-pass spans each replica remembers for stats()


def stage_device() -> torch.device:
    """The GPU Ray gave this actor (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


@dataclass(eq=False)  # identity: queued chunks are told apart by who they are, not by value
class _Pending:
    """A queued chunk and the future its group call awaits for it."""

    request: object
    upstream: StageOutput | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.perf_counter)

    def resolve(self, result: StageOutput | AudioOutput | ChunkFailure) -> None:
        """From the serving thread: the chunk's output, or its failure record."""

        def settle() -> None:
            if not self.future.done():
                self.future.set_result(result)

        self.loop.call_soon_threadsafe(settle)


class StageWorker:
    """Loads one stage's sub-model onto this actor's device and serves it from one thread."""

    stage: StageName
    upstream: StageName | None  # whose output each call consumes

    def __init__(self, model: ModelConfig, config: StageConfig, replica: int = 0) -> None:
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.config = config
        self.replica = replica
        self.device = stage_device()
        dtype = TORCH_DTYPES[config.dtype] if self.device.type == "cuda" else torch.float32
        self.settings = load_settings_for(model)
        self.model = load_stage_model(model, self.stage, self.device, dtype, "eager")
        self.dtype = dtype
        self._queue: BatchQueue[_Pending] = BatchQueue(config.max_wait_ms / 1000, self._length)
        # Built here, so a setting that cannot work (cuda_graphs without a GPU) fails at start-up.
        self._engine = self._build_engine()
        self._spans: deque[BatchRecord] = deque(maxlen=SPANS_KEPT)
        self._server: threading.Thread | None = None
        self.metrics = StageMetrics(self.stage, replica)
        self.chunks_received = 0  # chunks since start, for routing checks
        self.calls_received = 0  # group calls since start: how many calls carried those chunks
        with warnings.catch_warnings():  # Ray 2.60 reads its own deprecated actor_id inside this property
            warnings.simplefilter("ignore", DeprecationWarning)
            restarted = ray.get_runtime_context().was_current_actor_reconstructed
        if restarted:
            self.metrics.restarted()

    def placement(self) -> dict:
        """Where Ray put this actor: used by tests and logged at start-up."""
        context = ray.get_runtime_context()
        return {
            "stage": self.stage,
            "replica": self.replica,
            "node_id": context.get_node_id(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "pid": os.getpid(),
        }

    async def process_group(self, entries: list[GroupEntry], *inputs):
        """A group of chunks, each queued on its own; returns each chunk's output (a StageOutput,
        an AudioOutput, or a ChunkFailure) in order, as the call's ``num_returns`` outputs (one
        output itself, not a list, for a group of one). ``inputs``: the refs the entries index,
        resolved by Ray."""
        if self._server is None:
            self._server = threading.Thread(target=self._serve, name=f"{self.stage}-server", daemon=True)
            self._server.start()
        self.calls_received += 1
        outputs = await asyncio.gather(*(self._chunk(entry, inputs) for entry in entries))
        return outputs[0] if len(outputs) == 1 else outputs

    async def _chunk(self, entry: GroupEntry, inputs: tuple):
        """One chunk: ``upstream`` is the previous stage's output (all stages but semantic);
        ``history`` an earlier chunk's output of this stage to continue from (chained voices);
        ``voice`` the chunk's voice prompt, shipped once to the object store and resolved here
        from its ref rather than pickled into every request. A history overrides both voices.
        A failed upstream is passed on as it is; a failed history fails the chunk."""
        request = entry.request
        upstream = inputs[entry.upstream] if entry.upstream is not None else None
        history = inputs[entry.history] if entry.history is not None else None
        if isinstance(upstream, ChunkFailure):
            return upstream
        if isinstance(history, ChunkFailure):
            return ChunkFailure(key=request.key, error=f"{self.stage}: continues {history.key}, which failed")
        try:
            if history is not None:
                request = request.model_copy(update={"voice": self._voice_from(history)})
            elif entry.voice is not None:
                request = request.model_copy(update={"voice": inputs[entry.voice]})
        except Exception as exc:  # noqa: BLE001 - this chunk's inputs are bad: it fails alone
            return ChunkFailure(key=request.key, error=f"{self.stage}: {last_line(exc)}")
        loop = asyncio.get_running_loop()
        pending = _Pending(request, upstream, loop.create_future(), loop)
        self.metrics.chunk_received()
        self.chunks_received += 1
        self._queue.put(pending)
        return await pending.future

    def stats(self, since: float = 0.0) -> list[BatchRecord]:
        return [span for span in list(self._spans) if span.ended > since]

    def received(self) -> int:
        """How many chunks this replica was handed since it started (how the work was spread)."""
        return self.chunks_received

    def calls(self) -> int:
        """How many calls carried those chunks (fewer than the chunks where the driver groups them)."""
        return self.calls_received

    # -- the serving thread -------------------------------------------------

    def _build_engine(self) -> Engine:
        raise NotImplementedError

    @property
    def _by_length(self) -> bool:
        """Whether a batch gathers chunks of similar length (a continuous engine takes them in order)."""
        return True

    def _serve(self) -> None:
        """The one loop of every stage: admit what the engine has room for, step it, hand back
        what finished. An engine that raises fails the chunks inside it and starts clean."""
        inside: set[_Pending] = set()
        while True:
            engine = self._engine
            self._queue.fill(block=not engine.active, want=engine.room())
            admitted = self._queue.take(engine.room(), by_length=self._by_length)
            inside.update(admitted)
            started, clock = time.time(), time.perf_counter()
            try:
                finished = engine.admit([Admission(p, p.request, p.upstream.tokens if p.upstream else None) for p in admitted])
                if engine.active:
                    size = engine.active
                    finished += engine.step()
                    self._record(started, time.perf_counter() - clock, size, len(self._queue))
            except Exception as exc:  # a fault of the engine, not of one chunk: Ray reports it per chunk
                self._fail(list(inside), exc)
                inside.clear()
                self._engine = self._build_engine()
                continue
            inside.difference_update(f.handle for f in finished)
            self._finish(finished)

    def _length(self, pending: _Pending) -> int:
        """How much work a chunk is, for grouping: its input length."""
        return pending.upstream.tokens.shape[-1] if pending.upstream is not None else 0

    def _record(self, started: float, seconds: float, size: int, queued: int) -> None:
        """One forward pass (a batch, or a decode step): metrics, and a stats span, merged into
        the previous span when it just continues it with the same chunks."""
        self.metrics.batch(size, seconds)
        ended = time.time()
        last = self._spans[-1] if self._spans else None
        if last is not None and last.size == size and started - last.ended < 1e-3:
            self._spans[-1] = last.model_copy(update={"ended": ended, "steps": last.steps + 1})
            return
        self._spans.append(BatchRecord(stage=self.stage, replica=self.replica, started=started, ended=ended, size=size, queued=queued))

    def _finish(self, finished: list[Finished]) -> None:
        """Hands finished chunks back, or a failure record with their one-line error."""
        if not finished:
            return
        now = time.perf_counter()
        done = [f for f in finished if f.error is None]
        self.metrics.chunks_done(len(done), [now - f.handle.arrived for f in done])
        self.metrics.failure(len(finished) - len(done))
        for f in finished:
            pending: _Pending = f.handle
            if f.error is not None:
                pending.resolve(ChunkFailure(key=pending.request.key, error=f"{self.stage}: {f.error}"))
                continue
            output = self._output(pending.request, f.tokens, pending.upstream, f.seconds)
            if isinstance(output, AudioOutput):
                self.metrics.audio_seconds(len(output.audio) / output.sample_rate)
            pending.resolve(output)

    def _fail(self, pendings: list[_Pending], error: Exception) -> None:
        """The engine failed as a whole: each chunk inside it fails, with the engine's error."""
        self.metrics.failure(len(pendings))
        for p in pendings:
            p.resolve(ChunkFailure(key=p.request.key, error=f"{self.stage}: {last_line(error)}"))

    def _output(self, request, result, upstream: StageOutput | None, seconds: float) -> StageOutput:
        """This stage's tokens, with the chunk's earlier tokens carried along for chained voices."""
        carried: dict = {}
        timings = {self.stage: seconds}
        if upstream is not None:
            carried = {
                "semantic": upstream.semantic, "coarse": upstream.coarse, self.upstream: upstream.tokens,
                "ended_at_limit": upstream.ended_at_limit,
            }
            timings = {**upstream.timings, **timings}
        return StageOutput(key=request.key, tokens=result, timings=timings, **carried)

    def _voice_from(self, history: StageOutput) -> VoicePrompt:
        """A voice prompt made of an earlier chunk's tokens, as far as this stage reads them."""
        tokens = {"semantic": history.semantic, "coarse": history.coarse, self.stage: history.tokens}
        return VoicePrompt(
            name=history.key,
            semantic_prompt=_or_empty(tokens.get("semantic"), (0,)),
            coarse_prompt=_or_empty(tokens.get("coarse"), (self.settings.n_coarse_codebooks, 0)),
            fine_prompt=_or_empty(tokens.get("fine"), (self.settings.n_fine_codebooks, 0)),
        )


def _or_empty(tokens: np.ndarray | None, empty_shape: tuple) -> np.ndarray:
    return np.zeros(empty_shape, dtype=np.int64) if tokens is None else tokens


class _GptWorker(StageWorker):
    """A stage served by the slot engine."""

    @property
    def _by_length(self) -> bool:
        return not self.config.continuous

    def _gpt_engine(self, policy) -> GptEngine:
        c = self.config
        return GptEngine(self.model, policy, c.batch_size, c.attn_implementation, c.decode_compile, continuous=c.continuous)


@ray.remote
class SemanticWorker(_GptWorker):
    stage = "semantic"
    upstream = None

    def _build_engine(self) -> Engine:
        return self._gpt_engine(SemanticPolicy(self.model, self.settings))

    def _length(self, pending: _Pending) -> int:
        return len(pending.request.text_ids)

    def _output(self, request, result, upstream: None, seconds: float) -> StageOutput:
        """The semantic tokens, and whether the chunk ran to its length cap without ending (a retake sign)."""
        ended_at_limit = len(result) >= self._engine.policy.limit(request.sampling)
        return StageOutput(key=request.key, tokens=result, timings={self.stage: seconds}, ended_at_limit=ended_at_limit)


@ray.remote
class CoarseWorker(_GptWorker):
    stage = "coarse"
    upstream = "semantic"

    def _build_engine(self) -> Engine:
        return self._gpt_engine(CoarsePolicy(self.model, self.settings))


@ray.remote
class FineWorker(StageWorker):
    stage = "fine"
    upstream = "coarse"

    def _build_engine(self) -> Engine:
        return FineEngine(self.model, self.settings, self.config.batch_size, self.config.attn_implementation)

    def _length(self, pending: _Pending) -> int:
        """Fine work grows with the number of windows, not with frames."""
        return pending.upstream.tokens.shape[-1] // self.settings.fine.max_fine_history_length


@ray.remote
class CodecWorker(StageWorker):
    stage = "codec"
    upstream = "fine"

    def _build_engine(self) -> Engine:
        return CodecEngine(self.model, self.config.batch_size)

    def _output(self, request, result, upstream: StageOutput, seconds: float) -> AudioOutput:
        timings = {**upstream.timings, self.stage: seconds}
        return AudioOutput(
            key=request.key, audio=result, sample_rate=self.settings.sample_rate, timings=timings,
            ended_at_limit=upstream.ended_at_limit,
        )


WORKER_CLASSES = {
    "semantic": SemanticWorker,
    "coarse": CoarseWorker,
    "fine": FineWorker,
    "codec": CodecWorker,
}
