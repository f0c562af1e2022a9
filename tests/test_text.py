"""Text front end: normalisation, sentence splitting, and chunks within both budgets."""

from __future__ import annotations

import random
import re

import pytest

from pipeline.text import TextChunk, make_chunks, normalize_text, split_sentences


def count_words(text: str) -> int:
    return len(text.split())


def wordpiece_like(text: str) -> int:
    """A stand-in tokenizer: one token per 4 characters of each word, at least one."""
    return sum(1 + len(word) // 4 for word in text.split())


# --- normalize_text ---------------------------------------------------------


def test_normalize_collapses_whitespace_and_drops_controls():
    assert normalize_text("  Hello,\n\n\tworld!\r\n  ") == "Hello, world!"
    assert normalize_text("a\x00b\x07c\x1bd\u200be\ufefff") == "abcdef"
    assert normalize_text("a\u00a0b\u3000c\u2028d") == "a b c d"


def test_normalize_composes_unicode():
    assert normalize_text("e\u0301") == "\u00e9"
    assert normalize_text("Cafe\u0301") == "Café"


def test_normalize_keeps_bark_cues():
    text = "[laughs] WOW — that was... great ♪ la la ♪ [clears throat] hmm…"
    assert normalize_text(text) == text


def test_normalize_is_idempotent():
    once = normalize_text(" x\n y\x00 ")
    assert normalize_text(once) == once


# --- split_sentences --------------------------------------------------------


def test_split_on_terminators_with_closing_quotes():
    text = 'He left. Did he? Yes! "Quite so." (Really?) Wait... Then, nothing… The end'
    assert split_sentences(text) == [
        "He left.", "Did he?", "Yes!", '"Quite so."', "(Really?)", "Wait...", "Then, nothing…", "The end",
    ]


def test_no_split_after_abbreviations_initials_or_before_lowercase():
    for text in [
        "Mr. Smith met Dr. Jones and Mrs. Brown.",
        "Bring fruit, e.g. apples, i.e. red ones.",
        "J. R. R. Tolkien wrote it.",
        "It costs 3.50 dollars at St. Mary's.",
        "She paused... and then went on.",
    ]:
        assert split_sentences(text) == [text], text


def test_split_cjk_without_spaces():
    assert split_sentences("你好。我很好！你呢？") == ["你好。", "我很好！", "你呢？"]
    assert split_sentences("「はい。」そうです。") == ["「はい。」", "そうです。"]


def test_split_sentences_of_blank_text():
    assert split_sentences("") == []
    assert split_sentences("   ") == []


# --- make_chunks: examples --------------------------------------------------


def test_sentences_are_packed_together_while_they_fit():
    chunks = make_chunks("One two. Three four. Five six seven.", count_words, 1000, 4)
    assert chunks == [
        TextChunk(0, "One two. Three four.", 4),
        TextChunk(1, "Five six seven.", 3),
    ]


def test_long_sentence_splits_at_clauses_then_words():
    text = "Alpha beta gamma, delta epsilon; zeta eta theta iota kappa lambda mu."
    chunks = make_chunks(text, count_words, 1000, 3)
    assert [c.text for c in chunks] == [
        "Alpha beta gamma,", "delta epsilon;", "zeta eta theta", "iota kappa lambda", "mu.",
    ]


def test_em_dash_is_a_clause_boundary():
    chunks = make_chunks("We waited — and waited — for hours on end.", count_words, 1000, 4)
    assert [c.text for c in chunks] == ["We waited —", "and waited —", "for hours on end."]


def test_char_budget_is_respected_too():
    text = "Short one. " * 10
    chunks = make_chunks(text, count_words, 25, 1000)
    assert all(len(c.text) <= 25 for c in chunks)
    assert [c.text for c in chunks][:2] == ["Short one. Short one.", "Short one. Short one."]


def test_only_an_overlong_word_is_cut_mid_word():
    chunks = make_chunks("tiny Supercalifragilistic end", len, 8, 1000)
    assert [c.text for c in chunks] == ["tiny", "Supercal", "ifragili", "stic", "end"]


def test_hard_cut_keeps_combining_marks_with_their_letter():
    word = "x\u0323" * 5  # x with dot below has no precomposed form: two code points
    chunks = make_chunks(word, len, 3, 1000)
    assert [c.text for c in chunks] == ["x\u0323"] * 5


def test_cjk_without_spaces_splits_at_sentences_and_clauses():
    text = "今天天气很好，我们去公园散步。然后我们回家吃饭，看电视，睡觉。"
    chunks = make_chunks(text, len, 12, 1000)
    assert [c.text for c in chunks] == [
        "今天天气很好，", "我们去公园散步。", "然后我们回家吃饭，", "看电视，睡觉。",
    ]


def test_token_budget_is_checked_with_count_tokens():
    calls = []

    def counting(text: str) -> int:
        calls.append(text)
        return 2 * len(text.split())  # every word costs two tokens

    chunks = make_chunks("a b c d e f g", counting, 1000, 4)
    assert [c.text for c in chunks] == ["a b", "c d", "e f", "g"]
    assert all(c.n_tokens <= 4 for c in chunks) and calls


def test_empty_text_has_no_chunks():
    assert make_chunks(" \n ", count_words, 10, 10) == []


def test_impossible_budget_is_an_error():
    with pytest.raises(ValueError, match="exceeds"):
        make_chunks("abc", lambda s: 5, 100, 4)
    with pytest.raises(ValueError):
        make_chunks("abc", count_words, 0, 4)


# --- make_chunks: randomized properties --------------------------------------

VOCAB = (
    "the a narrator spoke softly Mr. Dr. e.g. Hello WORLD [laughs] ♪ — ... "
    "3,000 10:30 über café naïve quickly unbelievably antidisestablishmentarianism"
).split()
ENDS = [".", "!", "?", "...", "…", '."', "?)", ""]
MIDS = [",", ";", ":", ""]


def random_text(rng: random.Random) -> str:
    sentences = []
    for _ in range(rng.randint(0, 12)):
        words = []
        for _ in range(rng.randint(1, 40)):
            words.append(rng.choice(VOCAB) + (rng.choice(MIDS) if rng.random() < 0.15 else ""))
        sentence = " ".join(words)
        sentences.append(sentence[:1].upper() + sentence[1:] + rng.choice(ENDS))
    return rng.choice([" ", "\n", "  \n\t"]).join(sentences)


def check_chunks(text, chunks, count_tokens, max_chars, max_tokens):
    normalized = normalize_text(text)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk.text and chunk.text == chunk.text.strip()
        assert len(chunk.text) <= max_chars
        assert chunk.n_tokens == count_tokens(chunk.text) <= max_tokens
    # Nothing lost, nothing reordered.
    assert re.sub(r"\s", "", "".join(c.text for c in chunks)) == re.sub(r"\s", "", normalized)
    return normalized


@pytest.mark.parametrize("seed", range(6))
def test_random_texts_keep_every_word_in_order(seed):
    rng = random.Random(seed)
    for _ in range(40):
        text = random_text(rng)
        counter = rng.choice([count_words, wordpiece_like, len])
        longest_word = max((len(w) for w in normalize_text(text).split()), default=0)
        max_chars = rng.randint(max(longest_word, 1), 300)
        max_tokens = rng.randint(max(counter(w) for w in normalize_text(text).split() or ["x"]), 80)
        chunks = make_chunks(text, counter, max_chars, max_tokens)
        normalized = check_chunks(text, chunks, counter, max_chars, max_tokens)
        # Every word fits alone, so all cuts fall on spaces: exact round trip.
        assert " ".join(c.text for c in chunks) == normalized


@pytest.mark.parametrize("seed", range(3))
def test_random_tight_budgets_still_hold(seed):
    rng = random.Random(100 + seed)
    for _ in range(40):
        cjk = "".join(rng.choice("日本語テキスト。、") for _ in range(rng.randint(0, 60)))
        text = random_text(rng) + " " + cjk
        counter = rng.choice([count_words, wordpiece_like, len])
        max_chars, max_tokens = rng.randint(1, 30), rng.randint(1, 6)
        chunks = make_chunks(text, counter, max_chars, max_tokens)
        check_chunks(text, chunks, counter, max_chars, max_tokens)


@pytest.mark.parametrize("seed", range(3))
def test_sentences_that_fit_are_never_split(seed):
    rng = random.Random(200 + seed)
    for _ in range(30):
        text = random_text(rng)
        sentences = split_sentences(normalize_text(text))
        max_chars = max((len(s) for s in sentences), default=1) + rng.randint(0, 200)
        chunks = make_chunks(text, count_words, max_chars, 10_000)
        # Each chunk is a run of whole consecutive sentences.
        rebuilt, i = [], 0
        for chunk in chunks:
            run = []
            while " ".join(run) != chunk.text:
                run.append(sentences[i])
                i += 1
                assert len(" ".join(run)) <= len(chunk.text)
            rebuilt.extend(run)
        assert rebuilt == sentences
