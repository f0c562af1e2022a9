"""Subtitles (SRT and WebVTT) from where each chunk landed in the final audio.

A chunk is up to ~13 s of speech, too long for one readable cue, so its text is
cut into cues of at most ``max_lines`` lines of ``max_line_chars`` (or
``max_line_chars_wide`` in Chinese, Japanese and Korean, whose characters are
full-width). The cuts are chosen for the whole chunk at once, preferring, in
order, sentence ends, clause ends and word boundaries (the text front end's own
cuts, see ``pipeline.text.text_cuts``), and fewer, evenly filled cues. Chinese
and Japanese have no spaces, so a cut between two of their characters must also
be a break that BudouX (Google's line-break segmenter, a small model per
language) allows: words such as そして or 海面 are never split. Only a word longer
than a line is cut between characters. No cue or line starts with closing
punctuation (``。``, ``」``, ``,``, ``)``) or ends with an opening bracket.

A chunk's time span is shared among its cues in proportion to their characters:
the speech rate is roughly constant within a chunk, so every cue of a chunk has
that chunk's reading speed. A chunk whose audio is too short for its text at
``max_cps`` therefore gives cues over that speed; they still cover exactly its
span (moving them into a neighbour's time would show words before or after they
are spoken), and :func:`count_too_fast` counts them for the item's metadata.
Times are written rounded down to the millisecond, so a cue never ends after
the audio does and cues stay in order.
"""

from __future__ import annotations

import bisect
import math
import unicodedata
from functools import cache

import budoux
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.config import SubtitlesConfig
from pipeline.languages import detect_language
from pipeline.text import CLOSERS, OPENERS, has_no_spaces, text_cuts

# What a cut may fall at, best first, and what each costs a layout (a cue costs
# CUE_COST): a cut at a sentence end is free, a clause end nearly so, a cut
# between words costs more than an extra cue, and one inside a word (only ever
# inside a word longer than a line) far more.
CUT_COSTS = {"sentence": 0.0, "clause": 0.5, "word": 2.0, "grapheme": 6.0}
CUE_COST = 1.0
# A line break inside a cue costs this share of the same cut between cues: cutting
# inside a word is as bad on a line as between cues.
LINE_CUT_COST_SHARE = 0.5
# Weight of a cue's unused room (squared fraction): evens out cue lengths without
# ever costing a cue.
SLACK_COST = 0.5
# A line break after a sentence or clause end beats a more even one between words
# while its longer line is at most a fifth of a line longer (a word cut one step,
# a cut inside a word two).
LINE_CUT_STEPS = {"sentence": 0, "clause": 0, "word": 1, "grapheme": 2}
LINE_SLACK_DIVISOR = 5
OVERFULL_COST = 1000.0  # a piece that fits no cue: only when no allowed cut is left
# May not start a cue or a line: closing brackets and quotes, marks that end a
# sentence or clause, and the Japanese characters that may not start a line
# (small kana, the long-vowel and iteration marks). Straight quotes close when
# glued to the word before them (see _starts_closed).
NO_START = frozenset(
    CLOSERS.replace('"', "").replace("'", "")
    + ".,;:!?…‥%‰°、。，．！？：；・‐〜～ー々ゝゞヽヾ〻"
    + "ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ"
)
STRAIGHT_QUOTES = "\"'"
_WIDE = ("W", "F")  # East Asian Width: full-width characters
_TRADITIONAL_CHINESE = ("zh-tw", "zh-hk", "zh-mo", "zh-hant")
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

    @property
    def cps(self) -> float:
        """Reading speed: characters (a line break counts as the space it replaces) per second."""
        duration = self.end_s - self.start_s
        return len(self.text) / duration if duration > 0 else math.inf


def cues_from_chunks(
    chunks: list[tuple[float, float, str]], style: SubtitlesConfig = SubtitlesConfig(), language: str = "auto"
) -> list[Cue]:
    """Cues for chunks given as (start_s, end_s, text) in audio order.

    Each chunk gives one or more cues that share its span; a chunk that overlaps
    the next one (a crossfade) ends where the next begins, so cues never overlap.
    Blank chunks give no cue. ``language`` (the item's) picks the sentence rules
    and the segmenter; "auto" guesses it per chunk.
    """
    _check_order(chunks)
    cues = []
    for i, (start, end, text) in enumerate(chunks):
        if i + 1 < len(chunks):
            end = min(end, chunks[i + 1][0])
        texts = chunk_cue_texts(text, style, language)
        total = sum(map(len, texts))
        done = 0
        for cue_text in texts:
            cue_start = start + (end - start) * done / total
            done += len(cue_text)
            cue_end = end if done == total else start + (end - start) * done / total
            cues.append(Cue(start_s=cue_start, end_s=cue_end, text=cue_text))
    return cues


def count_too_fast(cues: list[Cue], max_cps: float) -> int:
    """How many cues are faster than ``max_cps``: their chunk's audio is short for its text."""
    return sum(cue.cps > max_cps for cue in cues)


def chunk_cue_texts(text: str, style: SubtitlesConfig, language: str = "auto") -> list[str]:
    """The texts of one chunk's cues (lines joined by newlines), in order; none for a blank chunk."""
    text = " ".join(text.split())
    if not text:
        return []
    if language == "auto":
        language = detect_language(text)
    limit = style.max_line_chars_wide if is_wide(text) else style.max_line_chars
    return _Layout(text, language, limit, style.max_lines).cues()


def is_wide(text: str) -> bool:
    """Whether most of ``text``'s characters are full-width (Chinese, Japanese, Korean)."""
    letters = [ch for ch in text if not ch.isspace()]
    return 2 * sum(unicodedata.east_asian_width(ch) in _WIDE for ch in letters) > len(letters)


def segmenter_breaks(text: str, language: str) -> set[int] | None:
    """Where BudouX allows a line break in ``text`` (offsets), or None when it has no model
    for the text (no Chinese or Japanese in it)."""
    parser = _parser(_segmenter_language(text, language))
    if parser is None:
        return None
    phrases = parser.parse(text)
    if "".join(phrases) != text:  # BudouX keeps every character; if not, trust nothing it says
        return set()
    bounds = [0]
    for phrase in phrases:
        bounds.append(bounds[-1] + len(phrase))
    return set(bounds[1:-1])


def _segmenter_language(text: str, language: str) -> str | None:
    language = language.lower()
    has_kana = any("\u3040" <= ch <= "\u30ff" or "\uff66" <= ch <= "\uff9f" for ch in text)
    if language.startswith("ja") or has_kana:
        return "ja"
    if not any(has_no_spaces(ch) for ch in text):
        return None
    return "zh-hant" if language in _TRADITIONAL_CHINESE else "zh-hans"


@cache
def _parser(segmenter_language: str | None) -> budoux.Parser | None:
    loaders = {
        "ja": budoux.load_default_japanese_parser,
        "zh-hans": budoux.load_default_simplified_chinese_parser,
        "zh-hant": budoux.load_default_traditional_chinese_parser,
    }
    return loaders[segmenter_language]() if segmenter_language else None


class _Layout:
    """One chunk's text cut into cues and lines: the allowed cuts, then the cheapest cover."""

    def __init__(self, text: str, language: str, limit: int, max_lines: int):
        self.text, self.limit, self.max_lines = text, limit, max_lines
        self.kinds = self._allowed_cuts(language)  # offset -> best kind of cut there
        self.points = sorted(self.kinds)

    def _allowed_cuts(self, language: str) -> dict[int, str]:
        text = self.text
        found = text_cuts(text, language)
        breaks = segmenter_breaks(text, language)
        kinds: dict[int, str] = {}
        for kind in ("grapheme", "word", "clause", "sentence"):  # a better kind overwrites
            for cut in found[kind]:
                cut = _skip_spaces(text, cut)
                if kind == "grapheme" or cut >= len(text) or not self._allowed(cut, breaks):
                    continue
                kinds[cut] = kind
        words = sorted({0, len(text), *kinds})
        for start, end in zip(words, words[1:]):  # a word longer than a line: cut between characters
            if len(self.text[start:end].rstrip()) > self.limit:
                for cut in found["grapheme"]:
                    if start < cut < end and self._allowed(cut, None):
                        kinds.setdefault(cut, "grapheme")
        return kinds

    def _allowed(self, cut: int, breaks: set[int] | None) -> bool:
        text = self.text
        before = text[:cut].rstrip()
        if not before or _starts_closed(text, cut) or _ends_open(before):
            return False
        glued = not text[cut - 1].isspace()
        if glued and breaks is not None and (has_no_spaces(text[cut - 1]) or has_no_spaces(text[cut])):
            return cut in breaks  # between CJK characters: only where the segmenter breaks
        return True

    def cues(self) -> list[str]:
        """The cheapest cover of the text by cues, as cue texts (dynamic programming over the cuts)."""
        ends = [*self.points, len(self.text)]
        starts = [0, *self.points]
        best = [(0.0, -1)]  # per position in starts+end: (cost of the text before it, previous position)
        for j, end in enumerate(ends, start=1):
            options = []
            for i in range(j - 1, -1, -1):
                start = starts[i]
                length = len(self.text[start:end].strip())
                if i < j - 1 and length > self.max_lines * (self.limit + 1):
                    break
                options.append((best[i][0] + self._cost(start, end, length), i))
            best.append(min(options))
        bounds, j = [], len(ends)
        while j > 0:
            i = best[j][1]
            bounds.append((starts[i], ends[j - 1]))
            j = i
        return ["\n".join(self._lines(start, end)) for start, end in reversed(bounds)]

    def _cost(self, start: int, end: int, length: int) -> float:
        capacity = self.max_lines * self.limit
        cost = CUE_COST + (CUT_COSTS[self.kinds[end]] if end < len(self.text) else 0.0)
        layout = self._split_lines(start, end)
        if layout is None:
            return cost + OVERFULL_COST
        if layout[1] is not None:
            cost += LINE_CUT_COST_SHARE * CUT_COSTS[self.kinds[layout[1]]]
        return cost + SLACK_COST * (max(capacity - length, 0) / capacity) ** 2

    def _lines(self, start: int, end: int) -> list[str]:
        layout = self._split_lines(start, end)
        return layout[0] if layout is not None else [self.text[start:end].strip()]

    def _split_lines(self, start: int, end: int) -> tuple[list[str], int | None] | None:
        """One line if it fits, else the most even two (see LINE_CUT_STEPS), with the line break's
        offset (None for one line); None if neither fits."""
        whole = self.text[start:end].strip()
        if len(whole) <= self.limit:
            return [whole], None
        if self.max_lines < 2:
            return None
        low = bisect.bisect_right(self.points, start)
        high = bisect.bisect_left(self.points, end)
        best, best_key = None, None
        for cut in self.points[low:high]:
            lines = [self.text[start:cut].strip(), self.text[cut:end].strip()]
            longest = max(map(len, lines))
            kind = self.kinds[cut]
            key = (longest + LINE_CUT_STEPS[kind] * (self.limit // LINE_SLACK_DIVISOR), CUT_COSTS[kind])
            if longest <= self.limit and (best_key is None or key < best_key):
                best, best_key = (lines, cut), key
        return best


def _skip_spaces(text: str, cut: int) -> int:
    while cut < len(text) and text[cut].isspace():
        cut += 1
    return cut


def _starts_closed(text: str, cut: int) -> bool:
    """Whether the text from ``cut`` starts with closing punctuation."""
    ch = text[cut]
    if ch in NO_START:
        return True
    if ch in STRAIGHT_QUOTES and not text[cut - 1].isspace():  # glued to the word before: it closes it
        return True
    return False


def _ends_open(before: str) -> bool:
    """Whether ``before`` (no trailing space) ends with an opening bracket or quote."""
    ch = before[-1]
    if ch in STRAIGHT_QUOTES:
        return len(before) == 1 or before[-2].isspace()  # after a space it opens the next word
    return ch in OPENERS


def _check_order(chunks: list[tuple[float, float, str]]) -> None:
    for i, (start, end, _) in enumerate(chunks):
        if not 0 <= start <= end:
            raise ValueError(f"chunk {i}: span {start}..{end} is not an interval of non-negative times")
        if i and start < chunks[i - 1][0]:
            raise ValueError(f"chunk {i}: starts at {start}, before chunk {i - 1} ({chunks[i - 1][0]})")


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
