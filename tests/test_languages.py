"""Each item's language (its own, the job's, or detected on short texts) and the voice that follows it,
from the detector up to a run's metadata and ``bark-pipeline plan``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import EXIT_ITEMS_FAILED, main
from pipeline.config import ConfigError, load_config
from pipeline.datasets import iter_dataset_items
from pipeline.fingerprint import Fingerprinter
from pipeline.languages import BARK_LANGUAGES, detect, detect_language, voice_for_language
from pipeline.planner import ItemRejected, Planner, text_encoder
from pipeline.sources import Item, iter_file_items
from pipeline.text import split_sentences
from tests.conftest import REPO
from workers.checkpoints import load_settings_for, load_tokenizer

# Short real sentences, one line each, as dataset rows hold them.
SHORT = [
    ("en", "Do not panic."),  # reported as Portuguese: too short to tell, so the fallback (en)
    ("en", "Ok, but how do I know which distribution I'm running?"),  # reported as Portuguese
    ("en", "I think it will rain tomorrow."),
    ("de", "Der Hund schläft unter dem Tisch."),
    ("de", "Ich habe heute keine Zeit."),
    ("fr", "Je ne sais pas où se trouve la gare."),
    ("fr", "Merci beaucoup."),
    ("es", "No sé dónde está la estación."),
    ("es", "El perro duerme debajo de la mesa."),
    ("ja", "今日はとても良い天気ですね。"),
    ("ja", "ありがとう。"),
    ("zh", "我不知道火车站在哪里。"),
    ("zh", "谢谢。"),
    ("ru", "Я не знаю, где находится вокзал."),
    ("ru", "Спасибо."),
]
ROWS = [  # the job test's dataset: no row names a voice
    {"id": "de", "text": "Der Zug kommt heute leider etwas später an."},
    {"id": "ja", "text": "今日はとても良い天気ですね。"},
    {"id": "en", "text": "Ok, but how do I know which distribution I'm running?"},
    {"id": "bad", "text": "Hello there, this row names a language Bark does not speak.", "language": "xx"},
]


def _config(tmp_path: Path, model_source: Path, name: str = "job.yaml", **overrides) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(model_source)
    raw["sampling"]["semantic"]["max_new_tokens"] = 20
    raw.update(overrides)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _planner(config_path: Path, tiny_model_dir: Path) -> Planner:
    config = load_config(config_path)
    model = config.model.model_copy(update={"source": str(tiny_model_dir)})
    return Planner(config, load_settings_for(model), text_encoder(load_tokenizer(model)), Fingerprinter(config, tiny_model_dir))


def _rows(tmp_path: Path) -> Path:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS), encoding="utf-8")
    return path


# --- detection ----------------------------------------------------------------


@pytest.mark.parametrize(("language", "text"), SHORT)
def test_short_real_sentences(language, text):
    assert detect_language(text) == language


def test_too_short_or_ambiguous_text_falls_back():
    for text in ("Do not panic.", "Ok.", "", "12345 !!!"):
        assert detect(text) is None, text
        assert detect_language(text, "de") == "de"
    assert detect_language("Der Hund schläft unter dem Tisch.", "fr") == "de"  # a confident answer wins


def test_auto_sentence_splitting_uses_the_detected_language():
    # German ordinals: "Am 3. Oktober" is one sentence in German, two in English.
    text = "Am 3. Oktober feiern wir den Tag der Deutschen Einheit. Dann fahren wir nach Hause."
    assert split_sentences(text, "auto") == split_sentences(text, "de") != split_sentences(text, "en")


# --- voices ---------------------------------------------------------------------


def test_a_preset_voice_follows_the_language_and_the_map_wins():
    assert voice_for_language("v2/en_speaker_6", "de", {}) == "v2/de_speaker_6"
    assert voice_for_language("v2/en_speaker_6", "en", {}) == "v2/en_speaker_6"
    assert voice_for_language("v2/en_speaker_6", "de", {"de": "v2/de_speaker_3"}) == "v2/de_speaker_3"
    assert voice_for_language(None, "ja", {}) is None  # random stays random
    assert voice_for_language(None, "ja", {"ja": "v2/ja_speaker_1"}) == "v2/ja_speaker_1"
    assert voice_for_language("announcer", "de", {}) == "announcer"  # not a v2 preset: kept
    assert voice_for_language("/voices/me.npz", "fr", {}) == "/voices/me.npz"


# --- config and items -------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"text": {"language": "xx"}}, "text.language"),
        ({"text": {"language": "en", "default_language": "english"}}, "text.default_language"),
        ({"voice_by_language": {"klingon": "v2/en_speaker_1"}}, "voice_by_language"),
    ],
)
def test_an_unknown_language_in_the_config_is_a_config_error(tmp_path, overrides, field):
    path = _config(tmp_path, tmp_path / "model", **overrides)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert f"{field}: " in str(caught.value) and "not one of Bark's languages" in str(caught.value)


def test_every_bark_language_is_accepted(tmp_path):
    for code in BARK_LANGUAGES:
        assert load_config(_config(tmp_path, tmp_path / "model", text={"language": code})).text.language == code


def test_the_language_comes_from_the_item_then_the_job_then_detection(tmp_path, tiny_model_dir):
    planner = _planner(_config(tmp_path, tiny_model_dir), tiny_model_dir)
    german = "Der Hund schläft unter dem Tisch."
    assert planner.spec(Item("a", german)).language == "de"
    assert planner.spec(Item("b", german, language="fr")).language == "fr"  # a dataset column
    assert planner.spec(Item("c", german, params={"language": "es"})).language == "es"  # front matter, params
    assert planner.spec(Item("d", "Do not panic.")).language == "en"
    fixed = _planner(_config(tmp_path, tiny_model_dir, "fixed.yaml", text={"language": "it"}), tiny_model_dir)
    assert fixed.spec(Item("a", german)).language == "it"
    assert fixed.spec(Item("b", german, language="de")).language == "de"
    fallback = _planner(_config(tmp_path, tiny_model_dir, "fb.yaml", text={"default_language": "pl"}), tiny_model_dir)
    assert fallback.spec(Item("a", "Ok.")).language == "pl"
    assert fallback.spec(Item("b", german)).language == "de"


def test_an_item_with_an_unknown_language_fails_naming_the_field(tmp_path, tiny_model_dir):
    planner = _planner(_config(tmp_path, tiny_model_dir), tiny_model_dir)
    with pytest.raises(ItemRejected, match=r"^language: 'xx' is not one of Bark's languages"):
        planner.spec(Item("a", "Hello there.", language="xx"))
    with pytest.raises(ItemRejected, match=r"^params\.language: .*'german' is not one of Bark's languages"):
        planner.spec(Item("b", "Hello there.", params={"language": "german"}))


def test_an_items_own_voice_wins_and_a_null_voice_stays_random(tmp_path, tiny_model_dir):
    planner = _planner(_config(tmp_path, tiny_model_dir, voice_by_language={"de": "v2/de_speaker_3"}), tiny_model_dir)
    german = "Der Hund schläft unter dem Tisch."
    assert planner.spec(Item("a", german)).voice.name == "v2/de_speaker_3"
    assert planner.spec(Item("b", german, voice="v2/fr_speaker_1")).voice.name == "v2/fr_speaker_1"
    assert planner.spec(Item("c", "今日はとても良い天気ですね。")).voice.name == "v2/ja_speaker_6"
    random = _planner(_config(tmp_path, tiny_model_dir, "random.yaml", voice=None), tiny_model_dir)
    assert random.spec(Item("a", german)).voice is None
    assert random.spec(Item("b", "今日はとても良い天気ですね。")).voice is None


def test_the_language_of_front_matter_and_a_dataset_column_reach_the_item(tmp_path):
    story = tmp_path / "story.md"
    story.write_text("---\nlanguage: de\n---\nEin kurzer Text.\n", encoding="utf-8")
    (item,) = iter_file_items(story)
    assert item.params == {"language": "de"}
    data = tmp_path / "rows.jsonl"
    data.write_text(
        '{"id": 1, "text": "Hi.", "language": " fr "}\n{"id": 2, "text": "Hi.", "language": 3}\n{"id": 3, "text": "Hi."}\n',
        encoding="utf-8",
    )
    first, second, third = iter_dataset_items(str(data))
    assert (first.language, first.extra) == ("fr", {})
    assert (second.field, second.message) == ("language", "'language' must be a string, got a number")
    assert third.language is None


# --- a run and a plan -------------------------------------------------------------


def test_a_run_gives_each_row_the_voice_of_its_language(ray_session, tiny_model_dir, tmp_path):
    config = _config(tmp_path, tiny_model_dir, voice_by_language={"de": "v2/de_speaker_3"})
    out = tmp_path / "out"
    code = main(["run", "--config", str(config), "--input", str(_rows(tmp_path)), "--output", str(out), "--quiet"])
    manifest = {m["id"]: m for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert code == EXIT_ITEMS_FAILED  # the bad row, alone
    assert {i: m["status"] for i, m in manifest.items()} == {"de": "ok", "ja": "ok", "en": "ok", "bad": "failed"}
    assert manifest["bad"]["error"].startswith("language: 'xx' is not one of Bark's languages")
    meta = {i: json.loads((out / f"{i}.json").read_text()) for i in ("de", "ja", "en")}
    assert {i: (m["language"], m["voice"]) for i, m in meta.items()} == {
        "de": ("de", "v2/de_speaker_3"),
        "ja": ("ja", "v2/ja_speaker_6"),
        "en": ("en", "v2/en_speaker_6"),
    }
    assert all(c["voice"] == meta[i]["voice"] for i in meta for c in meta[i]["chunks"])


def test_plan_shows_each_items_language_and_voice(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir)
    rows = _rows(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "plan", "--config", str(config), "--input", str(rows), "--json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == EXIT_ITEMS_FAILED, result.stderr  # the bad row would fail
    report = json.loads(result.stdout)
    planner = _planner(config, tiny_model_dir)
    job = load_config(config)
    expected = {}
    for item in iter_dataset_items(str(rows), job.input.columns, limits=job.limits):
        try:
            spec = planner.spec(item)
        except ItemRejected:
            continue
        expected[item.id] = (spec.language, spec.voice.name)
    assert {i["id"]: (i["language"], i["voice"]) for i in report["items"]} == expected == {
        "de": ("de", "v2/de_speaker_6"),
        "ja": ("ja", "v2/ja_speaker_6"),
        "en": ("en", "v2/en_speaker_6"),
    }
    assert [(f["id"], f["reason"].split(":")[0]) for f in report["failures"]] == [("bad", "language")]
