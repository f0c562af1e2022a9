"""Per-stage figures from the pipeline's forward-pass spans, and the benchmark's plot.

A span (``pipeline.records.BatchRecord``) is one forward pass of a static
stage, or one stretch of decode steps with unchanged membership of a
continuous stage: ``size`` chunks stepped ``steps`` times between ``started``
and ``ended``, with ``queued`` chunks waiting in the replica when it began.
"""

from __future__ import annotations

from collections.abc import Sequence

STAGES = ("semantic", "coarse", "fine", "codec")


def _clipped(span, start: float, end: float) -> float:
    return max(0.0, min(span.ended, end) - max(span.started, start))


def stage_summary(spans: Sequence, replicas: dict[str, int], start: float, end: float) -> dict[str, dict]:
    """For each stage over [start, end] (unix seconds): busy seconds (summed over replicas),
    busy fraction (of replicas x wall), forward passes, mean and largest batch (chunks per
    pass, weighted by steps), and the time-weighted mean and largest queue depth."""
    wall = max(end - start, 1e-9)
    summary = {}
    for stage in STAGES:
        mine = [s for s in spans if s.stage == stage and _clipped(s, start, end) > 0]
        busy = sum(_clipped(s, start, end) for s in mine)
        steps = sum(s.steps for s in mine)
        duration = sum(s.ended - s.started for s in mine)
        summary[stage] = {
            "replicas": replicas.get(stage, 1),
            "busy_s": round(busy, 3),
            "busy_fraction": round(busy / (wall * replicas.get(stage, 1)), 4),
            "spans": len(mine),
            "passes": steps,
            "mean_batch": round(sum(s.size * s.steps for s in mine) / steps, 2) if steps else 0.0,
            "max_batch": max((s.size for s in mine), default=0),
            "mean_queue": round(sum(s.queued * (s.ended - s.started) for s in mine) / duration, 2) if duration else 0.0,
            "max_queue": max((s.queued for s in mine), default=0),
        }
    return summary


def utilisation_series(
    spans: Sequence, replicas: dict[str, int], start: float, end: float, bins: int = 60
) -> dict[str, list[float]]:
    """Busy fraction of each stage (over its replicas) in ``bins`` equal slices of [start, end];
    also ``t``: each slice's midpoint in seconds from ``start``."""
    width = max(end - start, 1e-9) / bins
    series: dict[str, list[float]] = {"t": [round((i + 0.5) * width, 4) for i in range(bins)]}
    for stage in STAGES:
        busy = [0.0] * bins
        for span in (s for s in spans if s.stage == stage):
            first = max(0, int((span.started - start) / width))
            last = min(bins - 1, int((span.ended - start) / width))
            for i in range(first, last + 1):
                lo = start + i * width
                busy[i] += _clipped(span, lo, lo + width)
        series[stage] = [round(b / (width * replicas.get(stage, 1)), 4) for b in busy]
    return series


def write_plot(path, results: dict) -> None:
    """Two panels: throughput against chunks in flight (pipeline, with the two baselines as
    lines), and each stage's busy fraction over time in the headline pipeline run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    runs = results["pipeline"]["runs"]
    flights = [r["in_flight"] for r in runs]
    left.plot(flights, [r["audio_s_per_wall_s"] for r in runs], "o-", color="C0", label="(c) this pipeline")
    for key, style, label in (("sequential", ":", "(a) transformers, 1 at a time"), ("batched", "--", None)):
        base = results["baselines"].get(key)
        if base:
            left.axhline(
                base["audio_s_per_wall_s"],
                linestyle=style,
                color="C1" if key == "sequential" else "C2",
                label=label or f"(b) transformers, {base['batch_size']} per batch",
            )
    left.set_xscale("log", base=2)
    left.set_xticks(flights, [str(f) for f in flights])
    left.set_xlabel("chunks in flight")
    left.set_ylabel("audio seconds per wall second")
    left.set_ylim(bottom=0)
    left.set_title("throughput")
    left.legend(loc="best", fontsize=8)

    headline = results["pipeline"]["headline"]
    series = headline["utilisation"]
    for i, stage in enumerate(STAGES):
        right.plot(series["t"], series[stage], color=f"C{i}", label=stage)
    right.set_xlabel("seconds since first submit")
    right.set_ylabel("busy fraction (of replicas)")
    right.set_ylim(0, 1.05)
    right.set_title(f"stage utilisation, {headline['in_flight']} chunks in flight")
    right.legend(loc="best", fontsize=8)

    machine = results["machine"]
    fig.suptitle(
        f"Bark {results['size']} ({results['semantic_tokens']} semantic tokens/chunk, {results['chunks']} chunks) "
        f"on {machine['device_name']}, {results['date']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
