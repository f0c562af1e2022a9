"""Subtitles: cues from chunk times, SRT and WebVTT that parse back to the same words in order."""

from __future__ import annotations

import html
import re

import pytest
from pydantic import ValidationError

from pipeline.subtitles import Cue, cues_from_chunks, to_srt, to_vtt

LONG = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, "
    "it was the age of foolishness. It was the epoch of belief! It was the epoch of incredulity, "
    "it was the season of Light, it was the season of Darkness."
)
CHUNKS = [
    (0.0, 1.2, "Chapter one."),
    (1.4, 12.9, LONG),
    (12.85, 14.0, 'She said: "Stop <here> & wait --> now."'),  # starts inside the previous chunk's crossfade
    (14.5, 14.5, "   "),
]
AUDIO_END_S = 14.0

_TIME = r"(\d{2,}):(\d{2}):(\d{2})[,.](\d{3})"
_SRT_TIMING = re.compile(rf"^{_TIME} --> {_TIME}$")


def _seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def parse_srt(text: str) -> list[tuple[int, float, float, list[str]]]:
    """(counter, start, end, lines) per block; strict about the layout."""
    assert text.endswith("\n") and not text.endswith("\n\n\n")
    blocks = []
    for block in text.strip("\n").split("\n\n"):
        counter, timing, *lines = block.split("\n")
        match = _SRT_TIMING.match(timing)
        assert match and "." not in timing, timing
        groups = match.groups()
        blocks.append((int(counter), _seconds(*groups[:4]), _seconds(*groups[4:]), lines))
    return blocks


def parse_vtt(text: str) -> list[tuple[float, float, list[str]]]:
    header, *blocks = text.strip("\n").split("\n\n")
    assert header == "WEBVTT"
    cues = []
    for block in blocks:
        timing, *lines = block.split("\n")
        match = re.match(rf"^{_TIME} --> {_TIME}$", timing)
        assert match and "," not in timing, timing
        assert all("-->" not in line and "<" not in line for line in lines)
        groups = match.groups()
        cues.append((_seconds(*groups[:4]), _seconds(*groups[4:]), [html.unescape(line) for line in lines]))
    return cues


def words_of(chunks) -> list[str]:
    return [word for _, _, text in chunks for word in text.split()]


def test_srt_parses_back_with_counters_times_and_every_word():
    blocks = parse_srt(to_srt(cues_from_chunks(CHUNKS)))
    assert [b[0] for b in blocks] == list(range(1, len(blocks) + 1))
    assert len(blocks) > len(CHUNKS) - 1  # the long chunk needs several cues
    times = [t for _, start, end, _ in blocks for t in (start, end)]
    assert times == sorted(times) and times[-1] <= AUDIO_END_S
    assert all(start < end for _, start, end, _ in blocks)
    assert [w for *_, lines in blocks for line in lines for w in line.split()] == words_of(CHUNKS)


def test_vtt_parses_back_to_the_same_cues_as_srt():
    cues = cues_from_chunks(CHUNKS)
    vtt = parse_vtt(to_vtt(cues))
    srt = parse_srt(to_srt(cues))
    assert [(s, e, lines) for _, s, e, lines in srt] == vtt


@pytest.mark.parametrize("max_chars, max_line", [(84, 42), (40, 20), (30, 30), (12, 12)])
def test_cues_respect_line_and_cue_limits(max_chars, max_line):
    cues = cues_from_chunks(CHUNKS, max_chars_per_cue=max_chars, max_line_chars=max_line)
    for cue in cues:
        lines = cue.text.split("\n")
        assert 1 <= len(lines) <= 2 and all(0 < len(line) <= max_line for line in lines)
        assert len(" ".join(lines)) <= max_chars
    assert [w for cue in cues for w in cue.text.split()] == words_of(CHUNKS)


def test_a_long_chunk_shares_its_span_by_characters_and_is_cut_at_marks():
    cues = cues_from_chunks([(2.0, 12.0, LONG)])
    assert cues[0].start_s == 2.0 and cues[-1].end_s == 12.0
    for cue, following in zip(cues, cues[1:]):
        assert cue.end_s == pytest.approx(following.start_s)
    total = sum(len(cue.text) for cue in cues)  # newlines stand where spaces were
    for cue in cues:
        assert cue.end_s - cue.start_s == pytest.approx(10.0 * len(cue.text) / total)
    assert all(cue.text[-1] in ",.!" for cue in cues)  # every cut falls after a mark, none mid-clause


def test_short_chunks_are_one_cue_each_and_overlaps_are_cut():
    cues = cues_from_chunks([(0.0, 1.0, "One."), (0.9, 2.0, "Two words."), (2.5, 3.0, "")])
    assert [(c.start_s, c.end_s, c.text) for c in cues] == [(0.0, 0.9, "One."), (0.9, 2.0, "Two words.")]


def test_two_lines_are_balanced():
    (cue,) = cues_from_chunks([(0.0, 3.0, "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj")], 84, 42)
    assert cue.text == "aaaa bbbb cccc dddd eeee\nffff gggg hhhh iiii jjjj"


def test_text_without_spaces_is_cut_to_fit():
    text = "我" * 100 + "。"
    cues = cues_from_chunks([(0.0, 10.0, text)], max_chars_per_cue=84, max_line_chars=42)
    assert "".join(cue.text.replace("\n", "") for cue in cues) == text
    assert all(len(line) <= 42 for cue in cues for line in cue.text.split("\n"))


def test_timestamps_round_down_and_allow_long_audio():
    cues = [
        Cue(start_s=1.001, end_s=1.9999, text="a"),
        Cue(start_s=3 * 3600 + 61.5, end_s=100 * 3600, text="b"),
    ]
    srt = to_srt(cues)
    assert srt == "1\n00:00:01,001 --> 00:00:01,999\na\n\n2\n03:01:01,500 --> 100:00:00,000\nb\n"
    assert to_vtt(cues).startswith("WEBVTT\n\n00:00:01.001 --> 00:00:01.999\na\n\n03:01:01.500")


def test_empty_and_bad_input():
    assert cues_from_chunks([]) == [] and to_srt([]) == "" and to_vtt([]) == "WEBVTT\n"
    with pytest.raises(ValueError, match="chunk 1"):
        cues_from_chunks([(1.0, 2.0, "a"), (0.5, 2.0, "b")])
    with pytest.raises(ValueError, match="chunk 0"):
        cues_from_chunks([(2.0, 1.0, "a")])
    with pytest.raises(ValidationError):
        Cue(start_s=2.0, end_s=1.0, text="a")


def test_a_sentence_end_is_preferred_to_a_later_comma():
    text = "Alpha beta gamma delta. Epsilon zeta, eta theta iota kappa lambda mu nu xi omicron pi."
    cues = cues_from_chunks([(0.0, 5.0, text)], max_chars_per_cue=40, max_line_chars=20)
    assert cues[0].text == "Alpha beta\ngamma delta."
