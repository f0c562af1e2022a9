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
from collections.abc import Callable
from dataclasses import dataclass
from pipeline.config import AddressMode
from pipeline.text import CUE, graphemes, normalize_text

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
_OPENING = "([{\"'“‘«¿¡「『（【"
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
    """The normalised ``text`` (normalised again on the way out) with addresses handled per ``urls``, symbol runs and unknown
    characters removed; ``is_unknown`` says whether the tokenizer maps a character (a grapheme:
    a letter with its marks, a whole emoji) to ``[UNK]``."""
    text = spoken_addresses(text, urls, language)
    cue_chars = {i for m in CUE.finditer(text) for i in range(*m.span())}
    units, position = [], 0  # (grapheme, kind) with kind: space, cue, unknown, symbol, text
    for g in graphemes(text):
        if g.isspace():
            kind = "space"
        elif position in cue_chars or g in BARK_CUE_CHARS:
            kind = "cue"
        elif is_unknown(g):
            kind = "unknown"
        elif g[0] in _DECORATION or unicodedata.category(g[0]).startswith("S"):
            kind = "symbol"
        else:
            kind = "punctuation" if unicodedata.category(g[0]).startswith("P") else "text"
        units.append((g, kind))
        position += len(g)
    counted = sum(kind in ("unknown", "symbol", "text") for _, kind in units)
    unknown = sum(kind == "unknown" for _, kind in units)
    remove = [kind == "unknown" for _, kind in units]
    for start, end in _symbol_runs([kind for _, kind in units]):
        remove[start:end] = [True] * (end - start)
    marked = "".join(_REMOVED if gone else g for (g, _), gone in zip(units, remove))
    return SpeechText(normalize_text(_close_gaps(marked)), counted, unknown)


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


def _symbol_runs(kinds: list[str]) -> list[tuple[int, int]]:
    """Spans of at least :data:`MIN_SYMBOL_RUN` symbols (unknown ones count too), single spaces allowed between."""
    runs, start, count, last = [], None, 0, None
    for i, kind in enumerate([*kinds, "end"]):
        if kind in ("symbol", "unknown"):
            start, count, last = (i if start is None else start), count + 1, i
        elif kind == "space" and start is not None and kinds[i - 1] != "space":
            continue
        else:
            if start is not None and count >= MIN_SYMBOL_RUN:
                runs.append((start, last + 1))
            start, count = None, 0
    return runs


def _close_gaps(text: str) -> str:
    """Removes the marked characters without gluing words or stranding a space before punctuation:
    "Great 😀." is "Great.", "hello😀world" "hello world", "你好😀世界" "你好世界"."""

    def close(match: re.Match) -> str:
        before = text[match.start() - 1 : match.start()]
        after = text[match.end() : match.end() + 1]
        space = match.group(1)
        if not after or after.isspace() or not (after.isalnum() or after in _OPENING):
            return ""  # a space after it separates what is left; punctuation closes up to the word
        if space or not before or before.isspace():
            return space
        return "" if _no_spaces(before) or _no_spaces(after) else " "

    return _GAP.sub(close, text)


def _no_spaces(ch: str) -> bool:
    """Scripts written without spaces between words (CJK, Thai): no space where a character was."""
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "THAI", "IDEOGRAPHIC", "FULLWIDTH"))
