"""Subtitles: cues from chunk times, SRT and WebVTT that parse back to the same words in order."""

from __future__ import annotations

import bisect
import html
import re

import budoux
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.config import OutputConfig, SubtitlesConfig
from pipeline.subtitles import Cue, count_too_fast, cues_from_chunks, to_srt, to_vtt
from pipeline.text import ChunkBudget, make_chunks
from tests.conftest import REPO

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


@pytest.mark.parametrize("max_line, max_lines", [(42, 2), (20, 2), (30, 1), (12, 1)])
def test_cues_respect_line_and_cue_limits(max_line, max_lines):
    cues = cues_from_chunks(CHUNKS, SubtitlesConfig(max_line_chars=max_line, max_lines=max_lines))
    for cue in cues:
        lines = cue.text.split("\n")
        assert 1 <= len(lines) <= max_lines and all(0 < len(line) <= max_line for line in lines)
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
    (cue,) = cues_from_chunks([(0.0, 3.0, "aaaa bbbb cccc dddd eeee ffff gggg hhhh iiii jjjj")], SubtitlesConfig())
    assert cue.text == "aaaa bbbb cccc dddd eeee\nffff gggg hhhh iiii jjjj"


def test_text_without_spaces_is_cut_to_fit():
    text = "我" * 100 + "。"
    cues = cues_from_chunks([(0.0, 10.0, text)], SubtitlesConfig(max_line_chars_wide=42))
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
    cues = cues_from_chunks([(0.0, 5.0, text)], SubtitlesConfig(max_line_chars=20))
    assert cues[0].text == "Alpha beta\ngamma delta."


# --- reading well: real text in English, Japanese and Chinese ------------------------------------

ENGLISH = (REPO / "examples" / "lighthouse.txt").read_text(encoding="utf-8")
JAPANESE = (
    "灯台守は毎晩、日が暮れると螺旋階段を上った。階段は百十二段あり、彼はその一段一段を、"
    "ブーツの下で鳴る音で覚えていた。\n\n"
    "てっぺんに着くと、彼は柔らかい布で大きなレンズを拭き、芯を整えてから、マッチを擦った。"
    "炎がついた。そして、はるか沖では、一隻の漁船がゆっくりと港の方へ向きを変えた。\n\n"
    "彼は窓辺に座り、お茶と手帳を前にした。風は北東、強まりつつある。空は晴れ、高い雲が少し。"
    "海面は穏やか。「今夜も静かだな」と彼はつぶやいた。三十年間、毎晩同じように書き留めてきたのだ。"
)
CHINESE = (
    "灯塔看守人每天黄昏都会爬上螺旋楼梯。楼梯一共有一百一十二级，他靠靴子踩上去的声音认得每一级。\n\n"
    "到了顶上，他用一块软布擦拭巨大的透镜，修剪灯芯，然后划燃一根火柴。火焰亮了起来。"
    "远处的海面上，一条渔船慢慢地掉头驶向港口。\n\n"
    "他坐在窗边，面前放着一杯茶和一本笔记本。风向：东北，正在增强。天空：晴朗，有几朵高云。"
    "海面：平静。“今晚又是平静的一夜，”他低声说。三十年来，他每天晚上都这样把一切记下来。"
)
# (text, speech rate in characters per second: typical narration, under the reading-speed limit)
TEXTS = {
    "en": (ENGLISH, 15.0),
    "ja": (JAPANESE, 8.0),
    "zh": (CHINESE, 5.0),
}
WHOLE_WORDS = {"ja": ["そして", "海面", "螺旋階段", "漁船"], "zh": ["海面", "渔船", "灯塔", "螺旋", "楼梯"], "en": []}
# Closing punctuation, listed here independently of pipeline.subtitles.
CLOSING = set(".,;:!?)]}»”’、。，．！？：；」』）】》〉")
SILENCE_S = 0.25
CROSSFADE_S = 0.01


def _chunks(language: str, rate: float) -> list[tuple[float, float, str]]:
    """The text front end's real chunks, timed as if spoken at ``rate``: a pause between chunks,
    and a crossfade overlap between the first two."""
    text, _ = TEXTS[language]
    chunks, t = [], 0.0
    for i, chunk in enumerate(make_chunks(text, len, ChunkBudget(10_000), language)):
        start = t - CROSSFADE_S if i == 1 else t
        end = start + len(chunk.text) / rate
        chunks.append((start, end, chunk.text))
        t = end + SILENCE_S
    assert len(chunks) >= 3
    return chunks


def _read_back(cues: list[Cue], tmp_path) -> list[tuple[float, float, list[str]]]:
    path = tmp_path / "cues.srt"
    path.write_text(to_srt(cues), encoding="utf-8")
    return [(start, end, lines) for _, start, end, lines in parse_srt(path.read_text(encoding="utf-8"))]


def _group_by_chunk(chunks, blocks):
    """The read-back cues of each chunk: taken in order until their text equals the chunk's
    (up to whitespace); fails if cues and chunk texts do not line up."""
    groups, i = [], 0
    for _, _, text in chunks:
        target, got, group = "".join(text.split()), "", []
        while got != target:
            assert i < len(blocks) and target.startswith(got), (text, got)
            group.append(blocks[i])
            got += "".join("".join(blocks[i][2]).split())
            i += 1
        groups.append(group)
    assert i == len(blocks)
    return groups


def _offsets(text: str, pieces: list[str]) -> list[int]:
    """Where each piece after the first starts in ``text`` (pieces are its slices, in order)."""
    offsets, at = [], 0
    for n, piece in enumerate(pieces):
        at = text.index(piece, at)
        if n:
            offsets.append(at)
        at += len(piece)
    return offsets


def check_reading(chunks, cues, style: SubtitlesConfig, language: str, tmp_path, *, within_speed: bool):
    blocks = _read_back(cues, tmp_path)
    times = [t for start, end, _ in blocks for t in (start, end)]
    assert times == sorted(times)  # monotonic, no overlap
    segmenter = {"ja": budoux.load_default_japanese_parser(), "zh": budoux.load_default_simplified_chinese_parser()}
    for n, ((start, end, text), group) in enumerate(zip(chunks, _group_by_chunk(chunks, blocks))):
        span_end = min(end, chunks[n + 1][0]) if n + 1 < len(chunks) else end
        assert group and start - 1e-3 <= group[0][0] and group[-1][1] <= span_end + 1e-9  # inside the chunk
        limit = style.max_line_chars_wide if language in ("ja", "zh") else style.max_line_chars
        lines = [line for _, _, cue_lines in group for line in cue_lines]
        assert all(1 <= len(cue_lines) <= style.max_lines for _, _, cue_lines in group)
        assert all(0 < len(line) <= limit for line in lines), lines
        assert not any(line[0] in CLOSING for line in lines), lines  # no cue, no line starts with one
        if within_speed:  # times are read back rounded down to the millisecond
            assert all(len("\n".join(ls)) <= style.max_cps * (b - a + 2e-3) for a, b, ls in group)
        for word in WHOLE_WORDS[language]:
            assert text.count(word) == sum(line.count(word) for line in lines), word
        if language in segmenter:  # every cut between two glued characters is one the segmenter makes,
            phrases = _whole_phrases(segmenter[language], text)  # but in a phrase longer than a line
            bounds = [0, *_offsets(text, phrases), len(text)]
            for cut in _offsets(text, lines):
                if not (text[cut - 1].isspace() or text[cut].isspace()) and cut not in bounds:
                    a, b = bounds[bisect.bisect_left(bounds, cut) - 1 : bisect.bisect_left(bounds, cut) + 1]
                    assert len(text[a:b].strip()) > limit, (text[:cut], text[cut:])


def _whole_phrases(parser, text):
    phrases = parser.parse(text)
    assert "".join(phrases) == text
    return phrases


@pytest.mark.parametrize("language", sorted(TEXTS))
def test_real_text_reads_well(language, tmp_path):
    rate = TEXTS[language][1]
    chunks = _chunks(language, rate)
    style = SubtitlesConfig()
    cues = cues_from_chunks(chunks, style, language)
    check_reading(chunks, cues, style, language, tmp_path, within_speed=True)
    assert count_too_fast(cues, style.max_cps) == 0
    assert len(cues) > len(chunks)  # long chunks need several cues


@pytest.mark.parametrize("language", sorted(TEXTS))
@pytest.mark.parametrize("line, lines", [(6, 1), (8, 2), (12, 1), (20, 2), (30, 2)])
def test_real_text_reads_well_at_any_limits(language, line, lines, tmp_path):
    rate = TEXTS[language][1]
    chunks = _chunks(language, rate)
    if language == "en":
        line *= 2  # English words run to 11 letters ("lighthouse,"): lines of 12 and up
    style = SubtitlesConfig(max_line_chars=line, max_line_chars_wide=line, max_lines=lines)
    check_reading(chunks, cues_from_chunks(chunks, style, language), style, language, tmp_path, within_speed=True)


@pytest.mark.parametrize("language", sorted(TEXTS))
def test_a_chunk_too_short_for_its_text_still_covers_it_in_proportion(language, tmp_path):
    """At three times the reading-speed limit no split can help: every cue is shown while its
    words are spoken, so all are over the limit, share the span by characters, and are counted."""
    style = SubtitlesConfig()
    chunks = _chunks(language, 3 * style.max_cps)
    cues = cues_from_chunks(chunks, style, language)
    check_reading(chunks, cues, style, language, tmp_path, within_speed=False)
    assert count_too_fast(cues, style.max_cps) == len(cues)
    for n, (start, end, text) in enumerate(chunks):
        span_end = min(end, chunks[n + 1][0]) if n + 1 < len(chunks) else end
        own = [c for c in cues if start <= c.start_s and c.end_s <= span_end]
        assert own[0].start_s == start and own[-1].end_s == span_end
        total = sum(len(c.text) for c in own)
        for cue in own:
            assert cue.end_s - cue.start_s == pytest.approx((span_end - start) * len(cue.text) / total)


def test_closing_marks_never_start_a_cue_or_line():
    """Where the old cutter put a lone mark at the start of a line: a line-long CJK run before it."""
    style = SubtitlesConfig(max_line_chars_wide=8)
    for text in ["我们在这里等待了很久。", "「海面は静かだった」と、", "他说：“我们在这里等待。”然后"]:
        for max_lines in (1, 2):
            cues = cues_from_chunks([(0.0, 9.0, text)], style.model_copy(update={"max_lines": max_lines}), "auto")
            lines = [line for cue in cues for line in cue.text.split("\n")]
            assert "".join(lines) == text and not any(line[0] in CLOSING for line in lines), lines
    english = 'He stopped. "Why?" she asked (quietly), and waited; nothing came.'
    for line in range(10, 30):  # the longest word, "(quietly),", fits a line
        cues = cues_from_chunks([(0.0, 5.0, english)], SubtitlesConfig(max_line_chars=line))
        lines = [line for cue in cues for line in cue.text.split("\n")]
        assert " ".join(lines) == english and not any(line[0] in CLOSING for line in lines), lines


def test_sentence_and_clause_ends_make_the_cue_breaks():
    paragraph = TEXTS["en"][0].split("\n\n")[0]  # two sentences, the second of 103 characters
    cues = cues_from_chunks([(0.0, 8.0, paragraph)], SubtitlesConfig())
    assert len(cues) == 3 and all(cue.text.endswith(end) for cue, end in zip(cues, ["dusk.", "steps,", "boots."]))


def test_subtitles_config_is_validated_and_takes_a_switch():
    assert OutputConfig(subtitles=False).subtitles == SubtitlesConfig(enabled=False)
    assert OutputConfig(subtitles={"max_cps": 17}).subtitles.max_cps == 17
    for bad in ({"max_lines": 3}, {"max_cps": 0}, {"max_line_chars": 0}, {"max_line_chars_wide": -1}, {"max_lines": 0}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            OutputConfig(subtitles=bad)
    with pytest.raises(ValidationError, match="max_cpz"):
        OutputConfig(subtitles={"max_cpz": 17})


TOKENS = [
    "The", "sea", "was", "calm,", "and", "then", "he", "said:", '"Stop."', "(Really?)", "ended.", "—",
    "[laughs]", "そして、", "海面は", "静かだった。", "「本当に？」と", "他说：", "“真的吗？”", "海面上", "风平浪静，",
]


@settings(max_examples=150, deadline=None)
@given(
    tokens=st.lists(st.tuples(st.sampled_from(TOKENS), st.booleans()), min_size=1, max_size=40),
    line=st.integers(min_value=12, max_value=40),
    lines=st.integers(min_value=1, max_value=2),
    seconds=st.floats(min_value=0.1, max_value=30),
)
def test_any_mix_of_scripts_keeps_text_order_and_marks(tokens, line, lines, seconds):
    text = "".join(tok + (" " if spaced else "") for tok, spaced in tokens)
    style = SubtitlesConfig(max_line_chars=line, max_line_chars_wide=line, max_lines=lines)
    cues = cues_from_chunks([(1.0, 1.0 + seconds, text)], style)
    assert "".join("".join(c.text.split()) for c in cues) == "".join(text.split())
    assert cues[0].start_s == 1.0 and cues[-1].end_s == 1.0 + seconds
    assert all(a.end_s <= b.start_s + 1e-9 and a.start_s <= a.end_s for a, b in zip(cues, cues[1:]))
    for cue in cues:
        cue_lines = cue.text.split("\n")
        assert len(cue_lines) <= lines and all(0 < len(x) <= line for x in cue_lines), cue_lines
        assert not any(x[0] in CLOSING for x in cue_lines), cue_lines
        assert cue.text.count("[") == cue.text.count("[laughs]") == cue.text.count("]")  # a Bark cue is never cut
