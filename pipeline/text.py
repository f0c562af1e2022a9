"""Text front end: normalise a text and cut it into chunks Bark can speak.

Bark speaks at its best for ~13 s and silently truncates text over 256 tokens,
so every chunk must fit a character budget (a proxy for speaking time) and a
token budget (the hard model limit) at once. Chunks follow the text's own
structure: whole sentences first, then clauses, then words; a single word
longer than the budget is the only thing ever cut in the middle.

Chunks are consecutive slices of the normalised text, so nothing is dropped or
reordered: joining the chunk texts with single spaces gives back the
normalised text wherever chunk boundaries fall on spaces (always, for text
whose words and sentences are separated by spaces).

The sentence splitter is a small regex one; the interface (``split_sentences``,
``make_chunks``) is what the rest of the pipeline relies on.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

# Invisible characters that only get in the tokenizer's way. Zero-width
# (non-)joiners stay: some scripts need them.
_INVISIBLE = {"\u00ad", "\u200b", "\u2060", "\ufeff"}

_CLOSERS = "\"'”’»)\\]}」』）】〉》"
_SENTENCE_END = re.compile(
    rf"(?P<cjk>[。！？]+[{_CLOSERS}]*)"  # CJK: no space needed after the mark
    rf"|(?P<latin>[.!?…]+[{_CLOSERS}]*)(?=\s|$)"
)
# Words that end in a period without ending the sentence.
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st mt vs fig figs vol approx dept inc ltd co "
    "jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt capt rev hon".split()
)
_DOTTED_ABBREVIATION = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # e.g, i.e, U.S, a.m
# Clause marks, cut after: , ; : — – only before a space (not 3,000, 10:30 or
# 1990–2000: cuts stay between words); CJK marks anywhere, CJK has no spaces.
_CLAUSE_END = re.compile(r"[,;:—–](?=\s)|[，、；：]")
_WORD_START = re.compile(r"(?<=\s)\S")


@dataclass(frozen=True)
class TextChunk:
    index: int
    text: str
    n_tokens: int


def normalize_text(text: str) -> str:
    """NFC, no control or invisible characters, single spaces between words.

    Everything Bark reads as a cue stays as written: ``[laughs]``, ``♪``,
    ``—``, ``...``, CAPS.
    """
    text = unicodedata.normalize("NFC", text)
    kept = (
        " " if ch.isspace() else ch
        for ch in text
        if ch.isspace() or (unicodedata.category(ch) != "Cc" and ch not in _INVISIBLE)
    )
    return " ".join("".join(kept).split())


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, stripped, in order."""
    return [text[start:end].strip() for start, end in _spans(text, 0, len(text), _sentence_cuts)]


def make_chunks(
    text: str, count_tokens: Callable[[str], int], max_chars: int, max_tokens: int
) -> list[TextChunk]:
    """Pack the normalised ``text`` into chunks within both budgets.

    Consecutive sentences share a chunk while they fit; a sentence that does
    not fit alone is packed from its clauses, a clause from its words, and a
    word from its characters (the only mid-word cut). ``count_tokens`` is
    asked about every candidate chunk, so no chunk ever exceeds ``max_tokens``.
    """
    if max_chars < 1 or max_tokens < 1:
        raise ValueError("max_chars and max_tokens must be at least 1")
    normalized = normalize_text(text)
    budget = _Budget(count_tokens, max_chars, max_tokens)
    spans = _pack(normalized, (0, len(normalized)), _SPLITTERS, budget)
    chunks = []
    for index, (start, end) in enumerate(spans):
        chunk_text = normalized[start:end].strip()
        chunks.append(TextChunk(index, chunk_text, budget.measure(chunk_text)))
    return chunks


class _Budget:
    """Both limits, with token counts remembered (the tokenizer is the slow part)."""

    def __init__(self, count_tokens: Callable[[str], int], max_chars: int, max_tokens: int):
        self._count_tokens = count_tokens
        self.max_chars = max_chars
        self.max_tokens = max_tokens
        self._counts: dict[str, int] = {}

    def measure(self, text: str) -> int:
        if text not in self._counts:
            self._counts[text] = self._count_tokens(text)
        return self._counts[text]

    def fits(self, text: str) -> bool:
        return len(text) <= self.max_chars and self.measure(text) <= self.max_tokens


Span = tuple[int, int]


def _pack(text: str, span: Span, splitters: tuple, budget: _Budget) -> list[Span]:
    """Greedily merge the pieces of ``span`` into fitting spans, splitting finer where needed."""
    split, finer = splitters[0], splitters[1:]
    packed: list[Span] = []
    current: Span | None = None
    for piece in _spans(text, *span, split):
        if not budget.fits(text[piece[0] : piece[1]].strip()):
            if current:
                packed.append(current)
                current = None
            if not finer:
                raise ValueError(
                    f"the character {text[piece[0]:piece[1]]!r} alone exceeds the token budget"
                )
            packed.extend(_pack(text, piece, finer, budget))
        elif current is None:
            current = piece
        elif budget.fits(text[current[0] : piece[1]].strip()):
            current = (current[0], piece[1])
        else:
            packed.append(current)
            current = piece
    if current:
        packed.append(current)
    return packed


def _spans(text: str, start: int, end: int, cuts: Callable[[str], list[int]]) -> list[Span]:
    """Non-blank pieces of ``text[start:end]`` between the cut points ``cuts`` finds."""
    part = text[start:end]
    bounds = [0, *sorted(c for c in set(cuts(part)) if 0 < c < len(part)), len(part)]
    return [(start + a, start + b) for a, b in zip(bounds, bounds[1:]) if part[a:b].strip()]


def _sentence_cuts(text: str) -> list[int]:
    cuts = []
    for match in _SENTENCE_END.finditer(text):
        if match.group("latin") and not _ends_latin_sentence(text, match):
            continue
        cuts.append(match.end())
    return cuts


def _ends_latin_sentence(text: str, match: re.Match) -> bool:
    """False for 'Dr. Smith', 'e.g. this', 'J. R. R. Tolkien' and '... and then'."""
    following = text[match.end() :].lstrip()
    if following[:1].islower():
        return False
    if match.group("latin").rstrip(_CLOSERS) != ".":
        return True
    before = text[: match.start()].split()
    word = before[-1].lstrip("\"'“‘«([{") if before else ""
    is_initial = len(word) == 1 and word.isupper()
    return not (
        word.lower() in ABBREVIATIONS or is_initial or _DOTTED_ABBREVIATION.fullmatch(word)
    )


def _clause_cuts(text: str) -> list[int]:
    return [m.end() for m in _CLAUSE_END.finditer(text)]


def _word_cuts(text: str) -> list[int]:
    return [m.start() for m in _WORD_START.finditer(text)]


def _character_cuts(text: str) -> list[int]:
    """Every position except inside a character and its combining marks or a ZWJ sequence."""
    return [
        i
        for i in range(1, len(text))
        if not unicodedata.combining(text[i])
        and unicodedata.category(text[i]) not in ("Mn", "Mc", "Me")
        and "\u200d" not in (text[i], text[i - 1])
        and not 0xFE00 <= ord(text[i]) <= 0xFE0F  # variation selectors
    ]


_SPLITTERS = (_sentence_cuts, _clause_cuts, _word_cuts, _character_cuts)
