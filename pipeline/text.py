"""Text front end: normalise a text and cut it into chunks Bark can speak.

Bark speaks at its best for ~13 s and silently truncates text over 256 tokens,
so every chunk must fit a speech budget (seconds of speech, estimated per
language by :mod:`pipeline.speech_time`) and a token budget (the hard model
limit) at once. Chunks follow the text's own structure: whole sentences first,
then clauses, then words. Pieces are packed up to the speech *target*; a single
piece over it stays whole up to the speech *maximum*, and one over that is split
finer. The speech budget gives way to a single word (or cue) longer than the
maximum; the token budget never does, so a word over it is the only thing ever
cut in the middle.

Structure: a blank line separates paragraphs and a form feed ``"\\f"`` (the
classic page/section-break character) separates chapters. Sources put the form
feeds there (a Markdown heading, an EPUB chapter); ``normalize_text`` keeps both
in a canonical form (``"\\n\\n"`` between paragraphs, ``"\\f"`` between chapters)
and no chunk ever spans either, so the assembler can give each its own pause.

Chunks are slices of the normalised text, so nothing is dropped or reordered:
the chunk texts, joined, equal the normalised text up to whitespace.

Sentences come from ``sentencex`` (Wikimedia's multilingual splitter), with a
few repairs where it errs: see ``_sentence_cuts``.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

import sentencex

from pipeline.languages import detect_language
from pipeline.speech_time import MAX_SPEECH_S, TARGET_SPEECH_S, cumulative_units, pace

PARAGRAPH_BREAK = "\n\n"
CHAPTER_BREAK = "\f"

BreakKind = Literal["sentence", "paragraph", "chapter", "end"]

# Invisible characters that only get in the tokenizer's way. Zero-width
# (non-)joiners stay: some scripts need them.
_INVISIBLE = {"\u00ad", "\u200b", "\u2060", "\ufeff"}
_NEWLINES = re.compile(r"\r\n?|[\x0b\x85\u2028]")  # every other way to end a line
_BLANK_LINE = re.compile(r"\n[^\S\f]*\n")  # \n, whitespace other than \f, \n

# A Bark cue such as [laughs], [clears throat] or [MAN]: one word, never cut inside.
CUE = re.compile(r"\[[^\W\d_](?:[^\W\d_]|[ '-]){0,30}\]")

CLOSERS = "\"'”’»)\\]}」』）】〉》〕］｝"
OPENERS = "\"'“‘«([{¿¡「『（【〈《〔［｛"
# Terminators that end a sentence even with no space after them.
_HARD_TERMINATORS = "。！？｡．।॥"
# sentencex misses an end like "(Really?) Then"; these are the candidates it may miss.
_CLOSED_END = re.compile(rf"[.!?‽]+[{re.escape(CLOSERS)}]+(?=\s)")
# Japanese quotation particles: 「行こう！」と言った is one sentence.
_QUOTATIVE = ("と", "って")
_LEADING_NOISE = re.compile(rf"(?:\s|{CUE.pattern}|[^\w\s])*")

# Words that end in a period without ending the sentence. Titles apply in every
# language (a Chinese text may say "Mr. Smith"); the rest per language.
_TITLES = "mr mrs ms dr prof sr jr st vs"
ABBREVIATIONS: dict[str, frozenset[str]] = {
    lang: frozenset((_TITLES + " " + extra).split())
    for lang, extra in {
        "en": "mt fig figs vol no approx dept inc ltd co jan feb mar apr jun jul aug sep sept oct nov dec "
        "gen col lt sgt capt rev hon",
        "de": "bzw ca evtl ggf hr hrn frl nr usw vgl",
        "fr": "mme mlle mgr",
        "es": "sra srta dra ud uds",
        "it": "sig sigra dott dottssa avv",
        "pl": "hab mgr inż nr ul godz tzw np",
        "pt": "sra srta dra",
        "tr": "av doç yrd",
        "ru": "г ул д тов",
        "hi": "डॉ श्री श्रीमती प्रो",
    }.items()
}
_DEFAULT_ABBREVIATIONS = frozenset(_TITLES.split())
_DOTTED_ABBREVIATION = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # e.g, i.e, U.S, a.m, т.е; not 3.14
# Characters on each side of a candidate sentence end that decide it: longer than
# any abbreviation, title or run of closing marks that the rules look at.
_SENTENCE_CONTEXT_CHARS = 100

# List enumerators and bullets: "1.", "2)", "a)", "(iv)", "IV.", "•", "-". Each belongs to the
# start of the item it numbers: a chunk that ended in "1." would have Bark say "one" and pause.
ENUMERATOR = re.compile(r"\(?(?:\d{1,3}|[^\W\d_]|[ivxlcdm]{2,7}|[IVXLCDM]{2,7})[.)]|[•‣◦⁃∙▪●■*-]")
# An enumerator that may start a list item: a word of its own, or right after CJK punctuation.
_ENUMERATOR_AT = re.compile(rf"(?:(?<!\S)|(?<=[。！？：；]))(?:{ENUMERATOR.pattern})(?=\s)")
# Before a list: a lead-in clause ("... are met: 1.", closing marks may follow the colon), or
# a CJK full stop, which always ends a sentence ("第一条。2.").
_LEAD_IN = re.compile(rf"[:;：；。！？][{re.escape(CLOSERS)}]*$")
# A sentence end that sentencex may not propose: before a lowercase item ("notices. b) It").
# Not before a letter and a period ("z. B.", "U. S."): only a real sentence end starts that item.
_END_BEFORE_ITEM = re.compile(rf"[.!?‽](?=\s+(?![^\W\d_]\.)(?:{ENUMERATOR.pattern})\s)")

# Clause marks, cut after: , ; : — – only before a space (not 3,000, 10:30 or
# 1990–2000: cuts stay between words); CJK marks anywhere, CJK has no spaces.
_CLAUSE_END = re.compile(r"[,;:—–](?=\s)|[，、；：]")

# Scripts written without spaces: each character is a word of its own.
_CJK_LETTER = re.compile(
    "[\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]"
)
_CJK_PUNCTUATION = re.compile("[\u3000-\u303f\uff00-\uff65]")


@dataclass(frozen=True)
class TextChunk:
    """One piece of text for Bark, and what separates it from the next piece."""

    index: int
    text: str
    n_tokens: int
    break_after: BreakKind  # what separates it from the next chunk; the last has "end"


# --- normalising --------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFC, no control or invisible characters, single spaces between words.

    Paragraphs (split at blank lines) are joined by ``"\\n\\n"`` and chapters
    (split at form feeds) by ``"\\f"``; empty ones disappear. Everything Bark
    reads as a cue stays as written: ``[laughs]``, ``♪``, ``—``, ``...``, CAPS.
    """
    return CHAPTER_BREAK.join(PARAGRAPH_BREAK.join(chapter) for chapter in chapters(text))


def chapters(text: str) -> list[list[str]]:
    """The normalised, non-empty paragraphs of each non-empty chapter of ``text``."""
    text = _NEWLINES.sub("\n", text).replace("\u2029", PARAGRAPH_BREAK)
    # Drop controls before reading the structure ("\n\x00\n" is a blank line),
    # but keep the whitespace ones: "\f" and "\n" carry that structure.
    text = "".join(
        ch
        for ch in text
        if ch.isspace() or (unicodedata.category(ch) not in ("Cc", "Cs") and ch not in _INVISIBLE)
    )
    text = unicodedata.normalize("NFC", text)
    result = []
    for chapter in text.split(CHAPTER_BREAK):
        paragraphs = [" ".join(p.split()) for p in _BLANK_LINE.split(chapter)]
        if any(paragraphs):
            result.append([p for p in paragraphs if p])
    return result


# --- sentences ----------------------------------------------------------------


def split_sentences(text: str, language: str = "en") -> list[str]:
    """Sentences of the normalised ``text``, in order; none spans a paragraph."""
    if language == "auto":
        language = detect_language(text)
    return [
        paragraph[start:end].strip()
        for chapter in chapters(text)
        for paragraph in chapter
        for start, end in _spans(paragraph, 0, len(paragraph), partial(_sentence_cuts, language=language))
    ]


def _sentence_cuts(text: str, language: str) -> list[int]:
    """Sentence ends by sentencex, repaired.

    sentencex (1.0.32) is right far more often than a regex, but it cuts
    inside a word ('그는 "좋아요."|라고', "Three.|Four"), before lowercase ("Т. е.|всё", "1990 r.|w"),
    after unknown abbreviations ("dr hab.|Kowalski", "डॉ.|शर्मा", English
    titles in Chinese text), before a closing bracket ("Yes.|) No"), before
    Japanese quotation particles ("「行こう！」|と言った"), and misses an end
    behind a closing bracket ("(Really?)| Then"). Each of those is fixed here.
    """
    language = language.split("-")[0].lower()  # "de-DE": sentencex knows "de" only
    found = {b["end_index"] for b in sentencex.get_sentence_boundaries(language, text)}
    found |= {m.end() for m in _CLOSED_END.finditer(text)}
    found |= {m.end() for m in _END_BEFORE_ITEM.finditer(text)}
    ends = set()
    for cut in sorted(found):
        while cut < len(text) and text[cut] in CLOSERS and not text[cut - 1].isspace():
            cut += 1  # a closing mark ends the sentence it closes
        if 0 < cut < len(text):
            # Only the words around a cut decide it: handing on the whole paragraph
            # would copy it once per cut (quadratic on one long paragraph).
            start = max(0, cut - _SENTENCE_CONTEXT_CHARS)
            if _is_sentence_end(text[start : cut + _SENTENCE_CONTEXT_CHARS], cut - start, language):
                ends.add(cut)
    items = _list_items(text, ends)
    # A list item starts a sentence ("... are met: 1. The work ..."), and sentencex's end after
    # its enumerator ("met: 1.|") is moved to before it: the "1." goes with what it numbers.
    numbers_end = set(items.values())
    return sorted(c for c in ends | set(items) if c > 0 and _unspaced(text, c) not in numbers_end)


def _unspaced(text: str, cut: int) -> int:
    """``cut`` moved back over the whitespace before it (a bounded stretch)."""
    head = text[max(0, cut - _SENTENCE_CONTEXT_CHARS) : cut]
    return cut - (len(head) - len(head.rstrip()))


def _list_items(text: str, ends: set[int]) -> dict[int, int]:
    """Where the list items of ``text`` start, and where their enumerators end: an enumerator
    or bullet standing as a word of its own at the paragraph's start, after a lead-in clause
    ("are met: 1.", "如下：1.") or after a sentence end in ``ends`` (not "Dr." in "Dr. A. Smith")."""
    items = {}
    for match in _ENUMERATOR_AT.finditer(text):
        start = match.start()
        head_start = max(0, start - _SENTENCE_CONTEXT_CHARS)
        head = text[head_start:start].rstrip()
        after_end = any(cut in ends for cut in range(head_start + len(head), start + 1))  # only spaces between
        if not head and head_start == 0 or after_end or _LEAD_IN.search(head):
            items[start] = match.end()
    return items


def _starts_with_enumerator(text: str) -> bool:
    words = text.split(maxsplit=2)
    return len(words) > 1 and bool(ENUMERATOR.fullmatch(words[0]))


def _is_sentence_end(text: str, cut: int, language: str) -> bool:
    """Whether a cut sentencex (or ``_CLOSED_END``) proposes at ``cut`` ends a sentence.

    ``text`` is the context around the cut, not necessarily the whole paragraph.
    """
    before, after = text[:cut].rstrip(), text[cut:]
    spaced = text[cut - 1].isspace() or after[0].isspace()
    if not (spaced or has_no_spaces(before[-1]) or has_no_spaces(after[0])):
        return before[-1] in _HARD_TERMINATORS  # otherwise a cut inside a word: "3.14", "a.m"
    if before[-1] in "」』" and after.startswith(_QUOTATIVE):
        return False
    first = _LEADING_NOISE.match(text, cut).end()
    if first < len(text) and text[first].islower() and not _starts_with_enumerator(after):
        return False  # "... and then", "e.g. apples", "Т. е. всё"; not "... notices. b) The"
    if not before.rstrip(CLOSERS).endswith(".") or before.rstrip(CLOSERS).endswith(".."):
        return True
    word = before.rstrip(CLOSERS)[:-1].split()[-1:] or [""]
    word = "".join(_words_glued(word[0])[-1:]).lstrip(OPENERS)  # "美国。Mr" -> "Mr"
    abbreviations = ABBREVIATIONS.get(language, _DEFAULT_ABBREVIATIONS)
    is_initial = len(word) == 1 and word.isupper()  # J. R. R. Tolkien
    return not (word.lower() in abbreviations or is_initial or _DOTTED_ABBREVIATION.fullmatch(word))


def _words_glued(run: str) -> list[str]:
    """The words of a run of text without spaces (CJK and all)."""
    bounds = [0, *sorted(set(_word_cuts(run))), len(run)]
    return [run[a:b] for a, b in zip(bounds, bounds[1:]) if a < b]


def has_no_spaces(ch: str) -> bool:
    """Whether ``ch`` is of a script written without spaces (Chinese, Japanese) or its punctuation."""
    return bool(_CJK_LETTER.match(ch) or _CJK_PUNCTUATION.match(ch))


# --- finer cuts -----------------------------------------------------------------


def _clause_cuts(text: str) -> list[int]:
    return [m.end() for m in _CLAUSE_END.finditer(text)]


def _word_cuts(text: str) -> list[int]:
    """Starts of words: after a space, at each CJK character, around a glued cue.

    Punctuation stays with the word before it and opening brackets with the
    word after, so "好。「はい」" is "好。", "「は", "い」".
    """
    cuts = [m.start() for m in re.finditer(r"(?<=\s)\S", text)]
    for cue in CUE.finditer(text):  # "Ha[laughs]ha": three words; "[laughs]." one
        start, end = cue.span()
        cuts += [start] if text[start - 1 : start].isalnum() else []
        cuts += [end] if text[end : end + 1].isalnum() else []
    previous, opened = None, False  # previous word's kind; brackets opened a word
    for i, ch in enumerate(text):
        if ch.isspace():
            previous, opened = None, False
        elif ch in OPENERS:
            if previous == "cjk" and not opened:
                cuts.append(i)
            opened = opened or previous != "other"
        elif _CJK_LETTER.match(ch):
            if previous is not None and not opened:
                cuts.append(i)
            previous, opened = "cjk", False
        elif ch.isalnum() or unicodedata.category(ch) == "Pc":  # "_" joins words like a letter
            if previous == "cjk" and not opened:
                cuts.append(i)
            previous, opened = "other", False
    return cuts


def _grapheme_cuts(text: str) -> list[int]:
    """Every position except inside a character and its combining marks or a ZWJ sequence."""
    return [
        i
        for i in range(1, len(text))
        if unicodedata.category(text[i]) not in ("Mn", "Mc", "Me")
        and "\u200d" not in (text[i], text[i - 1])
        and not 0xFE00 <= ord(text[i]) <= 0xFE0F  # variation selectors
        and not 0x1F3FB <= ord(text[i]) <= 0x1F3FF  # skin tones
    ]


def text_cuts(text: str, language: str) -> dict[str, list[int]]:
    """The cut points chunking uses, by kind, for one paragraph's ``text``: sentence ends,
    clause ends, word starts, graphemes (subtitles cut with the same rules; none is inside a cue).

    ``language`` is a concrete code: the caller resolves "auto" for the whole chunk.
    """
    cuts = {
        "sentence": _sentence_cuts(text, language),
        "clause": _clause_cuts(text),
        "word": _word_cuts(text),
        "grapheme": _grapheme_cuts(text),
    }
    inside = {i for m in CUE.finditer(text) for i in range(m.start() + 1, m.end())}
    return {kind: sorted(c for c in set(found) if 0 < c < len(text) and c not in inside) for kind, found in cuts.items()}


# --- chunks ---------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkBudget:
    """What one chunk may hold: seconds of speech (packed to the target, a single piece up to the
    maximum), tokens (never over), and optionally characters (an extra cap, off by default)."""

    max_tokens: int
    target_speech_s: float = TARGET_SPEECH_S
    max_speech_s: float = MAX_SPEECH_S
    max_chars: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or (self.max_chars is not None and self.max_chars < 1):
            raise ValueError("need max_tokens >= 1 and max_chars >= 1")
        if not 0 < self.target_speech_s <= self.max_speech_s:
            raise ValueError("need 0 < target_speech_s <= max_speech_s")


def make_chunks(
    text: str,
    count_tokens: Callable[[str], int],
    budget: ChunkBudget,
    language: str = "auto",
) -> list[TextChunk]:
    """Pack the normalised ``text`` into chunks within the ``budget``.

    Consecutive sentences of one paragraph share a chunk while they stay within
    the speech target; a sentence over the target alone is a chunk of its own if
    it is within the speech maximum, else it is packed from its clauses, a clause
    from its words, the same way. A word (or cue) over the maximum is a chunk of
    its own; one over ``max_tokens`` is cut between characters, and a character
    (or a cue) over it is a ``ValueError``. Every chunk is measured with
    ``count_tokens``, so none ever exceeds ``max_tokens``; it is called a few
    times per chunk (token counts must not shrink as a text grows), and speech
    is estimated once per paragraph, so the work is linear in the text's length.

    Each chunk's ``break_after`` says what follows it: "sentence" (also after
    a piece of a long sentence), "paragraph", "chapter", or "end" for the last.
    ``language`` picks the sentence rules and the speech pace; "auto" detects it
    (:func:`pipeline.languages.detect_language`).
    """
    if language == "auto":
        language = detect_language(text)
    layers = (partial(_sentence_cuts, language=language), _clause_cuts, _word_cuts, _grapheme_cuts)
    chunks: list[TextChunk] = []
    for chapter in chapters(text):
        for paragraph in chapter:
            measure = _Measure(paragraph, language, count_tokens, budget)
            for (start, end), n_tokens in _pack(paragraph, (0, len(paragraph)), layers, measure):
                chunks.append(TextChunk(len(chunks), paragraph[start:end].strip(), n_tokens, "sentence"))
            chunks[-1] = replace(chunks[-1], break_after="paragraph")
        chunks[-1] = replace(chunks[-1], break_after="chapter")
    if chunks:
        chunks[-1] = replace(chunks[-1], break_after="end")
    return chunks


class _Measure:
    """One paragraph's budget checks: speech from prefix counts of its spoken units (estimated
    once), tokens with the one tokenizer call a check needs (the last count is kept: a fitting
    candidate is often the chunk that is then emitted)."""

    def __init__(self, text: str, language: str, count_tokens: Callable[[str], int], budget: ChunkBudget):
        self._text = text
        self._units = cumulative_units(text, language)
        self._per_second = pace(language).per_second
        self._count_tokens = count_tokens
        self.budget = budget
        self._last: tuple[str, int] | None = None

    def seconds(self, start: int, end: int) -> float:
        """The estimate of ``text[start:end]`` (:func:`pipeline.speech_time.estimate_speech_seconds`)."""
        return (self._units[end] - self._units[start]) / self._per_second

    def tokens(self, text: str) -> int:
        if self._last is None or self._last[0] != text:
            self._last = (text, self._count_tokens(text))
        return self._last[1]

    def fits_tokens(self, text: str) -> bool:
        return self.tokens(text) <= self.budget.max_tokens

    def fits_alone(self, span: Span) -> bool:
        """Whether one piece may be a chunk as it is: within the speech maximum and every cap."""
        max_chars = self.budget.max_chars
        return (
            self.seconds(*span) <= self.budget.max_speech_s
            and (max_chars is None or span[1] - span[0] <= max_chars)
            and self.fits_tokens(self._text[slice(*span)])
        )


Span = tuple[int, int]
# Layers from here on cut inside sentences only between words: a piece there
# that is over the speech maximum alone is kept whole (never cut mid-word).
_FIRST_WORD_LAYER = 2


def _pack(text: str, span: Span, layers: tuple, measure: _Measure, depth: int = 0) -> list[tuple[Span, int]]:
    """Greedily merge the pieces of ``span`` into fitting spans, splitting finer where needed.

    Returns each span (without its outer whitespace) with its token count. A run
    of pieces is as long as the speech target (and character cap) and the token
    budget allow: the first two are found by bisecting the pieces' ends over the
    paragraph's prefix counts, the token budget by bisecting the run (token counts
    grow as a run grows), so a chunk costs a few tokenizer calls of one chunk's
    text, never one per piece: the work is linear in the text's length.
    """
    pieces = _spans(text, *span, layers[depth])
    words = [_stripped(text, piece) for piece in pieces]
    ends = [end for _, end in words]
    packed: list[tuple[Span, int]] = []
    first = 0
    while first < len(pieces):
        run = _longest_fitting_run(text, words, ends, first, measure)
        if run is not None:
            last, n_tokens = run
            if first < last < len(pieces) - 1 and ENUMERATOR.fullmatch(text[slice(*words[last])]):
                # A run that would end in "1." or "-" leaves it to the item it numbers.
                last -= 1
                n_tokens = measure.tokens(text[words[first][0] : words[last][1]])
            packed.append(((words[first][0], words[last][1]), n_tokens))
            first = last + 1
            continue
        piece_text = text[slice(*words[first])]
        if measure.fits_alone(words[first]) or (depth >= _FIRST_WORD_LAYER and measure.fits_tokens(piece_text)):
            # Over the target but within the maximum; or one word over the maximum: the speech budget gives way.
            packed.append((words[first], measure.tokens(piece_text)))
        elif depth + 1 == len(layers):
            raise ValueError(f"{piece_text!r} alone exceeds the token budget of {measure.budget.max_tokens}")
        else:
            packed.extend(_pack(text, pieces[first], layers, measure, depth + 1))
        first += 1
    return packed


def _longest_fitting_run(text: str, words: list[Span], ends: list[int], first: int, measure: _Measure) -> tuple[int, int] | None:
    """(last piece, tokens) of the longest run of pieces from ``first`` within the speech target,
    the character cap and the token budget; None when the first piece alone is over any of them."""
    start = words[first][0]
    budget = measure.budget
    # Pieces are in order, so a run's speech and characters grow with its last piece.
    high = bisect.bisect_right(ends, budget.target_speech_s, lo=first, key=lambda end: measure.seconds(start, end)) - 1
    if budget.max_chars is not None:
        high = min(high, bisect.bisect_right(ends, start + budget.max_chars, lo=first) - 1)
    if high < first:
        return None
    n_tokens = measure.tokens(text[start : ends[high]])
    if n_tokens <= budget.max_tokens:
        return high, n_tokens  # the usual case: speech, not tokens, ends the chunk
    low, low_tokens = first - 1, 0  # the run to ``low`` fits (empty at first), the run to ``high`` does not
    while high - low > 1:
        middle = (low + high) // 2
        n_tokens = measure.tokens(text[start : ends[middle]])
        if n_tokens <= budget.max_tokens:
            low, low_tokens = middle, n_tokens
        else:
            high = middle
    return (low, low_tokens) if low >= first else None


def _stripped(text: str, span: Span) -> Span:
    """``span`` without its leading and trailing whitespace."""
    start, end = span
    piece = text[start:end]
    return start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())


def _spans(text: str, start: int, end: int, cuts: Callable[[str], list[int]]) -> list[Span]:
    """Non-blank pieces of ``text[start:end]`` between the cut points ``cuts`` finds.

    No cut ever falls inside a cue.
    """
    part = text[start:end]
    cues = [m.span() for m in CUE.finditer(part)]
    inside = {i for a, b in cues for i in range(a + 1, b)}
    points = sorted(c for c in set(cuts(part)) if 0 < c < len(part) and c not in inside)
    bounds = [0, *points, len(part)]
    return [(start + a, start + b) for a, b in zip(bounds, bounds[1:]) if part[a:b].strip()]
