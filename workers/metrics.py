"""Per-stage Ray metrics: what each stage actor has done, how busy it is, what waits.

Each stage actor makes one ``StageMetrics``. Ray's metrics agent on every node
collects them from the actor's process and serves them in the Prometheus text
format (``ray start --metrics-export-port=N`` or ``ray.init(_metrics_export_port=N)``),
which is what the Ray dashboard's Grafana panels read. Ray adds a ``ray_`` prefix
to every name and a ``_total`` suffix to counters, so ``bark_stage_chunks_done``
is scraped as ``ray_bark_stage_chunks_done_total{stage=..., replica=...}``.

Counters rather than gauges for anything that accumulates (chunks, seconds,
steps): Prometheus turns them into rates, so stage utilisation is
``rate(ray_bark_stage_busy_seconds_total[1m])`` and throughput is the rate of
chunks or audio seconds, and a restarted actor, whose new process starts a new
series from zero, does not look like work undone. Ray (2.60) rebuilds each
histogram from its bucket counts with every observation at its bucket's
midpoint: bucket counts are exact, a histogram's ``_sum`` only roughly so, which
is one more reason the exact totals are counters.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ray.util.metrics import Counter, Gauge, Histogram

TAG_KEYS = ("stage", "replica")

# Powers of two: batch sizes are usually configured as such, and each bucket then
# tells exactly how full the configured batch was.
BATCH_SIZE_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
# Arrival at the actor to result, from a codec pass on a GPU (~10 ms) to a long
# coarse run waiting behind a full queue on a CPU (minutes).
LATENCY_BOUNDARIES_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 600]


class StageMetrics:
    """The metrics of one replica of one stage, tagged ``stage`` and ``replica``.

    Every method is cheap enough to call once per batch. Outside Ray (before
    ``ray.init``) records are dropped silently, so a stage used without Ray works.
    """

    def __init__(self, stage: str, replica: int) -> None:
        self.stage = stage
        self.replica = int(replica)
        tags = {"stage": str(stage), "replica": str(self.replica)}

        def counter(name: str, description: str) -> Counter:
            return Counter(name, description=description, tag_keys=TAG_KEYS).set_default_tags(tags)

        self._received = counter("bark_stage_chunks_received", "Chunks that arrived at this stage replica.")
        self._done = counter("bark_stage_chunks_done", "Chunks this stage replica finished.")
        self._failed = counter("bark_stage_chunks_failed", "Chunks that failed in this stage replica.")
        self._busy = counter(
            "bark_stage_busy_seconds",
            "Seconds spent in forward passes; its rate is the replica's utilisation (0..1).",
        )
        self._steps = counter(
            "bark_stage_decode_steps",
            "Forward passes (decode steps for the autoregressive stages, windows or passes for the others).",
        )
        self._audio = counter("bark_stage_audio_seconds", "Seconds of audio produced (codec stage).")
        self._restarts = counter("bark_stage_restarts", "Times Ray restarted this stage actor after it died.")
        self._queue = Gauge(
            "bark_stage_queue_depth",
            description="Chunks waiting in this stage replica, arrived but not yet finished.",
            tag_keys=TAG_KEYS,
        ).set_default_tags(tags)
        self._batch_size = Histogram(
            "bark_stage_batch_size",
            description="Chunks per forward-pass span: how full the batches are.",
            boundaries=BATCH_SIZE_BOUNDARIES,
            tag_keys=TAG_KEYS,
        ).set_default_tags(tags)
        self._latency = Histogram(
            "bark_stage_chunk_latency_seconds",
            description="Seconds from a chunk's arrival at this stage replica to its result.",
            boundaries=LATENCY_BOUNDARIES_S,
            tag_keys=TAG_KEYS,
        ).set_default_tags(tags)
        # Drives the queue-depth gauge when the actor does not count its queue itself;
        # a lock because an actor with a batching thread calls from two threads.
        self._lock = threading.Lock()
        self._depth = 0
        self._queue.set(0)

    def chunk_received(self) -> None:
        """A chunk arrived: it waits here until ``chunks_done`` or ``failure``."""
        self._received.inc()
        with self._lock:
            self._depth += 1
            self._queue.set(self._depth)

    def queue_depth(self, n: int) -> None:
        """Sets the number of chunks waiting here, for an actor that knows its queue exactly."""
        with self._lock:
            self._depth = max(0, int(n))
            self._queue.set(self._depth)

    def batch(self, size: int, seconds: float, steps: int = 1) -> None:
        """One forward-pass span over ``size`` chunks that took ``seconds`` and ``steps`` passes."""
        if size > 0:
            self._batch_size.observe(int(size))
        if seconds > 0:
            self._busy.inc(float(seconds))
        if steps > 0:
            self._steps.inc(int(steps))

    def chunks_done(self, n: int, latency_s: Sequence[float]) -> None:
        """``n`` chunks finished; ``latency_s``: each one's seconds from arrival to result."""
        if n > 0:
            self._done.inc(int(n))
        for seconds in latency_s:
            self._latency.observe(max(0.0, float(seconds)))
        self._leave(n)

    def audio_seconds(self, seconds: float) -> None:
        """Seconds of audio this replica produced (the codec stage's throughput)."""
        if seconds > 0:
            self._audio.inc(float(seconds))

    def failure(self, n: int = 1) -> None:
        """``n`` chunks failed here (they leave the queue too)."""
        if n > 0:
            self._failed.inc(int(n))
        self._leave(n)

    def restarted(self) -> None:
        """Ray restarted this actor after its process died (``was_current_actor_reconstructed``)."""
        self._restarts.inc()

    def _leave(self, n: int) -> None:
        with self._lock:
            self._depth = max(0, self._depth - max(0, int(n)))
            self._queue.set(self._depth)
