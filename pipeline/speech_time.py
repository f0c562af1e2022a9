"""How many seconds of speech a text makes, per language: what chunk budgets and retake checks measure.

One estimate for the whole project (the planner's budgets, ``plan``'s totals, the
retake check's duration band), so they agree. For now every language is read at
English narration pace; a per-language table replaces ``CHARS_PER_SECOND``.
"""

from __future__ import annotations

# English narration runs at about 150 words per minute (the National Center for Voice and
# Speech's figure for conversational English, and the pace audiobook producers ask for), and an
# English word averages 4.8 letters (Norvig's count over the Google Books corpus) plus a space or
# punctuation mark: 150 x 5.8 / 60 = 14.5 characters per second.
CHARS_PER_SECOND = 14.5


def estimate_speech_seconds(text: str, language: str) -> float:
    """Seconds a narrator takes to say ``text`` in ``language`` (one of Bark's codes)."""
    return len(text) / CHARS_PER_SECOND
