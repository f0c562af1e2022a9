"""Subtitles (SRT and WebVTT) from where each chunk landed in the final audio.

A chunk is up to ~13 s of speech, too long for one readable cue, so a long
chunk's text is cut into pieces (at sentence or clause marks when one is near
the end of a piece, else between words) and its time span is shared among them
in proportion to their characters: the speech rate is roughly constant within a
chunk. Times are written rounded down to the millisecond, so a cue never ends
after the audio does and cues stay in order.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_LINES = 2  # per cue: the usual limit for readable subtitles
SENTENCE_MARKS = tuple(".!?…。！？")
CLAUSE_MARKS = tuple(",;:—–，、；：")
CLOSERS = "\"')]}»”’"  # may follow a mark: `"Stop!"` still ends a sentence
# A piece is cut at a mark only if the mark is at least this far into it, so a
# mark near the start does not leave a two-word cue behind.
MIN_PIECE_FILL = 0.5
_VTT_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}  # `-->` and tags cannot appear in a cue


class Cue(BaseModel):
    """One subtitle: its text (lines joined by newlines) shown from start_s to end_s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    text: str

    @model_validator(mode="after")
    def _in_order(self) -> Cue:
        if self.end_s < self.start_s:
            raise ValueError(f"cue ends ({self.end_s}) before it starts ({self.start_s})")
        return self


def cues_from_chunks(
    chunks: list[tuple[float, float, str]], max_chars_per_cue: int = 84, max_line_chars: int = 42
) -> list[Cue]:
    """Cues for chunks given as (start_s, end_s, text) in audio order.

    Each chunk gives one or more cues that share its span; a chunk that overlaps
    the next one (a crossfade) ends where the next begins, so cues never overlap.
    Blank chunks give no cue.
    """
    if max_line_chars < 1 or max_chars_per_cue < 1:
        raise ValueError("max_chars_per_cue and max_line_chars must be positive")
    _check_order(chunks)
    cues = []
    for i, (start, end, text) in enumerate(chunks):
        if i + 1 < len(chunks):
            end = min(end, chunks[i + 1][0])
        pieces = _pieces(text.split(), max_chars_per_cue, max_line_chars)
        total = sum(len(_joined(piece)) for piece in pieces)
        done = 0
        for piece in pieces:
            piece_start = start + (end - start) * done / total
            done += len(_joined(piece))
            piece_end = end if done == total else start + (end - start) * done / total
            cues.append(Cue(start_s=piece_start, end_s=piece_end, text="\n".join(_lines(piece, max_line_chars))))
    return cues


def _check_order(chunks: list[tuple[float, float, str]]) -> None:
    for i, (start, end, _) in enumerate(chunks):
        if not 0 <= start <= end:
            raise ValueError(f"chunk {i}: span {start}..{end} is not an interval of non-negative times")
        if i and start < chunks[i - 1][0]:
            raise ValueError(f"chunk {i}: starts at {start}, before chunk {i - 1} ({chunks[i - 1][0]})")


def _pieces(words: list[str], max_chars: int, max_line: int) -> list[list[str]]:
    """Words grouped into cue-sized pieces, cut at a late sentence (else clause) mark if any."""
    words = [part for word in words for part in _hard_split(word, min(max_line, max_chars))]
    pieces, current = [], []
    for word in words:
        while current and not _fits(current + [word], max_chars, max_line):
            cut = _cut_point(current)
            pieces.append(current[:cut])
            current = current[cut:]
        current.append(word)
    if current:
        pieces.append(current)
    return pieces


def _hard_split(word: str, limit: int) -> list[str]:
    """A word longer than a line (CJK text has no spaces) in line-sized parts."""
    return [word[i : i + limit] for i in range(0, len(word), limit)]


def _cut_point(words: list[str]) -> int:
    """How many words of ``words`` make the next piece: up to a late mark, else all."""
    length = len(_joined(words))
    for marks in (SENTENCE_MARKS, CLAUSE_MARKS):
        for cut in range(len(words) - 1, 0, -1):
            if words[cut - 1].rstrip(CLOSERS).endswith(marks) and len(_joined(words[:cut])) >= MIN_PIECE_FILL * length:
                return cut
    return len(words)


def _fits(words: list[str], max_chars: int, max_line: int) -> bool:
    return len(_joined(words)) <= max_chars and _two_lines(words, max_line) is not None


def _lines(words: list[str], max_line: int) -> list[str]:
    lines = _two_lines(words, max_line)
    return lines if lines is not None else [_joined(words)]


def _two_lines(words: list[str], max_line: int) -> list[str] | None:
    """One line if it fits, else the most balanced split into two that fit; None if impossible."""
    if len(_joined(words)) <= max_line:
        return [_joined(words)]
    best = None
    for cut in range(1, len(words)):
        lines = [_joined(words[:cut]), _joined(words[cut:])]
        longest = max(map(len, lines))
        if longest <= max_line and (best is None or longest < max(map(len, best))):
            best = lines
    return best


def _joined(words: list[str]) -> str:
    return " ".join(words)


def to_srt(cues: list[Cue]) -> str:
    """SubRip: numbered blocks ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` and text, blank line between."""
    blocks = [
        f"{n}\n{_timestamp(cue.start_s, ',')} --> {_timestamp(cue.end_s, ',')}\n{cue.text}\n"
        for n, cue in enumerate(cues, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(cues: list[Cue]) -> str:
    """WebVTT: a ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` and escaped text per cue."""
    blocks = ["WEBVTT\n"] + [
        f"{_timestamp(cue.start_s, '.')} --> {_timestamp(cue.end_s, '.')}\n{_vtt_escape(cue.text)}\n"
        for cue in cues
    ]
    return "\n".join(blocks)


def _timestamp(seconds: float, decimal_mark: str) -> str:
    """Rounded down to the millisecond (a tiny epsilon absorbs float error such as 1.001 * 1000)."""
    millis = math.floor(seconds * 1000 + 1e-6)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_mark}{millis:03d}"


def _vtt_escape(text: str) -> str:
    return "".join(_VTT_ESCAPES.get(ch, ch) for ch in text)
