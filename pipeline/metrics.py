"""The driver's Ray metrics: items finished, chunks in flight, audio written.

They complement the stage actors' ``workers.metrics.StageMetrics``: the stages
say where time goes, these say how far the job is. Ray exports them from the
driver's process like any actor's, with a ``ray_`` prefix (and ``_total`` on
counters): ``ray_bark_job_items_total{status="ok"}``.

A metric made before ``ray.init`` still works; only records made before it are
dropped, so the job may create its ``JobMetrics`` before Ray is started.
"""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

ITEM_STATUSES = ("ok", "failed", "skipped")

# One item is one text: a sentence on a GPU (well under a second) up to a long
# chapter on a CPU (hours).
ITEM_LATENCY_BOUNDARIES_S = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400]


class JobMetrics:
    """One narration job's progress as Ray metrics (several jobs in one process add up)."""

    def __init__(self) -> None:
        self._items = Counter(
            "bark_job_items",
            description="Items finished, by status: ok (written), failed, skipped (done by an earlier run).",
            tag_keys=("status",),
        )
        self._in_flight = Gauge(
            "bark_job_chunks_in_flight",
            description="Chunks submitted to the stages and not yet back: the scheduler's backpressure.",
        )
        self._audio = Counter("bark_job_audio_seconds", description="Seconds of audio written, silences included.")
        self._latency = Histogram(
            "bark_job_item_latency_seconds",
            description="Seconds from an item's admission to its files being written.",
            boundaries=ITEM_LATENCY_BOUNDARIES_S,
        )

    def item_done(self, status: str, audio_seconds: float = 0.0, latency_s: float | None = None) -> None:
        """An item finished with ``status`` (ok / failed / skipped), its audio and its latency."""
        if status not in ITEM_STATUSES:
            raise ValueError(f"item status {status!r} is not one of {', '.join(ITEM_STATUSES)}")
        self._items.inc(tags={"status": status})
        if audio_seconds > 0:
            self._audio.inc(float(audio_seconds))
        if latency_s is not None:
            self._latency.observe(max(0.0, float(latency_s)))

    def chunks_in_flight(self, n: int) -> None:
        """Sets the number of chunks inside the stages now."""
        self._in_flight.set(max(0, int(n)))
