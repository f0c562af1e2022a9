"""Console progress: a live bar while the job runs, per-item lines, one summary line at the end.

tqdm draws the bar on stderr, and only on a terminal (in a pipe or a job log it
would be a stream of carriage returns). Per-item lines go to stderr too, so
stdout carries nothing but the summary line that scripts parse. ``quiet``
turns the bar and the ok lines off, leaving failures and the summary. Every
id and reason is printed through :func:`pipeline.console.for_console`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tqdm import tqdm

from pipeline.console import for_console

SECONDS_PER_HOUR = 3600.0
# Failures recorded by earlier runs are listed one per line up to this many, then counted.
EARLIER_FAILURES_LISTED = 20


@dataclass
class JobSummary:
    """What one run did to the items of its input.

    ``ok``: narrated and written by this run. ``failed``: failed in the output
    now, by this run or as recorded by an earlier one (``failed_earlier`` of
    them, not retried). ``skipped``: done and ok by an earlier run, unchanged.
    ``changed``: redone because what shapes the item's audio changed since its
    last run (counted again in ``ok`` or ``failed``, whichever it became).
    """

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    changed: int = 0
    failed_earlier: int = 0
    books_failed: int = 0  # audiobooks not made (a chapter failed, or the book's own step did)
    chunks: int = 0
    audio_s: float = 0.0
    retakes: int = 0  # chunks made again because a take was implausible (pipeline.retakes), counted per take
    implausible: int = 0  # chunks kept though implausible: their last retake was too
    wall_s: float = 0.0
    stopped: bool = False
    aborted: bool = False

    @property
    def exit_code(self) -> int:
        """0 only when every item of the input is done and ok in the output (and every audiobook
        asked for is made); else 1."""
        return 1 if self.failed or self.books_failed or self.stopped or self.aborted else 0

    @property
    def real_time_factor(self) -> float:
        """Audio seconds produced per wall second (higher is faster)."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        state = "aborted" if self.aborted else "stopped" if self.stopped else "done"
        return (
            f"{state}: {self.ok} ok, {self.failed} failed, {self.skipped} skipped, {self.changed} changed; "
            f"{self.audio_s / SECONDS_PER_HOUR:.3f} h of audio ({self.audio_s:.1f} s) in {self.wall_s:.1f} s, "
            f"{self.real_time_factor:.2f}x real time{self._retakes()}"
        )

    def _retakes(self) -> str:
        if not (self.retakes or self.implausible):
            return ""
        kept = f", {self.implausible} chunks kept implausible" if self.implausible else ""
        return f"; {self.retakes} retakes{kept}"


@dataclass
class ProgressCounts:
    """How far the run is, in items, chunks and audio, as the bar shows it.

    Chunks are planned item by item as the input is read, so until it is read to
    its end the chunk total is not known. Where the item total is (a folder, a
    local dataset, an EPUB's chapters), the chunks still to come are estimated at
    the mean of the items planned so far; otherwise the bar gives no total and no
    ETA. Chunks an earlier run finished, and items done earlier, are not counted:
    the rate and the ETA are this run's.
    """

    items_total: int | None = None  # items in the input, where cheap to know; exact once it is read
    items_read: int = 0
    items_done: int = 0  # settled by this run: ok, failed (now or earlier), skipped
    items_planned: int = 0  # items with chunks for this run to narrate
    chunks_planned: int = 0  # their chunks, as planned
    chunks_dropped: int = 0  # chunks of items that failed before all were done: never narrated
    chunks_done: int = 0
    audio_s: float = 0.0  # finished items' audio plus the chunks back of unfinished ones
    input_read: bool = False

    def chunks_expected(self) -> float | None:
        """The chunks this run narrates: exact once the input is read, else estimated (None: unknown)."""
        known = self.chunks_planned - self.chunks_dropped
        if self.input_read:
            return known
        if self.items_total is None or not self.items_planned:
            return None
        unread = max(0, self.items_total - self.items_read)
        return known + unread * self.chunks_planned / self.items_planned

    @property
    def estimated(self) -> bool:
        return not self.input_read


def bar_layout(counts: ProgressCounts) -> tuple[str, int | None, str]:
    """The bar's description, total (chunks) and tqdm format: items done of total first, then
    chunks done of expected (``~`` while estimated) with the percentage, the audio made, and tqdm's
    elapsed time, ETA (from its smoothed chunk rate) and rate."""
    items = f"items {counts.items_done}/{counts.items_total if counts.items_total is not None else '?'}"
    audio = f"{format_audio(counts.audio_s)} of audio"
    total = counts.chunks_expected()
    if total is None:
        planned = counts.chunks_planned - counts.chunks_dropped
        return items, None, f"{{desc}} | chunks {{n_fmt}} of {planned}+ | {audio} [{{elapsed}}, {{rate_fmt}}]"
    approx = "~" if counts.estimated else ""
    layout = f"{{desc}} | chunks {{n_fmt}}/{approx}{{total_fmt}} {{percentage:3.0f}}%|{{bar}}| {audio} [{{elapsed}}<{{remaining}}, {{rate_fmt}}]"
    return items, max(round(total), counts.chunks_done), layout


def format_audio(seconds: float) -> str:
    """``41.7 s`` under a minute, ``12m05s`` under an hour, then ``3h02m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class Progress:
    """The bar counts chunks (the unit of work, so a one-item book moves too), with items done of
    the input's total and the audio made beside it; the per-item lines and the summary as before."""

    def __init__(self, *, quiet: bool, total_items: int | None = None) -> None:
        self.quiet = quiet
        self.summary = JobSummary()
        self.counts = ProgressCounts(items_total=total_items)
        self._open: dict[str, tuple[int, float]] = {}  # item id -> (its chunks not back yet, audio of those back)
        self.bar = tqdm(
            total=None,
            unit="chunk",
            disable=quiet or not _is_terminal(sys.stderr),
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.05,
        )
        self._layout()

    # ------------------------------------------------------------------ chunks

    def item_read(self) -> None:
        """One more item came from the input (counted whatever becomes of it)."""
        self.counts.items_read += 1

    def narration_started(self) -> None:
        """The stage actors are up: the bar's clock starts here, so Ray's start-up and model loading
        count in neither the chunk rate nor the ETA."""
        self.bar.reset(total=self.bar.total)  # nothing is narrated before: the count stays 0
        self._layout(refresh=True)

    def input_read(self) -> None:
        """The input is read to its end: the item and chunk totals are exact from now on."""
        self.counts.input_read = True
        self.counts.items_total = self.counts.items_read
        self._layout(refresh=True)

    def item_planned(self, item_id: str, chunks: int) -> None:
        """An item is admitted with ``chunks`` for this run to narrate (those an earlier run finished not counted)."""
        self.counts.items_planned += 1
        self.counts.chunks_planned += chunks
        self._open[item_id] = (chunks, 0.0)
        self._layout(refresh=True)

    def chunk_done(self, item_id: str, audio_s: float) -> None:
        """A chunk of an item with several is back (its part written); one of a failed item is not counted."""
        if item_id not in self._open:
            return
        left, audio = self._open[item_id]
        self._open[item_id] = (left - 1, audio + audio_s)
        self.counts.chunks_done += 1
        self.counts.audio_s += audio_s
        self._layout()
        self.bar.update(1)

    def _close_item(self, item_id: str | None, *, ok: bool, audio_s: float = 0.0) -> None:
        """An item settled: an ok one's chunks not counted yet (a one-chunk item's) are done, and its written
        audio replaces its chunks' (silences and trim included); a failed one's never come."""
        left, chunks_audio = self._open.pop(item_id, (0, 0.0))
        self.counts.items_done += 1
        if ok:
            self.counts.chunks_done += left
            self.counts.audio_s += audio_s - chunks_audio
            if left:
                self.bar.update(left)
        else:
            self.counts.chunks_dropped += left
            self.counts.audio_s -= chunks_audio
        self._layout(refresh=True)

    # ------------------------------------------------------------------ items

    def item_done(self, item_id: str, audio_s: float, chunks: int, *, changed: str | None = None) -> None:
        self.summary.ok += 1
        self.summary.chunks += chunks
        self.summary.audio_s += audio_s
        self._close_item(item_id, ok=True, audio_s=audio_s)
        redone = f" (redone: {changed} changed)" if changed else ""
        self.echo(f"ok      {item_id}: {audio_s:.1f} s of audio in {chunks} chunks{redone}")

    def item_failed(self, item_id: str, reason: str, *, repeat: bool = False) -> None:
        """``repeat``: a repeated id, failed on the console only; the item it repeats is left running."""
        self.summary.failed += 1
        self._close_item(None if repeat else item_id, ok=False)
        # Failures are shown even in quiet mode: one line each.
        self._write(f"FAILED  {item_id}: {reason}")

    def item_failed_earlier(self, item_id: str, reason: str | None) -> None:
        """An item an earlier run recorded as failed, not retried: it is still failed in the output."""
        self.summary.failed += 1
        self.summary.failed_earlier += 1
        self._close_item(item_id, ok=False)
        if self.summary.failed_earlier <= EARLIER_FAILURES_LISTED:
            self._write(f"FAILED  {item_id}: {reason or 'no reason recorded'} (recorded by an earlier run)")

    def book_done(self, line: str) -> None:
        self.echo(f"book    {line}")

    def book_failed(self, book_id: str, reason: str) -> None:
        """An audiobook not made: one line, shown even in quiet mode."""
        self.summary.books_failed += 1
        self._write(f"FAILED  book {book_id}: {reason}")

    def chunk_retaken(self, item_id: str, index: int, take: int, reason: str) -> None:
        """A take of a chunk was implausible and it is being made again (take ``take`` is next)."""
        self.summary.retakes += 1
        self.echo(f"retake  {item_id}: chunk {index} made again (take {take}): {reason}")

    def chunk_kept_implausible(self, item_id: str, index: int, reason: str) -> None:
        """A chunk's last retake was implausible too: it is kept, and its metadata says why."""
        self.summary.implausible += 1
        self.echo(f"note    {item_id}: chunk {index} kept after all retakes, still implausible: {reason}")

    def item_changed(self) -> None:
        self.summary.changed += 1

    def item_skipped(self) -> None:
        self.summary.skipped += 1
        self._close_item(None, ok=True)

    def echo(self, line: str) -> None:
        if not self.quiet:
            self._write(line)

    def _write(self, line: str) -> None:
        self.bar.write(for_console(line), file=sys.stderr)

    def _layout(self, *, refresh: bool = False) -> None:
        desc, total, layout = bar_layout(self.counts)
        self.bar.total = total
        self.bar.bar_format = layout
        self.bar.set_description_str(desc, refresh=refresh)

    def close(self, wall_s: float) -> JobSummary:
        """Ends the bar; says how to retry failures that earlier runs recorded."""
        self.summary.wall_s = wall_s
        self._layout()
        self.bar.close()
        earlier = self.summary.failed_earlier
        if earlier:
            unlisted = earlier - EARLIER_FAILURES_LISTED
            more = f" ({unlisted} not listed above; see manifest.jsonl)" if unlisted > 0 else ""
            self._write(
                f"{earlier} item{'s' if earlier != 1 else ''} failed in an earlier run and "
                f"{'were' if earlier != 1 else 'was'} not retried{more}: rerun with --retry-failed to retry them"
            )
        return self.summary


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
