"""How ``bark-pipeline plan`` shows a :class:`~pipeline.plan.JobPlan`: aligned text for people, JSON for tools.

Ids and texts pass through :func:`pipeline.console.escape_controls`, as every
line of the command does, so an input cannot write to the terminal.
"""

from __future__ import annotations

from dataclasses import asdict

from pipeline.console import escape_controls
from pipeline.plan import LISTED_ITEMS, ItemLine, JobPlan
from pipeline.planner import ItemPlan
from pipeline.speech_time import describe_pace, estimate_speech_seconds, pace

RANDOM_VOICE = "random"  # how the table shows an item with no voice


def chunk_lines(plan: ItemPlan) -> list[str]:
    """Every chunk of one item: ``id #index  tokens  estimated seconds  text``, aligned within the item."""
    keys = [f"{escape_controls(plan.item.id)} #{chunk.index}" for chunk in plan.chunks]
    width = max(len(key) for key in keys)
    return [
        f"{key:<{width}}  {chunk.n_tokens:>3} tok  {estimate_speech_seconds(chunk.text, plan.language):4.1f} s  "
        f"{escape_controls(chunk.text)}"
        for key, chunk in zip(keys, plan.chunks)
    ]


def text_lines(report: JobPlan) -> list[str]:
    lines = [
        f"plan: {report.items_read} {_plural(report.items_read, 'item')} read: {report.planned} to narrate "
        f"in {report.chunks} {_plural(report.chunks, 'chunk')}, {len(report.rejected)} would fail",
        "(no model loaded: the checkpoint's tokenizer and constants only; what an output already holds is not looked at)",
    ]
    if report.planned:
        many = report.planned > LISTED_ITEMS
        rows = report.worst if many else report.listed
        lines += ["", f"items with most chunks ({len(rows)} of {report.planned}):" if many else "items:"]
        lines += _table(
            ["item", "chunks", "longest chunk", "characters", "speech", "audio", "language", "voice"],
            [_item_row(line) for line in rows]
            + [["total", str(report.chunks), _tokens(report.longest_chunk.tokens), str(report.chars),
                _duration(report.speech_s), _duration(report.audio_s), "", ""]],
            right=(1, 2, 3, 4, 5),
        )
    if report.longest_chunk is not None:
        chunk = report.longest_chunk
        lines.append(
            f"longest chunk: {chunk.tokens} tokens (text.max_tokens: {report.max_tokens}), "
            f"{escape_controls(chunk.item_id)} #{chunk.index}"
        )
    if report.rejected:
        lines += ["", f"would fail ({len(report.rejected)}):"]
        width = max(len(escape_controls(r.id)) for r in report.rejected)
        lines += [f"  {escape_controls(r.id):<{width}}  {escape_controls(r.reason)}" for r in report.rejected]
    lines += ["", *_estimates(report)]
    return lines


def _estimates(report: JobPlan) -> list[str]:
    pauses = report.audio_s - report.speech_s
    lines = [
        f"audio: about {_duration(report.audio_s)} ({_duration(report.speech_s)} of speech, {_duration(pauses)} "
        "of pauses between chunks)"
    ]
    if report.languages:
        paces = ", ".join(describe_pace(language) for language in sorted(report.languages))
        lines.append(f"speech estimated at narration pace per language: {paces} (pipeline/speech_time.py)")
    estimate = report.estimate
    if estimate is None:
        lines.append(f"wall time: no estimate: {report.no_estimate or 'nothing to narrate'}")
        return lines
    slowest = estimate.bottleneck
    lines.append(
        f"wall time: about {_duration(estimate.seconds)} on {report.device} (an estimate: the {slowest.stage} stage "
        "bounds it; start-up and model loading not counted)"
    )
    lines += _table(
        ["stage", "replicas", "at batch", "audio s/s each", "audio s/s", ""],
        [[r.stage, str(r.replicas), str(r.batch), f"{r.per_replica:g}", f"{r.total:.4g}", "slowest" if r is slowest else ""]
         for r in estimate.rates],
        right=(1, 2, 3, 4),
    )
    labels = dict.fromkeys(r.record.label() for r in estimate.rates)
    lines.append(f"  rates measured by bench/engines.py: {'; '.join(labels)}")
    return lines


def json_report(report: JobPlan) -> dict:
    estimate = report.estimate
    return {
        "items_read": report.items_read,
        "planned": report.planned,
        "chunks": report.chunks,
        "tokens": report.tokens,
        "characters": report.chars,
        "speech_s": round(report.speech_s, 2),
        "audio_s": round(report.audio_s, 2),
        "speech_pace": {
            language: {"unit": pace(language).unit, "per_second": round(pace(language).per_second, 3), "items": n}
            for language, n in sorted(report.languages.items())
        },
        "items": [_item_json(line) for line in report.listed[:LISTED_ITEMS]],
        "most_chunks": [_item_json(line) for line in report.worst],
        "max_tokens": report.max_tokens,
        "longest_chunk": asdict(report.longest_chunk) if report.longest_chunk else None,
        "failures": [asdict(r) for r in report.rejected],
        "device": report.device,
        "wall_time": None if estimate is None else {
            "seconds": round(estimate.seconds, 1),
            "bottleneck": estimate.bottleneck.stage,
            "stages": {
                r.stage: {"replicas": r.replicas, "batch": r.batch, "audio_s_per_s": r.per_replica, "rates": r.record.label()}
                for r in estimate.rates
            },
        },
        "no_wall_time": report.no_estimate if estimate is None else None,
        **({"chunk_list": [asdict(c) for c in report.chunk_lines]} if report.chunk_lines is not None else {}),
    }


def _item_json(line: ItemLine) -> dict:
    return {**asdict(line), "speech_s": round(line.speech_s, 2), "audio_s": round(line.audio_s, 2)}


def _item_row(line: ItemLine) -> list[str]:
    return [escape_controls(line.id), str(line.chunks), _tokens(line.longest_tokens), str(line.chars),
            _duration(line.speech_s), _duration(line.audio_s), line.language, escape_controls(line.voice or RANDOM_VOICE)]


def _table(headers: list[str], rows: list[list[str]], right: tuple[int, ...]) -> list[str]:
    """Columns as wide as their widest cell; the ``right`` ones right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def _tokens(n: int) -> str:
    return f"{n} tok"


def _plural(n: int, word: str) -> str:
    return word if n == 1 else f"{word}s"


def _duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest:02d} min"
