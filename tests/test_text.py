"""Text front end: normalisation, structure, sentence splitting, and chunks within both budgets."""

from __future__ import annotations

import ast
import math
import random
import re
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline.text as text_module
from pipeline.speech_time import estimate_speech_seconds
from pipeline.text import (
    CUE,
    ChunkBudget,
    TextChunk,
    chapters,
    detect_language,
    make_chunks,
    normalize_text,
    split_sentences,
)
from workers.settings import BarkSettings

TEXT_WINDOW = BarkSettings().semantic.max_input_semantic_length  # the semantic model's text tokens (256)


def count_words(text: str) -> int:
    return len(text.split())


def budget(max_tokens: int, max_chars: int | None = None, **speech: float) -> ChunkBudget:
    """A budget of tokens, at the default speech target and maximum unless given, no character cap unless given."""
    return ChunkBudget(max_tokens, max_chars=max_chars, **speech)


def words_and_marks(text: str) -> int:
    """A stand-in tokenizer: one token per run of word characters and per other mark."""
    return len(re.findall(r"\w+|[^\w\s]", text))


# --- normalize_text ---------------------------------------------------------


def test_normalize_collapses_whitespace_and_drops_controls():
    assert normalize_text("  Hello,\n\tworld!\r\n  ") == "Hello, world!"
    assert normalize_text("a\x00b\x07c\x1bd\u200be\ufefff") == "abcdef"
    assert normalize_text("a\u00a0b\u3000c\u2028d") == "a b c d"


def test_normalize_composes_unicode():
    assert normalize_text("e\u0301") == "\u00e9"
    assert normalize_text("Cafe\u0301") == "Café"


def test_normalize_keeps_bark_cues():
    text = "[laughs] WOW — that was... great ♪ la la ♪ [clears throat] hmm… [MAN] Hi. [WOMAN] Hello."
    assert normalize_text(text) == text


def test_normalize_keeps_paragraphs_and_chapters_in_canonical_form():
    text = "\f\n# One\r\n\r\nFirst  para\nstill first.\n \t\nSecond.\u2029Third.\n\x00\n\fTwo\f\f \n\n"
    assert normalize_text(text) == "# One\n\nFirst para still first.\n\nSecond.\n\nThird.\fTwo"
    assert chapters(text) == [["# One", "First para still first.", "Second.", "Third."], ["Two"]]


def test_normalize_is_idempotent():
    once = normalize_text(" x\n\n\n y\x00 \f z ")
    assert once == "x\n\ny\fz"
    assert normalize_text(once) == once


# --- detect_language --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("你好，世界。今天天气很好。", "zh"),
        ("今日は天気がいいですね。", "ja"),
        ("오늘은 날씨가 좋네요.", "ko"),
        ("मेरा नाम राम है।", "hi"),
        ("Привет, как дела?", "ru"),
        ("The cat sat on the mat and it was happy.", "en"),
        ("Der Hund ist nicht mit der Katze und die Maus.", "de"),
        ("El perro y los gatos que viven con una familia.", "es"),
        ("Le chat et les chiens ne sont pas dans la maison.", "fr"),
        ("Il gatto non è di casa, ma sono gli amici.", "it"),
        ("To nie jest to, co się wydaje, ale czy na pewno?", "pl"),
        ("O gato não é uma coisa para você, do que em casa.", "pt"),
        ("Bu bir kedi ve çok güzel bir hayvan.", "tr"),
        ("", "en"),
        ("12345 !!!", "en"),
        ("He said 你好 and left for the day with the others.", "en"),
    ],
)
def test_detect_language_by_script_and_common_words(text, language):
    assert detect_language(text) == language


# --- split_sentences --------------------------------------------------------


def test_split_on_terminators_with_closing_quotes_and_brackets():
    text = 'He left. Did he? Yes! "Quite so." (Really?) Then he went. Yes.) No.'
    assert split_sentences(text) == [
        "He left.", "Did he?", "Yes!", '"Quite so."', "(Really?)", "Then he went.", "Yes.)", "No.",
    ]


def test_no_split_after_abbreviations_initials_decimals_or_before_lowercase():
    for text in [
        "Mr. Smith met Dr. Jones and Mrs. Brown.",
        "Bring fruit, e.g. apples, i.e. red ones.",
        "J. R. R. Tolkien wrote it.",
        "It costs 3.50 dollars at St. Mary's.",
        "She paused... and then went on.",
        "The U.S. Navy sailed at 10 a.m. sharp.",
        "Version 2.0.1 is out.",
    ]:
        assert split_sentences(text) == [text], text
    assert split_sentences("The value is 3.14. Next one.") == ["The value is 3.14.", "Next one."]


def test_sentences_never_span_paragraphs():
    assert split_sentences("One line\nstill one\n\nTwo\fThree") == ["One line still one", "Two", "Three"]


def test_split_sentences_of_blank_text():
    assert split_sentences("") == []
    assert split_sentences("   \n\n\f ") == []


# One natural passage per Bark language, with the sentences it must give: each
# has a trap for a naive splitter (abbreviations, ordinals, decimals, quotes,
# no spaces, danda, inverted marks, French spacing).
LANGUAGE_EXAMPLES = {
    "en": [
        "Dr. Watson arrived at 5 p.m. on Friday.",
        "Was it raining?",
        "It was!",
        "He paid $3.50 for a cab, i.e. far too much.",
    ],
    "de": [
        "Am 3. Oktober fuhren wir mit Hrn. Weber nach Berlin.",
        "Das Wetter war z. B. sehr schön!",
        "Wer hätte das gedacht?",
    ],
    "es": ["¿Vienes mañana?", "¡Claro que sí!", "El Sr. García nos espera a las 10.30 en la plaza."],
    "fr": ["M. Dupont est arrivé hier soir.", "Avez-vous vu son chien ?", "Oui !", "Il est très gentil."],
    "hi": ["मेरा नाम राम है।", "डॉ. शर्मा दिल्ली में रहते हैं।", "क्या आप भी वहीं रहते हैं?", "हाँ!"],
    "it": ["Il dott. Rossi è arrivato alle 9.", "Come stai?", "Sto bene, grazie!"],
    "ja": ["今日はとても暑いですね。", "「本当に暑い！」と彼は言った。", "明日は雨が降るでしょうか？"],
    "ko": ["오늘은 날씨가 정말 좋네요.", "공원에 갈까요?", "네, 좋아요!", '그는 "알겠어요."라고 말했다.'],
    "pl": ["Prof. Nowak przyszedł o godz. 8 rano.", "Czy pan wie, gdzie jest dworzec?", "Tak, to niedaleko!"],
    "pt": ["O Sr. Silva chegou ontem.", "Você viu o carro dele?", "Sim, é muito bonito!"],
    "ru": ["А. С. Пушкин родился в Москве.", "Вы читали его стихи?", "Да, т. е. некоторые из них!"],
    "tr": ["Dr. Yılmaz bugün hastaneye geldi.", "Nasılsınız?", "Çok iyiyim, teşekkürler!"],
    "zh": ["今天天气很好。", "我们去公园散步吧！", "你觉得怎么样？", "Mr. Smith说：“好主意。”"],
}
NO_SPACES = {"ja", "zh"}


@pytest.mark.parametrize("language", sorted(LANGUAGE_EXAMPLES))
def test_sentences_in_every_bark_language(language):
    sentences = LANGUAGE_EXAMPLES[language]
    text = ("" if language in NO_SPACES else " ").join(sentences)
    assert split_sentences(text, language) == sentences
    assert split_sentences(text, "auto") == sentences  # the guessed language does as well


def test_chinese_and_japanese_split_without_spaces_in_any_language_setting():
    for language in ("zh", "ja", "en"):
        assert split_sentences("你好。我很好！你呢？", language) == ["你好。", "我很好！", "你呢？"]
        assert split_sentences("「はい。」そうです。", language) == ["「はい。」", "そうです。"]


# --- make_chunks: examples --------------------------------------------------


def test_sentences_are_packed_together_while_they_fit():
    chunks = make_chunks("One two. Three four. Five six seven.", count_words, budget(4))
    assert chunks == [
        TextChunk(0, "One two. Three four.", 4, "sentence"),
        TextChunk(1, "Five six seven.", 3, "end"),
    ]


def test_chunks_never_span_paragraphs_or_chapters():
    text = "One. Two.\n\nThree.\fFour. Five.\n\n\n\nSix."
    chunks = make_chunks(text, count_words, budget(200))
    assert [(c.text, c.break_after) for c in chunks] == [
        ("One. Two.", "paragraph"),
        ("Three.", "chapter"),
        ("Four. Five.", "paragraph"),
        ("Six.", "end"),
    ]


def test_long_sentence_splits_at_clauses_then_words():
    text = "Alpha beta gamma, delta epsilon; zeta eta theta iota kappa lambda mu."
    chunks = make_chunks(text, count_words, budget(3))
    assert [c.text for c in chunks] == [
        "Alpha beta gamma,", "delta epsilon;", "zeta eta theta", "iota kappa lambda", "mu.",
    ]
    assert [c.break_after for c in chunks] == ["sentence"] * 4 + ["end"]


def test_em_dash_is_a_clause_boundary():
    chunks = make_chunks("We waited — and waited — for hours on end.", count_words, budget(4))
    assert [c.text for c in chunks] == ["We waited —", "and waited —", "for hours on end."]


def test_the_optional_character_cap_is_respected_too():
    text = "Short one. " * 10
    chunks = make_chunks(text, count_words, budget(200, max_chars=25))
    assert all(len(c.text) <= 25 for c in chunks)
    assert [c.text for c in chunks][:2] == ["Short one. Short one.", "Short one. Short one."]


def test_a_word_over_the_character_cap_stays_whole():
    chunks = make_chunks("tiny Supercalifragilistic end", count_words, budget(200, max_chars=8))
    assert [c.text for c in chunks] == ["tiny", "Supercalifragilistic", "end"]


def test_only_a_word_over_the_token_budget_is_cut_mid_word():
    chunks = make_chunks("tiny Supercalifragilistic end", len, budget(8))
    assert [c.text for c in chunks] == ["tiny", "Supercal", "ifragili", "stic", "end"]


def test_hard_cut_keeps_combining_marks_with_their_letter():
    word = "x\u0323" * 5  # x with dot below has no precomposed form: two code points
    chunks = make_chunks(word, len, budget(3))
    assert [c.text for c in chunks] == ["x\u0323"] * 5


def test_cues_are_words_never_cut_inside():
    text = "Well [clears throat] I think [laughs] that is it. [MAN] Yes."
    chunks = make_chunks(text, count_words, budget(200, max_chars=10))
    assert [c.text for c in chunks] == [
        "Well", "[clears throat]", "I think", "[laughs]", "that is", "it.", "[MAN] Yes.",
    ]
    glued = make_chunks("Ha[laughs]ha.", len, budget(200, max_chars=4))
    assert [c.text for c in glued] == ["Ha", "[laughs]", "ha."]


def test_a_cue_over_the_token_budget_is_an_error_not_a_cut():
    with pytest.raises(ValueError, match=r"'\[clears throat\]' alone exceeds"):
        make_chunks("[clears throat]", len, budget(10, max_chars=100))


def test_cjk_without_spaces_splits_at_sentences_clauses_then_characters():
    text = "今天天气很好，我们去公园散步。然后我们回家吃饭，看电视，睡觉。"
    chunks = make_chunks(text, len, budget(200, max_chars=12))
    assert [c.text for c in chunks] == [
        "今天天气很好，", "我们去公园散步。", "然后我们回家吃饭，", "看电视，睡觉。",
    ]
    # No clause marks at all: every character is a word; punctuation stays with its word.
    chunks = make_chunks("我们去公园散步。「好」", len, budget(200, max_chars=4))
    assert [c.text for c in chunks] == ["我们去公", "园散步。", "「好」"]


def test_token_budget_is_checked_with_count_tokens():
    calls = []

    def counting(text: str) -> int:
        calls.append(text)
        return 2 * len(text.split())  # every word costs two tokens

    chunks = make_chunks("a b c d e f g", counting, budget(4))
    assert [c.text for c in chunks] == ["a b", "c d", "e f", "g"]
    assert all(c.n_tokens <= 4 for c in chunks) and calls


def test_empty_text_has_no_chunks():
    assert make_chunks(" \n\f\n ", count_words, budget(10, max_chars=10)) == []


def test_impossible_budget_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        make_chunks("abc", lambda s: 5, budget(4, max_chars=100))
    for bad in ({"max_chars": 0}, {"target_speech_s": 0}, {"target_speech_s": 5, "max_speech_s": 4}):
        with pytest.raises(ValueError):
            make_chunks("abc", count_words, budget(4, **bad))


def test_sentences_are_packed_to_the_speech_target():
    text = "Short one. " * 10
    two = estimate_speech_seconds("Short one. Short one.", "en")
    chunks = make_chunks(text, count_words, budget(200, target_speech_s=two, max_speech_s=two), "en")
    assert [c.text for c in chunks] == ["Short one. Short one."] * 5


def test_a_sentence_over_the_target_stays_whole_up_to_the_maximum():
    long = "The keeper climbed the spiral stairs, wiped the lens, and struck a match."
    text = f"{long} Then he slept."
    seconds = estimate_speech_seconds(long, "en")
    whole = make_chunks(text, count_words, budget(200, target_speech_s=seconds / 2, max_speech_s=seconds), "en")
    assert [c.text for c in whole] == [long, "Then he slept."]
    # Over the maximum: packed from its clauses up to the target (the first clause alone is over it).
    split = make_chunks(text, count_words, budget(200, target_speech_s=seconds / 2, max_speech_s=seconds - 0.1), "en")
    assert [c.text for c in split] == [
        "The keeper climbed the spiral stairs,", "wiped the lens, and struck a match.", "Then he slept.",
    ]
    assert estimate_speech_seconds(split[0].text, "en") > seconds / 2 >= estimate_speech_seconds(split[1].text, "en")


def test_a_word_over_the_speech_maximum_stays_whole():
    chunks = make_chunks("tiny Supercalifragilistic end", count_words, budget(200, target_speech_s=0.5, max_speech_s=0.5), "en")
    assert [c.text for c in chunks] == ["tiny", "Supercalifragilistic", "end"]


# --- make_chunks: work grows with the text, not with its square ----------------

LONG_PARAGRAPH_CHARS = 1_000_000
RUN_CHARS = 400  # 10 s is about 37 syllables here: under 400 characters of these words


def long_paragraph(kind: str, size: int = LONG_PARAGRAPH_CHARS) -> str:
    """One paragraph of ``size`` characters: varied sentences, words without a single
    mark, "Hi." over and over, or CJK without spaces or sentence ends."""
    rng = random.Random(0)
    words = "the narrator spoke softly and then lighthouse keeper über naïve Привет".split()
    pieces, length = [], 0
    while length < size:
        if kind == "sentences":
            sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 15)))
            piece = sentence[0].upper() + sentence[1:] + rng.choice(".!?,;")
        elif kind == "words":
            piece = rng.choice(words)
        elif kind == "tiny sentences":
            piece = "Hi."
        else:
            piece = rng.choice(["我们去公园散步", "今天天气很好", "そうです", "，"])
        pieces.append(piece)
        length += len(piece) + 1
    return ("" if kind == "cjk" else " ").join(pieces)[:size]


class CountingTokenizer:
    """A token counter that also counts its calls and the characters it is given."""

    def __init__(self, count_tokens):
        self.count_tokens = count_tokens
        self.calls = 0
        self.chars = 0

    def __call__(self, text: str) -> int:
        self.calls += 1
        self.chars += len(text)
        return self.count_tokens(text)


@pytest.mark.parametrize(
    ("kind", "count_tokens", "max_tokens"),
    [
        ("sentences", words_and_marks, 200),  # the speech budget ends each chunk
        ("words", words_and_marks, 200),  # one 1 MB sentence: packed from its words
        ("tiny sentences", words_and_marks, 200),  # a candidate sentence end every 4 characters
        ("words", len, 100),  # the token budget ends each chunk: found by bisection
        ("cjk", len, 100),  # no spaces: every character is a word
    ],
)
def test_chunking_one_long_paragraph_reads_each_character_a_bounded_number_of_times(
    kind, count_tokens, max_tokens, monkeypatch
):
    """Linear work, counted rather than timed (the quadratic version took 582 s on 1 MB):
    the tokenizer is called a few times per chunk, never once per sentence or word,
    and the sentence-end rule reads a fixed context around each candidate end, never
    the whole paragraph."""
    text = long_paragraph(kind)
    tokenizer = CountingTokenizer(count_tokens)
    context_chars = []
    is_sentence_end = text_module._is_sentence_end

    def reading_sentence_end(context: str, cut: int, language: str) -> bool:
        context_chars.append(len(context))
        return is_sentence_end(context, cut, language)

    monkeypatch.setattr(text_module, "_is_sentence_end", reading_sentence_end)
    limits = budget(max_tokens)
    chunks = make_chunks(text, tokenizer, limits, "en")

    assert re.sub(r"\s", "", "".join(c.text for c in chunks)) == re.sub(r"\s", "", text)
    assert all(c.n_tokens <= max_tokens and estimate_speech_seconds(c.text, "en") <= limits.max_speech_s for c in chunks)
    # A bisection over the pieces of a run within the speech target (at least a syllable per
    # piece, under RUN_CHARS characters in these texts), and the first try: per chunk.
    calls_per_chunk = 2 + math.log2(RUN_CHARS)
    assert tokenizer.calls <= calls_per_chunk * len(chunks)
    assert tokenizer.chars <= calls_per_chunk * len(text)
    assert sum(context_chars) <= 2 * text_module._SENTENCE_CONTEXT_CHARS * len(text) / 4  # an end every 4 chars at most


# --- make_chunks: properties for any input ----------------------------------

CUES = ["[laughs]", "[sighs]", "[music]", "[clears throat]", "[MAN]", "[WOMAN]"]
PIECES = [
    *CUES,
    "♪", "—", "...", "…", "CAPS", "Mr.", "e.g.", "J.", "3.14", "10:30", "3,000", "U.S.",
    "the", "narrator", "spoke", "softly", "über", "naïve", "antidisestablishmentarianism",
    "Привет", "дела", "नमस्ते", "हूँ", "안녕하세요", "학생입니다",
    "今天天气很好", "我们去公园散步", "「はい」", "そうです", "テキスト",
    ".", "!", "?", ",", ";", ":", "。", "！", "？", "，", "、", "।", '"', "(", ")",
]
# Between two pieces: nothing (CJK has no spaces), spaces, a newline, and
# characters that normalisation removes.
GLUE = ["", " ", " ", " ", "  ", "\n", "\t", "\u3000", "\x00", "\u200b", "\u00a0"]
PARAGRAPH_SEPARATORS = ["\n\n", "\n \n", "\r\n\r\n", "\n\t\n\n", "\u2029"]
CHAPTER_SEPARATORS = ["\f", "\n\f\n", "\n\n\f\n\n"]
# Arbitrary visible characters too, beyond the pools (no controls or spaces:
# those are the separators' job, so structure stays known).
fuzz = st.text(
    st.characters(exclude_categories=("Cc", "Cf", "Cs", "Cn", "Zs", "Zl", "Zp", "Mn", "Mc", "Me", "Sk")),
    min_size=1,
    max_size=6,
)
piece = st.one_of(st.sampled_from(PIECES), st.sampled_from(PIECES), fuzz)


@st.composite
def paragraph(draw) -> list[str]:
    """A paragraph's pieces, and the text with glue between them ([] is an empty paragraph)."""
    pieces = draw(st.lists(piece, max_size=25))
    glue = draw(st.lists(st.sampled_from(GLUE), min_size=len(pieces) + 1, max_size=len(pieces) + 1))
    text = "".join(g + p for g, p in zip(glue, pieces + [""]))
    return pieces, text


@st.composite
def structured_text(draw) -> tuple[str, list[list[int]]]:
    """Text with paragraphs and chapters, and its structure: pieces per paragraph per chapter."""
    book = draw(st.lists(st.lists(paragraph(), max_size=4), min_size=1, max_size=4))
    text = draw(st.sampled_from(CHAPTER_SEPARATORS)).join(
        draw(st.sampled_from(PARAGRAPH_SEPARATORS)).join(text for _, text in chapter) for chapter in book
    )
    return text, [[len(pieces) for pieces, _ in chapter] for chapter in book]


def _no_space_script(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "FULLWIDTH", "IDEOGRAPHIC", "HALFWIDTH"))


def _allowed_glued_cut(text: str, at: int, count_tokens, max_tokens: int) -> bool:
    """A cut with no space at it is between words only in CJK, at a cue, or after a danda."""
    text = CUE.sub(lambda cue: cue.group().replace(" ", "_"), text)  # a cue is one word
    before, after = text[:at], text[at:]
    near = re.sub(r"[^\w]", "", before)[-1:] + re.sub(r"[^\w]", "", after)[:1]
    word = re.search(r"\S*$", before).group() + re.match(r"\S*", after).group()
    return (
        any(map(_no_space_script, before[-1] + after[0] + near))
        or before.endswith("]") or after.startswith("[")
        or before[-1] in "।॥"
        or count_tokens(word) > max_tokens  # a word over the hard limit is cut anywhere
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=structured_text(),
    count_tokens=st.sampled_from([len, words_and_marks]),
    max_chars=st.one_of(st.none(), st.integers(1, 30), st.integers(1, 400)),
    # Tiny budgets reach the error for an uncuttable unit; the others never do.
    max_tokens=st.one_of(st.integers(1, 8), st.integers(16, 60), st.integers(16, TEXT_WINDOW)),
    target_s=st.floats(0.2, 15),
    over_target_s=st.floats(0, 5),
)
def test_chunks_keep_all_text_in_order_within_budget_and_structure(
    case, count_tokens, max_chars, max_tokens, target_s, over_target_s
):
    text, structure = case
    limits = budget(max_tokens, max_chars, target_speech_s=target_s, max_speech_s=target_s + over_target_s)
    try:
        chunks = make_chunks(text, count_tokens, limits, "auto")
    except ValueError as exc:
        # Only a unit that cannot be cut (one character, one cue) may be over the token budget.
        unit = ast.literal_eval(str(exc).split(" alone exceeds")[0])
        assert count_tokens(unit) > max_tokens
        assert CUE.fullmatch(unit) or all(unicodedata.category(c)[0] == "M" for c in unit[1:])
        return
    normalized = normalize_text(text)
    language = detect_language(text)  # what "auto" chunked by

    # (a) Nothing lost, nothing reordered.
    assert re.sub(r"\s", "", "".join(c.text for c in chunks)) == re.sub(r"\s", "", normalized)
    position = 0
    for index, (chunk, following) in enumerate(zip(chunks, chunks[1:] + [None])):
        # (c) No chunk is empty or padded, and indexes count up.
        assert chunk.text and chunk.text == chunk.text.strip()
        assert chunk.index == index
        # (b) Within every budget; only a single word may be over the speech maximum or the character cap.
        assert chunk.n_tokens == count_tokens(chunk.text) <= max_tokens
        single_word = not re.search(r"\s", CUE.sub("", chunk.text))
        assert estimate_speech_seconds(chunk.text, language) <= limits.max_speech_s or single_word
        assert max_chars is None or len(chunk.text) <= max_chars or single_word
        # Cuts fall between words: at spaces, or where words have none between them.
        start = normalized.index(chunk.text, position)
        position = start + len(chunk.text)
        if following and following.text == normalized[position : position + len(following.text)]:
            assert _allowed_glued_cut(normalized, position, count_tokens, max_tokens)

    # (d) The last chunk ends the text; paragraph and chapter breaks are those of the input.
    chapters_ = [[n for n in chapter if n] for chapter in structure]
    chapters_ = [chapter for chapter in chapters_ if chapter]
    breaks = [c.break_after for c in chunks]
    assert breaks[-1:] == (["end"] if chapters_ else [])
    assert breaks.count("end") == len(breaks[-1:])
    assert breaks.count("chapter") == max(len(chapters_) - 1, 0)
    assert breaks.count("paragraph") == sum(len(chapter) - 1 for chapter in chapters_)


@settings(max_examples=100, deadline=None)
@given(case=structured_text(), extra=st.floats(0, 10), under=st.floats(0, 1))
def test_sentences_that_fit_are_never_split(case, extra, under):
    text, _ = case
    sentences = split_sentences(text, "en")
    longest = max((estimate_speech_seconds(s, "en") for s in sentences), default=0) + extra + 0.1
    chunks = make_chunks(text, count_words, budget(TEXT_WINDOW, target_speech_s=max(longest * under, 0.01), max_speech_s=longest), "en")
    # Each chunk is a run of whole consecutive sentences (spaces aside: CJK has none).
    rebuilt = iter(re.sub(r"\s", "", s) for s in sentences)
    for chunk in chunks:
        run, whole = next(rebuilt), re.sub(r"\s", "", chunk.text)
        while run != whole:
            run += next(rebuilt)
            assert len(run) <= len(whole)
    assert next(rebuilt, None) is None
