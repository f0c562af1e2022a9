"""Text for speech: list numbers stay with their items, addresses are said as words, what the
tokenizer cannot read is removed, and an item that is mostly [UNK] fails alone with its reason.

The [UNK] decisions use the tiny checkpoint's tokenizer (a real cased BERT WordPiece tokenizer
with mBERT's special ids), loaded the way the job loads it."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.fingerprint import Fingerprinter
from pipeline.planner import ItemRejected, Planner, text_encoder
from pipeline.sources import Item
from pipeline.speech import MIN_SYMBOL_RUN, speech_text, spoken_addresses
from pipeline.text import CUE, ENUMERATOR, ChunkBudget, make_chunks, split_sentences
from tests.conftest import REPO
from workers.checkpoints import load_settings_for, load_tokenizer
from workers.tiny_model import build_tiny_tokenizer

TOKENIZER = build_tiny_tokenizer()
UNK = TOKENIZER.unk_token_id


def is_unknown(grapheme: str) -> bool:
    return UNK in TOKENIZER.encode(grapheme, add_special_tokens=False)


def spoken(text: str, **options) -> str:
    return speech_text(text, is_unknown=is_unknown, **options).text


# --- list enumerators -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        (
            "Redistribution is permitted provided that the following conditions are met:\n"
            "1. Redistributions of source code must retain the notice.\n2. Binaries must reproduce it.",
            [
                "Redistribution is permitted provided that the following conditions are met:",
                "1. Redistributions of source code must retain the notice.",
                "2. Binaries must reproduce it.",
            ],
        ),
        (
            "You must meet these conditions: a) The work must carry notices. b) it must say so. (iv) Fourth one.",
            ["You must meet these conditions:", "a) The work must carry notices.", "b) it must say so.", "(iv) Fourth one."],
        ),
        ("Steps: (1) open it. (2) close it.", ["Steps:", "(1) open it.", "(2) close it."]),
        ("I. Intro. II. Body.", ["I. Intro.", "II. Body."]),
        ("1. Definitions. 2. Scope.", ["1. Definitions.", "2. Scope."]),
        ("条件如下：1. 第一条。2. 第二条。", ["条件如下：", "1. 第一条。", "2. 第二条。"]),
        ("Bring these: • bread • milk", ["Bring these:", "• bread • milk"]),
    ],
)
def test_a_list_number_starts_the_sentence_it_numbers(text, sentences):
    assert split_sentences(text, "auto") == sentences


@pytest.mark.parametrize(
    ("text", "language", "sentences"),
    [
        ("He was number 1. Then he left.", "en", ["He was number 1.", "Then he left."]),
        ("See section 3. It explains.", "en", ["See section 3.", "It explains."]),
        ("Dr. A. Smith came. J. R. R. Tolkien wrote.", "en", ["Dr. A. Smith came.", "J. R. R. Tolkien wrote."]),
        ("Das Wetter war z. B. sehr schön!", "de", ["Das Wetter war z. B. sehr schön!"]),
    ],
)
def test_numbers_and_initials_that_number_nothing_stay_where_they_are(text, language, sentences):
    assert split_sentences(text, language) == sentences


# Words that can never be read as an enumerator (no Roman numeral letters alone, never one letter).
WORDS = st.text(alphabet="abefghjknoprstuwyz", min_size=2, max_size=9).map(lambda w: w + "q")
NUMBERS = st.sampled_from(["{n}.", "{n})", "({n})", "{a})", "({a})", "{r}.", "({r})", "•", "-", "*"])


@st.composite
def lists(draw):
    """A lead-in and items with any style of enumerator, on one line or one per line."""
    lead = " ".join(draw(st.lists(WORDS, min_size=1, max_size=6))) + draw(st.sampled_from([":", ".", ";"]))
    items = []
    for n in range(1, draw(st.integers(1, 8)) + 1):
        number = draw(NUMBERS).format(n=n, a="abcdefgh"[n - 1], r=["i", "ii", "iii", "iv", "v", "vi", "vii", "viii"][n - 1])
        words = " ".join(draw(st.lists(WORDS, min_size=1, max_size=12)))
        items.append(f"{number} {words}{draw(st.sampled_from(['.', ';', ',', '']))}")
    return lead + draw(st.sampled_from([" ", "\n"])) + draw(st.sampled_from([" ", "\n"])).join(items)


@settings(max_examples=200, deadline=None)
@given(
    text=lists(),
    max_chars=st.one_of(st.none(), st.integers(16, 160)),
    max_tokens=st.integers(4, 40),
    # An enumerator is a syllable at most, a word 10 (nine consonants and "q", spelled out): 3 s at English pace.
    target_s=st.floats(3.5, 12),
)
def test_no_chunk_ends_with_a_list_number(text, max_chars, max_tokens, target_s):
    """Every enumerator plus the word after it fits every budget here, so none is ever left at a
    chunk's end, whatever the budgets cut."""
    budget = ChunkBudget(max_tokens, target_speech_s=target_s, max_speech_s=target_s + 3, max_chars=max_chars)
    chunks = make_chunks(text, lambda t: len(t.split()), budget, "en")
    assert re.sub(r"\s", "", "".join(c.text for c in chunks)) == re.sub(r"\s", "", text)
    for chunk in chunks:
        assert not ENUMERATOR.fullmatch(chunk.text.split()[-1]), (chunk.text, [c.text for c in chunks])


# --- addresses --------------------------------------------------------------------


def test_urls_emails_and_placeholders_are_said_as_words():
    text = (
        "See https://www.gnu.org/licenses/. Or <https://www.gnu.org/licenses/gpl-3.0.html#top>, "
        "write to a.b@c-d.org, or visit www.example.com/~user/a_b?x=1. Copyright <year> <name of author>."
    )
    assert spoken(text) == (
        "See gnu dot org slash licenses. Or gnu dot org slash licenses slash gpl dash 3 dot 0 dot html, "
        "write to a dot b at c dash d dot org, or visit example dot com slash user slash a underscore b. "
        "Copyright year name of author."
    )
    assert spoken_addresses("https://www.gnu.org/licenses/", "speak", "de") == "gnu Punkt org Schrägstrich licenses"


def test_addresses_dropped_or_kept_as_the_config_says():
    text = "See <https://www.gnu.org/licenses/> or mail a@b.org now. By <name of author>."
    assert spoken(text, urls="drop") == "See or mail now. By."
    assert spoken(text, urls="keep") == text
    assert spoken("a < b and c > d", urls="drop") == "a < b and c > d"  # not a placeholder


# --- symbols, [UNK] and cues ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Great 😀.", "Great."),
        ("Great 😀 job", "Great job"),
        ("hello😀world", "hello world"),
        ("你好😀世界", "你好世界"),
        ("👨\u200d👩\u200d👧 family ✓", "family"),
        ("* * *\n\nChapter one.", "Chapter one."),
        ("Title\n=====\n\nText ★★★★☆ here.", "Title\n\nText here."),
        ("well-known --- fact, 1 + 2 = 3, -- yes", "well-known fact, 1 + 2 = 3, -- yes"),
    ],
)
def test_symbol_runs_and_unknown_characters_are_removed(text, expected):
    assert spoken(text) == expected


def test_barks_cues_pass_through_untouched():
    text = "[MAN] Well... [laughs] ♪ la la ♪ — [clears throat] [WOMAN] ♪ ♪ ♪ Yes…"
    assert not is_unknown("[") and is_unknown("♪")  # ♪ is [UNK] to this tokenizer, and stays anyway
    assert spoken(text) == text


def test_the_unknown_share_counts_characters_that_carry_text():
    assert speech_text("😀😀", is_unknown=is_unknown).unknown_share == 1.0
    assert speech_text("Thanks! 😀", is_unknown=is_unknown).unknown_share == pytest.approx(1 / 7)
    assert speech_text("...!? ♪", is_unknown=is_unknown).unknown_share == 0.0  # nothing counted


PIECES = st.one_of(
    st.text(alphabet="abcdefgh XYZ.,!?", min_size=1, max_size=12),
    st.sampled_from(["[laughs]", "[MAN]", "♪", "—", "...", "😀", "★", "=====", "https://www.gnu.org/licenses/",
                     "a@b.org", "<name of author>", "1.", "中文", "\n\n", " ", "✓✓", "x\u0303"]),
)


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(PIECES, max_size=20), urls=st.sampled_from(["speak", "drop", "keep"]))
def test_speech_text_keeps_cues_drops_the_unknown_and_is_stable(pieces, urls):
    text = " ".join(pieces)
    result = speech_text(text, urls=urls, is_unknown=is_unknown)
    cue_list = [m.group() for m in CUE.finditer(text)] + [g for g in text if g in "♪—"]
    out = result.text
    assert [m.group() for m in CUE.finditer(out)] + [g for g in out if g in "♪—"] == cue_list
    assert UNK not in TOKENIZER.encode(out.replace("♪", " "), add_special_tokens=False)  # ♪ is kept, known or not
    assert not re.search(rf"[★=]{{{MIN_SYMBOL_RUN}}}", out)
    if urls != "keep":
        assert not re.search(r"://|@|<name", out)
    assert speech_text(out, urls=urls, is_unknown=is_unknown).text == out  # cleaning twice changes nothing
    assert 0.0 <= result.unknown_share <= 1.0


# --- the planner ----------------------------------------------------------------


@pytest.fixture(scope="module")
def config_path(tiny_model_dir, tmp_path_factory):
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    path = tmp_path_factory.mktemp("speech") / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def planner(config_path, tiny_model_dir):
    """The planner as the job builds it: the checkpoint's tokenizer through ``text_encoder``."""
    config = load_config(config_path)
    return Planner(
        config, load_settings_for(config.model), text_encoder(load_tokenizer(config.model)), Fingerprinter(config, tiny_model_dir)
    )


def _reason(planner: Planner, text: str) -> str:
    with pytest.raises(ItemRejected) as caught:
        planner.plan(planner.spec(Item("row", text)))
    return caught.value.reason


def test_a_mostly_unknown_item_fails_with_one_line_saying_why(planner):
    assert _reason(planner, "😀🎉🎉") == (
        "text: 3 of its 3 characters are unknown to the tokenizer ([UNK]: emoji, symbols), "
        "over text.max_unknown_share (0.5)"
    )
    assert "3 of its 5 characters" in _reason(planner, "Hi 😀😀😀")
    plan = planner.plan(planner.spec(Item("row", "Thanks a lot 😀😀😀!")))  # 3 of 12: removed, narrated
    assert [c.text for c in plan.chunks] == ["Thanks a lot!"]
    assert UNK not in planner.token_ids(plan.chunks[0].text)


def test_a_chunk_of_unknown_tokens_fails_its_item_naming_the_chunk(planner):
    # Every character is known, but WordPiece gives up on a word over 100 characters: one [UNK].
    reason = _reason(planner, "Fine words here.\n\n" + "x" * 120)
    assert reason.startswith("text: chunk 1 ('xxxx") and reason.endswith("is 1 of 1 tokens [UNK], over text.max_unknown_share (0.5)")


def test_the_spoken_form_is_what_is_chunked(planner):
    plan = planner.plan(planner.spec(Item("row", "The licence is at <https://www.gnu.org/licenses/>.")))
    assert [c.text for c in plan.chunks] == ["The licence is at gnu dot org slash licenses."]


# --- a job through the real pipeline ---------------------------------------------------


def test_an_emoji_row_fails_alone_and_its_neighbours_are_narrated_with_spoken_subtitles(
    ray_session, config_path, tmp_path, capsys
):
    raw = yaml.safe_load(config_path.read_text())
    raw["sampling"]["semantic"]["max_new_tokens"] = 12
    raw["output"]["subtitles"] = True
    raw["text"]["max_chars"] = 60  # two chunks for the list: where "2." goes shows
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(raw))
    rows = [
        {"id": "before", "text": "The licence is at https://www.gnu.org/licenses/ today."},
        {"id": "emoji", "text": "😀🎉👍"},
        {"id": "after", "text": "These conditions must all be met:\n1. Keep the notice. ✓\n2. Keep it short."},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"

    assert main(["run", "--config", str(config), "--input", str(source), "--output", str(out), "--quiet"]) == 1

    entries = {e["id"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert entries["emoji"]["status"] == "failed"
    assert entries["emoji"]["error"] == (
        "text: 3 of its 3 characters are unknown to the tokenizer ([UNK]: emoji, symbols), over text.max_unknown_share (0.5)"
    )
    assert "FAILED  emoji: text: 3 of its 3 characters" in capsys.readouterr().err
    assert not (out / "emoji.wav").exists()
    assert [entries[i]["status"] for i in ("before", "after")] == ["ok", "ok"]
    chunk_texts = {i: [c["text"] for c in json.loads((out / f"{i}.json").read_text())["chunks"]] for i in ("before", "after")}
    assert chunk_texts == {  # not "... met: 1. Keep the notice. 2." and "Keep it short."
        "before": ["The licence is at gnu dot org slash licenses today."],
        "after": ["These conditions must all be met: 1. Keep the notice.", "2. Keep it short."],
    }
    subtitles = (out / "before.srt").read_text(encoding="utf-8")
    assert "gnu dot org slash licenses" in " ".join(subtitles.split()) and "https" not in subtitles
    assert (out / "before.wav").is_file() and (out / "after.wav").is_file()
