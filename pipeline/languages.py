"""Bark's 13 languages: which language an item is in, and the preset voice that speaks it.

Detection is Lingua (``lingua-language-detector``): offline, its models ship in the
wheel, and it scores 1- to 5-grams, which is what tells one short sentence from
another (a word-list or trigram guess reads ``"Do not panic."`` as Portuguese or
German). It is restricted to Bark's languages, built once per process and loads each
language's models the first time that language's script is seen (about 250 MB and a
few seconds for the Latin-script ones; see README, "Languages and voices").

A short or ambiguous text gets no confident answer, and then the caller's fallback
is the item's language: a wrong voice is worse than the job's default.
"""

from __future__ import annotations

import functools
import re

BARK_LANGUAGES = ("en", "de", "es", "fr", "hi", "it", "ja", "ko", "pl", "pt", "ru", "tr", "zh")
AUTO = "auto"  # text.language: detect each item's language
DEFAULT_LANGUAGE = "en"  # what an item is when nothing tells

# Lingua's confidence (its scores over the 13 languages, summing to 1) a language needs
# to be taken: "Le chat dort sur le canapé." scores 0.51 for French, "Do not panic."
# 0.20 for English and Italian alike, "Ok." 0.38 for Polish.
MIN_CONFIDENCE = 0.5
DETECT_SAMPLE_CHARS = 10_000  # the start of a long text tells its language as well as all of it

# Suno's multilingual presets: v2/<language>_speaker_<N>, N in 0..9 for every language.
PRESET_VOICE = re.compile(r"v2/(?P<language>[a-z]{2})_speaker_(?P<n>\d+)")


def check_language(code: object) -> str:
    """``code`` if it is one of Bark's languages, else ValueError saying which are."""
    if code not in BARK_LANGUAGES:
        raise ValueError(f"{code!r} is not one of Bark's languages: {', '.join(BARK_LANGUAGES)}")
    return code


@functools.cache
def _detector():
    """Lingua over Bark's languages, high-accuracy mode, models loaded as scripts are met."""
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    languages = [Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper())) for code in BARK_LANGUAGES]
    return LanguageDetectorBuilder.from_languages(*languages).build()


def detect(text: str) -> str | None:
    """The language of ``text`` when Lingua is confident of it (:data:`MIN_CONFIDENCE`), else None."""
    scores = _detector().compute_language_confidence_values(text[:DETECT_SAMPLE_CHARS])
    if not scores or scores[0].value < MIN_CONFIDENCE:
        return None
    return scores[0].language.iso_code_639_1.name.lower()


def detect_language(text: str, fallback: str = DEFAULT_LANGUAGE) -> str:
    """The language of ``text``, or ``fallback`` when the text does not tell (short, ambiguous, no letters)."""
    return detect(text) or fallback


def voice_for_language(job_voice: str | None, language: str, by_language: dict[str, str]) -> str | None:
    """The voice of an item with none of its own: ``by_language``'s for its language, else the
    job's preset moved to that language (``v2/en_speaker_6`` -> ``v2/de_speaker_6``), else the
    job's voice as it is (a file, an old preset, or None for a random voice)."""
    if language in by_language:
        return by_language[language]
    match = PRESET_VOICE.fullmatch(job_voice or "")
    if match and match["language"] != language:
        return f"v2/{language}_speaker_{match['n']}"
    return job_voice
