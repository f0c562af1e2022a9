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
            f"{self.real_time_factor:.2f}x real time"
        )


class Progress:
    """Items finished as the bar's count; chunks and audio hours in its postfix."""

    def __init__(self, *, quiet: bool, total_items: int | None = None) -> None:
        self.quiet = quiet
        self.summary = JobSummary()
        self.bar = tqdm(
            total=total_items,
            unit="item",
            disable=quiet or not _is_terminal(sys.stderr),
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def item_done(self, item_id: str, audio_s: float, chunks: int, *, changed: str | None = None) -> None:
        self.summary.ok += 1
        self.summary.chunks += chunks
        self.summary.audio_s += audio_s
        self._advance()
        redone = f" (redone: {changed} changed)" if changed else ""
        self.echo(f"ok      {item_id}: {audio_s:.1f} s of audio in {chunks} chunks{redone}")

    def item_failed(self, item_id: str, reason: str) -> None:
        self.summary.failed += 1
        self._advance()
        # Failures are shown even in quiet mode: one line each.
        self._write(f"FAILED  {item_id}: {reason}")

    def item_failed_earlier(self, item_id: str, reason: str | None) -> None:
        """An item an earlier run recorded as failed, not retried: it is still failed in the output."""
        self.summary.failed += 1
        self.summary.failed_earlier += 1
        self._advance()
        if self.summary.failed_earlier <= EARLIER_FAILURES_LISTED:
            self._write(f"FAILED  {item_id}: {reason or 'no reason recorded'} (recorded by an earlier run)")

    def book_done(self, line: str) -> None:
        self.echo(f"book    {line}")

    def book_failed(self, book_id: str, reason: str) -> None:
        """An audiobook not made: one line, shown even in quiet mode."""
        self.summary.books_failed += 1
        self._write(f"FAILED  book {book_id}: {reason}")

    def item_changed(self) -> None:
        self.summary.changed += 1

    def item_skipped(self) -> None:
        self.summary.skipped += 1
        self._advance()

    def echo(self, line: str) -> None:
        if not self.quiet:
            self._write(line)

    def _write(self, line: str) -> None:
        self.bar.write(for_console(line), file=sys.stderr)

    def _advance(self) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            chunks=self.summary.chunks, audio_h=f"{self.summary.audio_s / SECONDS_PER_HOUR:.3f}", refresh=False
        )

    def close(self, wall_s: float) -> JobSummary:
        """Ends the bar; says how to retry failures that earlier runs recorded."""
        self.summary.wall_s = wall_s
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
