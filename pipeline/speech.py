"""Text for speech: what Bark should say for the parts of a text that are not prose.

Bark reads what it is given. A URL comes out letter by letter, an e-mail address
as a jumble, a ``<name of author>`` placeholder with its brackets, and characters
its tokenizer does not know (emoji, most symbols) as ``[UNK]`` tokens, which carry
no text at all: two of them made 15 s of babble. So before an item is chunked:

- URLs, e-mail addresses and ``<...>`` placeholders are spoken (``text.urls:
  speak``), dropped (``drop``) or left as written (``keep``). Spoken, a URL loses
  its scheme, a leading ``www.``, its query and fragment and a trailing slash, and
  its separators are said as words in the item's language: ``https://www.gnu.org/
  licenses/`` is "gnu dot org slash licenses", ``a@b.org`` "a at b dot org", and a
  placeholder is its words without the brackets.
- Runs of :data:`MIN_SYMBOL_RUN` or more symbols (rules, ratings, box drawing:
  ``* * *``, ``=====``, ``★★★★☆``) and every character the tokenizer maps to
  ``[UNK]`` are removed.
- Bark's own cues stay as written: ``[laughs]``, ``[MAN]``, ``♪``, ``—``, ``...``.

The chunk texts are cut from this spoken form, so the subtitles (built from the
chunk texts) show what is said. How much of the text was unknown is counted, so
the planner can refuse an item that is mostly ``[UNK]`` instead of narrating noise.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.config import AddressMode
from pipeline.text import CUE, OPENERS, has_no_spaces, normalize_text

# Three or more symbols in a row are decoration (a rule, a rating, ASCII art); one or two
# can be read ("1 + 2", "$5", "->").
MIN_SYMBOL_RUN = 3
# Characters Bark was trained to read as cues: never removed, even when the tokenizer does not know them.
BARK_CUE_CHARS = frozenset("♪—…")
# ASCII characters that draw rules and boxes, besides the Unicode symbol categories (S*).
_DECORATION = frozenset("*#=_~|+^<>\\/-")

# "<https://...>" is one address; an address ends before trailing sentence punctuation.
URL = re.compile(r"(<)?((?:\b(?:https?|ftps?)://|\bwww\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}])(?(1)>)", re.IGNORECASE)
EMAIL = re.compile(r"(<)?\b([\w.+-]+@[\w-]+(?:\.[\w-]+)+)\b(?(1)>)")
# "<name of author>", "<year>": words in angle brackets (not "a < b and c > d").
PLACEHOLDER = re.compile(r"<([^\W\d_](?:[^<>\n]{0,78}[^\s<>])?)>")
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://(?:www\.)?|^www\.", re.IGNORECASE)
_SEPARATORS = re.compile(r"([./@_-])")

# How each separator is said, per language Bark speaks (English where a language is not listed).
_SEPARATOR_WORDS = {
    "en": ("dot", "slash", "at", "underscore", "dash"),
    "de": ("Punkt", "Schrägstrich", "at", "Unterstrich", "Bindestrich"),
    "es": ("punto", "barra", "arroba", "guion bajo", "guion"),
    "fr": ("point", "slash", "arobase", "tiret bas", "tiret"),
    "it": ("punto", "slash", "chiocciola", "trattino basso", "trattino"),
    "pt": ("ponto", "barra", "arroba", "sublinhado", "hífen"),
    "pl": ("kropka", "ukośnik", "małpa", "podkreślnik", "myślnik"),
    "tr": ("nokta", "eğik çizgi", "et", "alt çizgi", "tire"),
    "ru": ("точка", "слэш", "собака", "подчёркивание", "дефис"),
    "hi": ("डॉट", "स्लैश", "एट", "अंडरस्कोर", "डैश"),
    "zh": ("点", "斜杠", "at", "下划线", "横杠"),
    "ja": ("ドット", "スラッシュ", "アット", "アンダースコア", "ハイフン"),
    "ko": ("점", "슬래시", "골뱅이", "언더바", "대시"),
}
_REMOVED = "\x00"  # stands for a removed character until the gaps are closed (normalised text has no NUL)
_COUNTED = ("unknown", "symbol", "text")  # what carries text: not spaces, punctuation, cues or marks
_ZWJ = "\u200d"
# Variation selectors, skin tones and tag characters: like marks, part of the character before them.
_ATTACHED_RANGES = ((0xFE00, 0xFE0F), (0x1F3FB, 0x1F3FF), (0xE0020, 0xE007F))
# A character with its marks, or a ZWJ sequence (one emoji): {marks} is the class of marks found.
_CLUSTER_OF = "\\S(?:{marks}|\u200d\\S)+"
_GAP = re.compile(rf"( ?)({_REMOVED}+(?: +{_REMOVED}+)*)")


@dataclass(frozen=True)
class SpeechText:
    """An item's text as Bark should read it, and how much of it the tokenizer did not know."""

    text: str
    counted: int  # characters that carry text: not spaces, punctuation or cues
    unknown: int  # of those, the ones the tokenizer maps to [UNK] (removed from ``text``)

    @property
    def unknown_share(self) -> float:
        return self.unknown / self.counted if self.counted else 0.0


def speech_text(
    text: str, *, urls: AddressMode = "speak", language: str = "en", is_unknown: Callable[[str], bool] = lambda _: False
) -> SpeechText:
    """The normalised ``text`` with addresses handled per ``urls`` and symbol runs and unknown
    characters removed (normalised again on the way out). ``is_unknown`` says whether the
    tokenizer maps a character, or a cluster (a letter with its marks, a whole emoji), to ``[UNK]``.

    Each distinct character is looked at once and the text is changed by regular expressions
    built from what was found, so a book costs about what normalising it does.
    """
    text = spoken_addresses(text, urls, language)
    kinds = {ch: _kind(ch, is_unknown) for ch in set(text)}
    counts = Counter(text)
    counted = sum(n for ch, n in counts.items() if kinds[ch] in _COUNTED)
    unknown = sum(n for ch, n in counts.items() if kinds[ch] == "unknown")
    for cue in CUE.finditer(text):  # a cue is said as Bark's cue, not read as text
        counted -= sum(kinds[ch] in _COUNTED for ch in cue.group())
        unknown -= sum(kinds[ch] == "unknown" for ch in cue.group())
    of_kind = {kind: "".join(sorted(ch for ch, k in kinds.items() if k == kind)) for kind in ("unknown", "symbol", "attached")}
    clusters = _CLUSTER_OF.format(marks=_char_class(of_kind["attached"].replace(_ZWJ, ""))) if of_kind["attached"] else None
    removable = _char_class(of_kind["unknown"] + of_kind["symbol"] + _REMOVED)
    symbol_run = re.compile(f"{removable}(?: ?{removable}){{{MIN_SYMBOL_RUN - 1},}}")

    def clean(segment: str) -> str:
        nonlocal counted, unknown
        if clusters:
            for cluster in re.finditer(clusters, segment):
                if is_unknown(cluster.group()) and kinds[cluster.group()[0]] != "unknown":
                    unknown += 1  # a known letter whose marks the tokenizer cannot read with it
            segment = re.sub(clusters, lambda m: _REMOVED if is_unknown(m.group()) else m.group(), segment)
        if of_kind["unknown"]:
            segment = re.sub(_char_class(of_kind["unknown"]), _REMOVED, segment)
        return symbol_run.sub(_REMOVED, segment)

    pieces, start = [], 0
    for cue in CUE.finditer(text):
        pieces += [clean(text[start : cue.start()]), cue.group()]
        start = cue.end()
    pieces.append(clean(text[start:]))
    return SpeechText(normalize_text(_close_gaps("".join(pieces))), counted, unknown)


def _kind(ch: str, is_unknown: Callable[[str], bool]) -> str:
    """What one character is: space, cue, attached (a mark, ZWJ, variation selector, skin tone,
    tag: part of the character before it), unknown, symbol, punctuation or text."""
    category = unicodedata.category(ch)
    if ch.isspace():
        return "space"
    if ch in BARK_CUE_CHARS:
        return "cue"
    if category[0] == "M" or ch == _ZWJ or any(low <= ord(ch) <= high for low, high in _ATTACHED_RANGES):
        return "attached"
    if is_unknown(ch):
        return "unknown"
    if ch in _DECORATION or category[0] == "S":
        return "symbol"
    return "punctuation" if category[0] == "P" else "text"


def _char_class(chars: str) -> str:
    """A regex class of exactly ``chars``; one that matches nothing when there are none."""
    return "[" + "".join(re.escape(ch) for ch in chars) + "]" if chars else "(?!)"


def spoken_addresses(text: str, mode: AddressMode, language: str = "en") -> str:
    """URLs, e-mail addresses and ``<...>`` placeholders said as words, dropped, or kept."""
    if mode == "keep":
        return text
    words = _SEPARATOR_WORDS.get(language.split("-")[0].lower(), _SEPARATOR_WORDS["en"])
    if mode == "drop":
        return _close_gaps(PLACEHOLDER.sub(_REMOVED, EMAIL.sub(_REMOVED, URL.sub(_REMOVED, text))))
    text = URL.sub(lambda m: _said(_url_core(m.group(2)), words), text)
    text = EMAIL.sub(lambda m: _said(m.group(2), words), text)
    return PLACEHOLDER.sub(lambda m: m.group(1), text)


def _url_core(url: str) -> str:
    """What of a URL is worth saying: no scheme, ``www.``, query, fragment or trailing slash."""
    return re.split(r"[?#]", _SCHEME.sub("", url), maxsplit=1)[0].rstrip("/")


def _said(address: str, words: tuple[str, ...]) -> str:
    """An address with its separators as words and other marks (``~``, ``%``, ``:``) left out."""
    word_for = dict(zip("./@_-", words))
    parts = []
    for part in _SEPARATORS.split(address):
        if part in word_for:
            parts.append(word_for[part])
        else:
            parts.extend(re.findall(r"[^\W_]+", part))
    return " ".join(parts)


def _close_gaps(text: str) -> str:
    """Removes the marked characters without gluing words or stranding a space before punctuation:
    "Great 😀." is "Great.", "hello😀world" "hello world", "你好😀世界" "你好世界"."""

    def close(match: re.Match) -> str:
        before = text[match.start() - 1 : match.start()]
        after = text[match.end() : match.end() + 1]
        space = match.group(1)
        if not after or after.isspace() or not (after.isalnum() or after in OPENERS):
            return ""  # a space after it separates what is left; punctuation closes up to the word
        if space or not before or before.isspace():
            return space
        return "" if has_no_spaces(before) or has_no_spaces(after) else " "

    return _GAP.sub(close, text)

