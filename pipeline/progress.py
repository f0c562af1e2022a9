"""Console progress: a live bar while the job runs, one summary line at the end.

tqdm draws the bar (it handles terminals, rates and ETA); ``quiet`` turns the
bar and the per-item lines off for logs, leaving errors and the summary.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tqdm import tqdm

SECONDS_PER_HOUR = 3600.0


@dataclass
class JobSummary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    chunks: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    stopped: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.stopped else 0

    @property
    def real_time_factor(self) -> float:
        """Audio seconds produced per wall second (higher is faster)."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def line(self) -> str:
        state = "stopped" if self.stopped else "done"
        return (
            f"{state}: {self.ok} ok, {self.failed} failed, {self.skipped} skipped; "
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
            disable=quiet,
            file=sys.stderr,
            dynamic_ncols=True,
            smoothing=0.05,
        )

    def item_done(self, item_id: str, audio_s: float, chunks: int) -> None:
        self.summary.ok += 1
        self.summary.chunks += chunks
        self.summary.audio_s += audio_s
        self._advance()
        self.echo(f"ok      {item_id}: {audio_s:.1f} s of audio in {chunks} chunks")

    def item_failed(self, item_id: str, reason: str) -> None:
        self.summary.failed += 1
        self._advance()
        # Failures are shown even in quiet mode: one line each.
        self.bar.write(f"FAILED  {item_id}: {reason}", file=sys.stderr)

    def item_skipped(self) -> None:
        self.summary.skipped += 1
        self._advance()

    def echo(self, line: str) -> None:
        if not self.quiet:
            self.bar.write(line)

    def _advance(self) -> None:
        self.bar.update(1)
        self.bar.set_postfix(
            chunks=self.summary.chunks, audio_h=f"{self.summary.audio_s / SECONDS_PER_HOUR:.3f}", refresh=False
        )

    def close(self, wall_s: float) -> JobSummary:
        self.summary.wall_s = wall_s
        self.bar.close()
        return self.summary
