"""How many seconds of speech a text makes, per language: what chunk budgets and retake checks measure.

One estimate for the whole project (the planner's budgets, ``plan``'s totals, the
retake check's duration band), so they agree. Characters are no measure across
scripts: 169 Chinese characters are 169 syllables (over half a minute), 169 English
letters about 40. So each language counts its own spoken unit (syllables; morae for
Japanese) and reads it at its own narration rate (:data:`PACES`).

Units are whole numbers counted word by word, so a text's count is the sum of its
words' counts: :func:`cumulative_units` gives every prefix's count in one pass, and
the count of any slice between words is a difference of two of them, exactly what
:func:`estimate_speech_seconds` gives for that slice. The chunker bisects over
these prefix counts instead of re-estimating every candidate chunk.

What is not modelled: pauses (the rates below are of running speech and absorb the
usual ones), numbers said in words (a digit counts one syllable), and words whose
spelling hides their syllables (English "rhythm", French silent endings other than
a final -e).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

# Bark speaks best for ~13 s (768 semantic steps, ~15 s, is its hard stop): a chunk is packed
# to the target and only a single sentence, clause or word may run on to the maximum.
TARGET_SPEECH_S = 10.0
MAX_SPEECH_S = 13.0

# The study rates are of volunteers reading short texts aloud with long silences cut
# (Pellegrino et al. 2011, below): brisker than narration. An English narrator reads about
# 150 words per minute (the pace audiobook producers ask for; it was this module's English
# basis before, 14.5 characters per second) at about 1.5 syllables per word: 3.75 syllables
# per second, 0.6 of the study's 6.19 for English. Every language is slowed by that factor.
NARRATION_PACE = 0.6

# The mean of the seven languages Pellegrino et al. measured, for those they did not: it lies
# mid-range of the 4 to 9 syllables per second Coupé et al. (2019, Science Advances 5(9),
# "Different languages, similar encoding efficiency") found across 17 languages.
_STUDY_MEAN = round((6.19 + 5.97 + 7.82 + 7.18 + 6.99 + 7.84 + 5.18) / 7, 2)


@dataclass(frozen=True)
class Pace:
    """A language's spoken unit, how fast it is read aloud, and where that figure comes from."""

    unit: str
    study_per_second: float  # units per second in the source, read speech
    source: str

    @property
    def per_second(self) -> float:
        """Units per second at narration pace."""
        return self.study_per_second * NARRATION_PACE


_PELLEGRINO = "Pellegrino, Coupé & Marsico 2011, Language 87(3), syllables/s of read speech"
_UNMEASURED = "not in Pellegrino et al. 2011: their seven languages' mean"

PACES: dict[str, Pace] = {
    "en": Pace("syllables", 6.19, _PELLEGRINO),
    "de": Pace("syllables", 5.97, _PELLEGRINO),
    "es": Pace("syllables", 7.82, _PELLEGRINO),
    "fr": Pace("syllables", 7.18, _PELLEGRINO),
    "it": Pace("syllables", 6.99, _PELLEGRINO),
    "ja": Pace("morae", 7.84, _PELLEGRINO + " (counted in morae for Japanese)"),
    "zh": Pace("syllables", 5.18, _PELLEGRINO + " (Mandarin; one character, one syllable)"),
    "hi": Pace("syllables", _STUDY_MEAN, _UNMEASURED + "; akshara counted"),
    "ko": Pace("syllables", _STUDY_MEAN, _UNMEASURED + "; one Hangul block, one syllable"),
    "pl": Pace("syllables", _STUDY_MEAN, _UNMEASURED),
    "pt": Pace("syllables", _STUDY_MEAN, _UNMEASURED),
    "ru": Pace("syllables", _STUDY_MEAN, _UNMEASURED),
    "tr": Pace("syllables", _STUDY_MEAN, _UNMEASURED),
}

# A kanji is read in one to three morae (日 ni-chi, 本 ho-n, 私 wa-ta-shi); two is the usual.
KANJI_MORAE = 2
# Languages whose words end in a silent "e" often enough to drop it ("make", "une").
_SILENT_FINAL_E = frozenset({"en", "fr"})

_VOWELS = re.compile("[aeiouyàáâãäåæèéêëìíîïòóôõöøùúûüýÿāăąēėęěīįıōőœūůűųаеёиоуыэюяєіїαεηιουωάέήίόύώ]+", re.IGNORECASE)
_ALPHABETIC = "A-Za-z\u00c0-\u024f\u1e00-\u1eff\u0370-\u03ff\u0400-\u04ff"
# One spoken unit or word per match, so a text's count is the sum over its matches.
_UNITS = re.compile(
    rf"(?P<word>[{_ALPHABETIC}]+(?:['’][{_ALPHABETIC}]+)*)"
    r"|(?P<digit>\d)"
    r"|(?P<han>[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f])"
    # Kana, one mora each, but not the small ones that join the mora before (きゃ is kya).
    r"|(?P<kana>[\u3041-\u3096\u30a1-\u30fa\u30fc\uff66-\uff9d](?<![ぁぃぅぇぉゃゅょゎァィゥェォャュョヮ]))"
    r"|(?P<hangul>[\uac00-\ud7a3])"
    # Devanagari: an independent vowel, or a consonant (with its nukta) not silenced by a virama.
    r"|(?P<akshara>[\u0904-\u0914\u0960\u0961]|[\u0915-\u0939\u0958-\u095f]\u093c?(?!\u094d))"
)


def pace(language: str) -> Pace:
    """The pace of one of Bark's languages (a region suffix is ignored: "de-DE" is "de")."""
    code = language.split("-")[0].lower()
    try:
        return PACES[code]
    except KeyError:
        raise ValueError(f"no speech pace for language {language!r}: one of {', '.join(PACES)}") from None


def _word_units(word: str, language: str) -> int:
    """Syllables of a word of an alphabetic script: its vowel groups; a word with none is
    spelled out ("Mr", "HTTP"), a letter a syllable."""
    groups = len(_VOWELS.findall(word))
    if groups == 0:
        return len(word)
    if groups > 1 and language in _SILENT_FINAL_E and word[-1] in "eE" and not _VOWELS.fullmatch(word[-2]):
        groups -= 1
    return groups


def _match_units(match: re.Match, language: str, kanji: int) -> int:
    kind = match.lastgroup
    if kind == "word":
        return _word_units(match.group(), language)
    return kanji if kind == "han" else 1


def _han_units(language: str) -> int:
    return KANJI_MORAE if language == "ja" else 1


def count_units(text: str, language: str) -> int:
    """The spoken units of ``text`` (syllables; morae for Japanese)."""
    code = language.split("-")[0].lower()
    kanji = _han_units(code)
    return sum(_match_units(m, code, kanji) for m in _UNITS.finditer(text))


def cumulative_units(text: str, language: str) -> list[int]:
    """``result[i]``: the units of ``text[:i]``, a word's units counted at its end. For ``a`` and
    ``b`` between words, ``result[b] - result[a] == count_units(text[a:b], language)``."""
    code = language.split("-")[0].lower()
    kanji = _han_units(code)
    added = [0] * (len(text) + 1)
    for match in _UNITS.finditer(text):
        added[match.end()] += _match_units(match, code, kanji)
    return list(itertools.accumulate(added))


def units_to_seconds(units: int, language: str) -> float:
    return units / pace(language).per_second


def estimate_speech_seconds(text: str, language: str) -> float:
    """Seconds a narrator takes to say ``text`` in ``language`` (one of Bark's codes)."""
    return units_to_seconds(count_units(text, language), language)


def describe_pace(language: str) -> str:
    """``en 3.7 syllables/s``: the basis of an estimate, for people."""
    basis = pace(language)
    return f"{language} {basis.per_second:.1f} {basis.unit}/s"
