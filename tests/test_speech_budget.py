"""Chunks budgeted by seconds of speech, per language: the estimate, and chunking held to it in every script."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.languages import BARK_LANGUAGES
from pipeline.speech_time import (
    MAX_SPEECH_S,
    PACES,
    TARGET_SPEECH_S,
    count_units,
    cumulative_units,
    estimate_speech_seconds,
)
from pipeline.text import ChunkBudget, make_chunks, normalize_text

# Words of each language, in its script, with sentence and clause marks; CJK without spaces.
WORDS = {
    "en": "the lighthouse keeper climbed spiral stairs every evening and wiped great lens",
    "de": "der Leuchtturmwärter stieg jeden Abend die Wendeltreppe hinauf und putzte große Linse",
    "es": "el farero subía cada tarde la escalera de caracol y limpiaba gran lente",
    "fr": "le gardien du phare montait chaque soir escalier en colimaçon et essuyait grande lentille",
    "hi": "प्रकाशस्तंभ का रखवाला हर शाम घुमावदार सीढ़ियाँ चढ़ता था और बड़ा लेंस पोंछता",
    "it": "il guardiano del faro saliva ogni sera la scala a chiocciola e puliva grande lente",
    "ja": "灯台守は毎晩らせん階段を登り大きなレンズを拭きました",
    "ko": "등대지기는 매일 저녁 나선형 계단을 올라가 큰 렌즈를 닦았다",
    "pl": "latarnik co wieczór wspinał się po krętych schodach i przecierał wielką soczewkę",
    "pt": "o faroleiro subia todas as noites a escada em caracol e limpava grande lente",
    "ru": "смотритель маяка каждый вечер поднимался по винтовой лестнице и протирал линзу",
    "tr": "deniz feneri bekçisi her akşam döner merdiveni çıkar ve büyük merceği silerdi",
    "zh": "灯塔看守人每天傍晚爬上螺旋楼梯擦拭巨大的透镜",
}
SPACELESS = {"ja", "zh"}
SENTENCE_END = {"ja": "。", "zh": "。", "hi": "।"}
CLAUSE_MARK = {"ja": "、", "zh": "，"}


def _units_of(language: str) -> list[str]:
    words = WORDS[language]
    return list(words) if language in SPACELESS else words.split()


@st.composite
def text_in(draw, language: str) -> str:
    """Paragraphs of sentences of the language's words, of any length (a sentence of 400 words too)."""
    units = _units_of(language)
    glue = "" if language in SPACELESS else " "
    paragraphs = []
    for _ in range(draw(st.integers(1, 3))):
        sentences = []
        for _ in range(draw(st.integers(1, 6))):
            clauses = [
                glue.join(draw(st.lists(st.sampled_from(units), min_size=1, max_size=draw(st.sampled_from([8, 40, 400])))))
                for _ in range(draw(st.integers(1, 3)))
            ]
            clause_mark = CLAUSE_MARK.get(language, ",") + ("" if language in SPACELESS else " ")
            sentences.append(clause_mark.join(clauses) + SENTENCE_END.get(language, "."))
        paragraphs.append(glue.join(sentences))
    return "\n\n".join(paragraphs)


def _tokens(text: str) -> int:
    """A stand-in tokenizer: a token per word or mark, and per CJK character."""
    return len(re.findall(r"[\u3040-\u30ff\u4e00-\u9fff]|\w+|[^\w\s]", text))


def _check_chunks(text: str, language: str, budget: ChunkBudget) -> None:
    chunks = make_chunks(text, _tokens, budget, language)
    normalized = normalize_text(text)
    # Nothing lost or reordered: joined, the chunks are the normalised text up to whitespace.
    assert re.sub(r"\s", "", "".join(c.text for c in chunks)) == re.sub(r"\s", "", normalized)
    position = 0
    for chunk in chunks:
        assert chunk.text.strip() == chunk.text != ""
        assert chunk.n_tokens <= budget.max_tokens
        single_word = language in SPACELESS and len(chunk.text) == 1 or " " not in chunk.text
        assert estimate_speech_seconds(chunk.text, language) <= budget.max_speech_s or single_word
        start = normalized.index(chunk.text, position)
        end = start + len(chunk.text)
        # No word cut: a spaced script's chunk ends at a space or a paragraph end; in CJK any
        # character boundary is between words.
        if language not in SPACELESS and end < len(normalized):
            assert normalized[end].isspace()
        position = end


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), target=st.floats(1, 12), over=st.floats(0, 4))
def test_every_language_chunks_within_the_speech_maximum_without_cutting_words(data, target, over):
    for language in BARK_LANGUAGES:
        text = data.draw(text_in(language), label=language)
        _check_chunks(text, language, ChunkBudget(200, target_speech_s=target, max_speech_s=target + over))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_language_chunks_within_the_default_budget(data):
    for language in BARK_LANGUAGES:
        _check_chunks(data.draw(text_in(language), label=language), language, ChunkBudget(200))


@given(text=st.text(max_size=300), language=st.sampled_from(BARK_LANGUAGES), cut=st.integers(0, 300))
def test_prefix_counts_agree_with_counting_a_slice(text, language, cut):
    """What the chunker bisects over is exactly the estimate of the slice, between words."""
    prefix = cumulative_units(text, language)
    assert len(prefix) == len(text) + 1 and prefix[-1] == count_units(text, language)
    spaces = [i for i, ch in enumerate(text) if ch.isspace()]
    if spaces:
        at = spaces[cut % len(spaces)]
        assert prefix[at] == count_units(text[:at], language)
        assert prefix[-1] - prefix[at] == count_units(text[at:], language)


def test_every_bark_language_has_a_pace_with_its_source():
    assert set(PACES) == set(BARK_LANGUAGES)
    assert all(p.source and p.per_second > 0 for p in PACES.values())


def test_units_per_script():
    assert count_units("我们去公园散步。", "zh") == 7  # a character a syllable
    assert count_units("きゃりー", "ja") == 3  # kya-ri-i: a small kana joins the mora before
    assert count_units("東京", "ja") == 4  # two morae a kanji
    assert count_units("안녕하세요", "ko") == 5  # a Hangul block a syllable
    assert count_units("नमस्ते", "hi") == 3  # na-mas-te: the virama silences the s
    assert count_units("The quick brown fox jumps over the lazy dog.", "en") == 11
    assert count_units("make time", "en") == 2  # a silent final e
    assert count_units("HTTP", "en") == 4  # no vowel: spelled out


def test_the_same_characters_are_not_the_same_seconds_in_every_script():
    """The reported problem: a 169-character Chinese chunk (half a minute) passed a budget of 220
    characters. By speech, Chinese runs far longer per character than English."""
    chinese = "灯塔看守人每天傍晚爬上螺旋楼梯。" * 11  # 176 characters
    english = "The keeper climbed the stairs. " * 6  # 186 characters
    assert estimate_speech_seconds(chinese[:169], "zh") > 3 * estimate_speech_seconds(english[:169], "en")


CHINESE_PASSAGE = (
    "灯塔看守人每天傍晚都会沿着螺旋楼梯爬上塔顶，一共一百一十二级台阶，他熟悉每一级在靴子下发出的声音。"
    "到了塔顶，他用柔软的布擦拭巨大的透镜，修剪灯芯，然后划亮一根火柴。火焰燃了起来。"
    "远处的海面上，一条渔船正慢慢地调头回家。他坐在窗边，端着一杯茶和一个笔记本，写下风向、天空和海面的情况，"
    "就像他三十年来一直做的那样。他闭上眼睛，静静地听着海浪。"
)


def test_a_chinese_passage_of_169_characters_is_split_within_the_maximum():
    assert len(CHINESE_PASSAGE) == 169
    assert estimate_speech_seconds(CHINESE_PASSAGE, "zh") > 2 * MAX_SPEECH_S
    chunks = make_chunks(CHINESE_PASSAGE, _tokens, ChunkBudget(200), "zh")
    assert len(chunks) >= 4
    assert all(estimate_speech_seconds(c.text, "zh") <= MAX_SPEECH_S for c in chunks)
    assert "".join(c.text for c in chunks) == CHINESE_PASSAGE


ENGLISH_PARAGRAPH = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. There were one hundred and "
    "twelve steps, and he knew each of them by the sound it made under his boots. At the top, he wiped the "
    "great lens with a soft cloth, trimmed the wick, and struck a match. The flame caught. Far out at sea, a "
    "fishing boat turned slowly toward home. He sat by the window with a cup of tea and a notebook, and wrote "
    "down the wind, the sky and the sea, as he had done for thirty years."
)


def test_an_english_paragraph_gives_chunks_near_the_target():
    chunks = make_chunks(ENGLISH_PARAGRAPH, _tokens, ChunkBudget(200), "en")
    seconds = [estimate_speech_seconds(c.text, "en") for c in chunks]
    assert len(chunks) > 1
    # Whole sentences within the target (none here is over it alone), each chunk filled as far
    # as the next sentence allows: with it, a chunk would pass the target.
    assert all(s <= TARGET_SPEECH_S for s in seconds)
    assert all(a + b > TARGET_SPEECH_S for a, b in zip(seconds, seconds[1:]))
    assert sum(seconds) / len(seconds) >= TARGET_SPEECH_S / 2
