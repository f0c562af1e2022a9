"""The four Ray actors, one per Bark stage, each hosting only its own sub-model.

The driver calls ``process`` once per chunk with the previous stage's output
ref as an argument: Ray resolves it in this process, so tokens travel actor to
actor and never through the driver. Each actor is an async actor: calls only
queue their chunk and wait, while one worker thread owns the model and forms
batches from whatever is queued:

- fine and codec gather up to ``batch_size`` chunks (waiting at most
  ``max_wait_ms`` for a partial batch to fill), picking chunks of similar
  length together;
- semantic and coarse (``continuous: true``) decode in slots: a finished chunk
  leaves at once and a queued one is prefilled into its slot between steps.

Every chunk keeps its own sampler and seed, so its tokens never depend on what
it was batched with.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import ray
import torch

from workers.config import ModelConfig, StageConfig, StageName
from workers.records import (
    AudioOutput,
    BatchRecord,
    CodecRequest,
    CoarseRequest,
    FineRequest,
    SemanticRequest,
    StageOutput,
    VoicePrompt,
)
from workers.checkpoints import load_settings_for, load_stage_model
from workers.coarse import CoarseEngine, generate_coarse
from workers.codec import decode_audio
from workers.fine import generate_fine
from workers.metrics import StageMetrics
from workers.semantic import SemanticEngine, generate_semantic

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SPANS_KEPT = 50_000  # forward-pass spans each replica remembers for stats()


def stage_device() -> torch.device:
    """The GPU Ray gave this actor (it sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")


@dataclass(eq=False)  # identity: queued chunks are told apart by who they are, not by value
class _Pending:
    """A queued chunk and the future its ``process`` call awaits."""

    request: object
    upstream: StageOutput | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrived: float = field(default_factory=time.perf_counter)

    def resolve(self, result=None, error: BaseException | None = None) -> None:
        def settle() -> None:
            if self.future.done():
                return
            if error is None:
                self.future.set_result(result)
            else:
                self.future.set_exception(error)

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
        self._inbox: queue.Queue[_Pending] = queue.Queue()
        self._spans: deque[BatchRecord] = deque(maxlen=SPANS_KEPT)
        self._server: threading.Thread | None = None
        self.metrics = StageMetrics(self.stage, replica)
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

    async def process(self, request, upstream: StageOutput | None = None, history: StageOutput | None = None):
        """One chunk: ``upstream`` is the previous stage's output (all stages but semantic);
        ``history`` an earlier chunk's output of this stage to continue from (chained voices)."""
        if history is not None:
            request = request.model_copy(update={"voice": self._voice_from(history)})
        loop = asyncio.get_running_loop()
        pending = _Pending(request, upstream, loop.create_future(), loop)
        if self._server is None:
            self._server = threading.Thread(target=self._serve, name=f"{self.stage}-server", daemon=True)
            self._server.start()
        self.metrics.chunk_received()
        self._inbox.put(pending)
        return await pending.future

    def stats(self, since: float = 0.0) -> list[BatchRecord]:
        return [span for span in list(self._spans) if span.ended > since]

    # -- the serving thread -------------------------------------------------

    def _serve(self) -> None:
        waiting: deque[_Pending] = deque()
        while True:
            self._take(waiting, block=not waiting)
            batch = self._choose(waiting)
            started = time.time()
            clock = time.perf_counter()
            try:
                results = self._compute([p.request for p in batch], [p.upstream.tokens for p in batch] if self.upstream else [])
            except Exception as exc:  # the batch's calls fail; Ray reports it to the driver per chunk
                self._fail(batch, exc)
                continue
            seconds = time.perf_counter() - clock
            self._record(started, seconds, len(batch), len(waiting))
            self._finish([(p, result, seconds / len(batch)) for p, result in zip(batch, results)])

    def _take(self, waiting: deque[_Pending], *, block: bool) -> None:
        """Moves queued chunks into ``waiting``; when blocking, waits for one and then up to
        ``max_wait_ms`` more for a full batch."""
        if block:
            waiting.append(self._inbox.get())
            deadline = time.perf_counter() + self.config.max_wait_ms / 1000
            while len(waiting) < self.config.batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    waiting.append(self._inbox.get(timeout=remaining))
                except queue.Empty:
                    break
        while True:
            try:
                waiting.append(self._inbox.get_nowait())
            except queue.Empty:
                return

    def _choose(self, waiting: deque[_Pending]) -> list[_Pending]:
        """The oldest chunk and the waiting chunks closest to it in length, up to a batch."""
        oldest = waiting[0]
        size = self._length(oldest)
        nearest = sorted(range(len(waiting)), key=lambda i: (abs(self._length(waiting[i]) - size), i))
        chosen = set(nearest[: self.config.batch_size])
        batch = [p for i, p in enumerate(waiting) if i in chosen]
        for p in batch:
            waiting.remove(p)
        return batch

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

    def _finish(self, finished: list[tuple[_Pending, object, float]]) -> None:
        """Hands finished chunks back: ``(pending, result, compute seconds of this chunk)``."""
        if not finished:
            return
        now = time.perf_counter()
        self.metrics.chunks_done(len(finished), [now - p.arrived for p, _, _ in finished])
        for p, result, seconds in finished:
            output = self._output(p.request.key, result, p.upstream, seconds)
            if isinstance(output, AudioOutput):
                self.metrics.audio_seconds(len(output.audio) / output.sample_rate)
            p.resolve(output)

    def _fail(self, pendings: list[_Pending], error: Exception) -> None:
        self.metrics.failure(len(pendings))
        for p in pendings:
            p.resolve(error=error)

    def _compute(self, requests: list, inputs: list) -> list:
        raise NotImplementedError

    def _output(self, key: str, result, upstream: StageOutput | None, seconds: float) -> StageOutput:
        """This stage's tokens, with the chunk's earlier tokens carried along for chained voices."""
        carried: dict = {}
        timings = {self.stage: seconds}
        if upstream is not None:
            carried = {"semantic": upstream.semantic, "coarse": upstream.coarse, self.upstream: upstream.tokens}
            timings = {**upstream.timings, **timings}
        return StageOutput(key=key, tokens=result, timings=timings, **carried)

    def _voice_from(self, history: StageOutput) -> VoicePrompt:
        """A voice prompt made of an earlier chunk's tokens, as far as this stage reads them."""
        tokens = {"semantic": history.semantic, "coarse": history.coarse, self.stage: history.tokens}
        return VoicePrompt(
            name=history.key,
            semantic_prompt=_or_empty(tokens.get("semantic"), (0,)),
            coarse_prompt=_or_empty(tokens.get("coarse"), (self.settings.coarse.n_coarse_codebooks, 0)),
            fine_prompt=_or_empty(tokens.get("fine"), (self.settings.fine.n_fine_codebooks, 0)),
        )


class ContinuousWorker(StageWorker):
    """An autoregressive stage that decodes in slots (continuous batching)."""

    def __init__(self, model: ModelConfig, config: StageConfig, replica: int = 0) -> None:
        super().__init__(model, config, replica)
        # Built here, so a setting that cannot work (cuda_graphs without a GPU) fails at start-up.
        self._first_engine = self._engine() if config.continuous else None

    def _engine(self):
        raise NotImplementedError

    def _admit(self, engine, handles: list[_Pending]) -> list:
        raise NotImplementedError

    def _serve(self) -> None:
        if not self.config.continuous:
            return super()._serve()
        engine, self._first_engine = self._first_engine, None
        waiting: deque[_Pending] = deque()
        while True:
            self._take(waiting, block=not waiting and not engine.active)
            started = time.time()
            clock = time.perf_counter()
            admitted = [waiting.popleft() for _ in range(min(len(engine.free), len(waiting)))]
            try:
                finished = self._admit(engine, admitted) if admitted else []
                if engine.active:
                    size = engine.active
                    finished += engine.step()
                    self._record(started, time.perf_counter() - clock, size, len(waiting))
            except Exception as exc:  # every chunk in the slots fails with it; the engine starts clean
                in_slots = [row.handle for row in engine.rows.values()]
                self._fail(admitted + [p for p in in_slots if p not in admitted], exc)
                engine = self._engine()
                continue
            self._finish(finished)


def _or_empty(tokens: np.ndarray | None, empty_shape: tuple) -> np.ndarray:
    return np.zeros(empty_shape, dtype=np.int64) if tokens is None else tokens


@ray.remote
class SemanticWorker(ContinuousWorker):
    stage = "semantic"
    upstream = None

    def _compute(self, requests: list[SemanticRequest], _inputs: list) -> list:
        return generate_semantic(self.model, self.settings, requests)

    def _engine(self) -> SemanticEngine:
        return SemanticEngine(self.model, self.settings, self.config.batch_size, self.config.attn_implementation, self.config.decode_compile)

    def _admit(self, engine: SemanticEngine, handles: list[_Pending]) -> list:
        return engine.admit(handles, [p.request for p in handles])

    def _length(self, pending: _Pending) -> int:
        return len(pending.request.text_ids)


@ray.remote
class CoarseWorker(ContinuousWorker):
    stage = "coarse"
    upstream = "semantic"

    def _compute(self, requests: list[CoarseRequest], semantic: list) -> list:
        return generate_coarse(self.model, self.settings, requests, semantic)

    def _engine(self) -> CoarseEngine:
        return CoarseEngine(self.model, self.settings, self.config.batch_size, self.config.attn_implementation, self.config.decode_compile)

    def _admit(self, engine: CoarseEngine, handles: list[_Pending]) -> list:
        return engine.admit(handles, [p.request for p in handles], [p.upstream.tokens for p in handles])


@ray.remote
class FineWorker(StageWorker):
    stage = "fine"
    upstream = "coarse"

    def _compute(self, requests: list[FineRequest], coarse: list) -> list:
        return generate_fine(self.model, self.settings, requests, coarse, self.config.attn_implementation)

    def _length(self, pending: _Pending) -> int:
        """Fine work grows with the number of 1024-frame windows, not with frames."""
        return pending.upstream.tokens.shape[-1] // self.settings.fine.max_fine_history_length


@ray.remote
class CodecWorker(StageWorker):
    stage = "codec"
    upstream = "fine"

    def _compute(self, requests: list[CodecRequest], fine: list) -> list:
        return decode_audio(self.model, fine)

    def _output(self, key: str, result, upstream: StageOutput, seconds: float) -> AudioOutput:
        timings = {**upstream.timings, self.stage: seconds}
        return AudioOutput(key=key, audio=result, sample_rate=self.settings.sample_rate, timings=timings)


WORKER_CLASSES = {
    "semantic": SemanticWorker,
    "coarse": CoarseWorker,
    "fine": FineWorker,
    "codec": CodecWorker,
}
