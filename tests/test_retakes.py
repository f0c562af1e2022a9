"""Retakes of implausible chunks: the judge alone, the writer alone, and whole jobs on real Ray actors.

The tiny random-weight model makes noise, which no threshold can call plausible
speech, so the jobs here force retakes with thresholds drawn from a first run's
own measurements, and check what a user relies on: a retaken chunk is made with
its next derived seed and says so in its metadata, every other chunk's tokens
and audio are exactly those of a run without retakes, and the summary counts
the retakes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import yaml

from pipeline.cli import main
from pipeline.config import OutputConfig, QualityConfig
from pipeline.object_store import LocalStore
from pipeline.retakes import SILENT_DBFS, TakeOrder, judge, rms_dbfs
from pipeline.seeds import take_seed
from pipeline.tokens import Codebooks
from pipeline.voices import load_voice
from pipeline.writer import PARTS_DIR, PartOrder, part_key
from pipeline.writer import ItemWriter
from speech_like import RATE, speech_like
from tests.conftest import REPO
from workers.records import AudioOutput
from workers.settings import BarkSettings

QUALITY = QualityConfig()
BOOK = (
    "The rain had not stopped for three days. Water ran down the gutters and the streets were empty.\n\n"
    "Anna watched from the window. Her brother laughed and said nothing at all. The clock struck nine.\n\n"
    "Nobody came to the door that night, and nobody asked why."
)


# --- the judge ---------------------------------------------------------------------


def test_speech_of_about_the_expected_length_is_plausible():
    check = judge(speech_like(6.0), RATE, 6.0, False, QUALITY)
    assert check.implausible is None
    assert check.audio_s == pytest.approx(6.0) and -40 < check.rms_dbfs < 0


def test_each_sign_of_a_failed_chunk_is_named():
    two_sentences_s = 8.0
    dropped = judge(speech_like(0.04), RATE, two_sentences_s, False, QUALITY)  # the reported 0.04 s chunk
    assert "0.04 s of audio for 8.0 s of text (under 0.3x)" in dropped.implausible
    ran_on = judge(speech_like(14.0), RATE, 2.0, False, QUALITY)
    assert "over 2.5x" in ran_on.implausible
    capped = judge(speech_like(6.0), RATE, 6.0, True, QUALITY)
    assert capped.implausible == "ran to the semantic length cap without ending"
    quiet = judge(speech_like(6.0) * 1e-3, RATE, 6.0, False, QUALITY)  # 60 dB down
    assert quiet.implausible.startswith("near-silence")
    assert rms_dbfs(np.zeros(100, dtype=np.float32)) == SILENT_DBFS == rms_dbfs(np.zeros(0, dtype=np.float32))


def test_a_short_text_may_pause_after_it_without_counting_as_running_on():
    """"Yes." is a third of a second of text; Bark says it in about a second and then breathes."""
    assert judge(speech_like(2.5), RATE, 0.3, False, QUALITY).implausible is None


def test_the_band_must_be_an_interval():
    with pytest.raises(ValueError, match="low < high"):
        QualityConfig(duration_band=(2.0, 1.0))


# --- the writer ----------------------------------------------------------------------


def test_an_implausible_take_with_retakes_left_is_not_kept_and_the_last_one_is(tmp_path):
    store = LocalStore(tmp_path)
    writer = ItemWriter(store, OutputConfig(), Codebooks.of(BarkSettings()), QualityConfig(retakes=1))
    audio = AudioOutput(key="a#0", audio=speech_like(0.5), sample_rate=RATE)
    fingerprint = "fp1:" + "ef" * 16
    first = TakeOrder(take=0, seed=7, expected_s=9.0)
    receipt = writer.write_part(PartOrder(item_id="a", parts_id=fingerprint, index=0, keep_tokens=False), audio, first)
    assert receipt.retake is not None and "under 0.3x" in receipt.retake and receipt.error is None
    assert list(store.list_keys(f"{PARTS_DIR}/")) == []  # nothing kept

    last = TakeOrder(take=1, seed=take_seed(7, 1), expected_s=9.0)
    receipt = writer.write_part(PartOrder(item_id="a", parts_id=fingerprint, index=0, keep_tokens=False), audio, last)
    assert receipt.retake is None and receipt.implausible is not None  # out of retakes: kept, and said so
    assert list(store.list_keys(f"{PARTS_DIR}/")) == [part_key("a", fingerprint, 0)]


# --- jobs ----------------------------------------------------------------------------


def _config(tmp_path, model_dir, name: str, quality: dict, **sections) -> str:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(model_dir)
    raw["text"]["max_chars"] = 50
    raw["output"].update(save_tokens=True, crossfade_s=0.0, trim={"enabled": False})
    raw["quality"] = quality
    raw.update(sections)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _run(config: str, inputs, out, capsys) -> str:
    assert main(["run", "--config", config, "--input", str(inputs), "--output", str(out)]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def _chunks(out, item: str) -> list[dict]:
    return json.loads((out / f"{item}.json").read_text())["chunks"]


def _chunk_audio(out, item: str, chunk: dict) -> np.ndarray:
    audio, _ = sf.read(out / f"{item}.wav", dtype="float32")
    return audio[round(chunk["start_s"] * RATE) : round(chunk["start_s"] * RATE) + chunk["samples"]]


def _tokens(out, item: str, index: int):
    voice = load_voice(str(out / f"{item}.tokens" / f"{index:04d}.npz"))
    return voice.semantic_prompt, voice.coarse_prompt, voice.fine_prompt


def test_retaken_chunks_say_why_and_every_other_chunk_is_unchanged(ray_session, quick_model_dir, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "book.txt").write_text(BOOK, encoding="utf-8")
    (inputs / "line.txt").write_text("One short line.", encoding="utf-8")
    judged_wide = {"duration_band": [0.0, 1000.0], "slack_s": 0.0}  # only the level decides below

    plain = tmp_path / "plain"
    line = _run(_config(tmp_path, quick_model_dir, "plain.yaml", {"retakes": 0, **judged_wide}), inputs, plain, capsys)
    assert "retakes" not in line  # judged and recorded, never made again
    chunks = _chunks(plain, "book")
    assert len(chunks) >= 4 and all(c["take"] == 0 and c["retakes"] == [] for c in chunks)
    levels = sorted(c["check"]["rms_dbfs"] for c in chunks if not c["check"]["ended_at_limit"])
    threshold = (levels[len(levels) // 2 - 1] + levels[len(levels) // 2]) / 2  # splits the chunks in two

    retaken = tmp_path / "retaken"
    quality = {"retakes": 1, "silence_dbfs": threshold, **judged_wide}
    line = _run(_config(tmp_path, quick_model_dir, "retaken.yaml", quality), inputs, retaken, capsys)
    judged = [c for c in chunks if c["check"]["ended_at_limit"] or c["check"]["rms_dbfs"] < threshold]
    quiet = [c["index"] for c in judged]
    assert 0 < len(quiet) < len(chunks)
    [solo] = _chunks(plain, "line")
    solo_retaken = solo["check"]["ended_at_limit"] or solo["check"]["rms_dbfs"] < threshold
    assert f"; {len(quiet) + solo_retaken} retakes" in line

    for before, after in zip(chunks, _chunks(retaken, "book"), strict=True):
        if before["index"] in quiet:
            assert after["take"] == 1 and after["seed"] == take_seed(before["seed"], 1)
            [rejected] = after["retakes"]
            assert rejected["take"] == 0 and rejected["seed"] == before["seed"]
            assert rejected["reason"] == before["check"]["implausible"] or "near-silence" in rejected["reason"]
            still = after["check"]["ended_at_limit"] or after["check"]["rms_dbfs"] < threshold
            assert (after["check"]["implausible"] is not None) == still
        else:  # a neighbour: the same take, the same tokens, the same audio
            assert after["take"] == 0 and after["seed"] == before["seed"] and after["retakes"] == []
            for a, b in zip(_tokens(plain, "book", before["index"]), _tokens(retaken, "book", after["index"])):
                np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(_chunk_audio(plain, "book", before), _chunk_audio(retaken, "book", after))


def test_a_chunk_still_implausible_after_its_retakes_is_kept_and_counted(ray_session, quick_model_dir, tmp_path, capsys):
    """Every level is under 0 dBFS: every take is implausible, so each chunk (a one-chunk item's too) is
    made twice, kept, and counted."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "line.txt").write_text("One short line.", encoding="utf-8")
    (inputs / "pair.txt").write_text("A first sentence here.\n\nAnd a second one there.", encoding="utf-8")
    out = tmp_path / "out"
    quality = {"retakes": 1, "silence_dbfs": 0.0}
    line = _run(_config(tmp_path, quick_model_dir, "all.yaml", quality), inputs, out, capsys)
    chunks = _chunks(out, "line") + _chunks(out, "pair")
    assert len(chunks) == 3
    assert "; 3 retakes, 3 chunks kept implausible" in line
    for chunk in chunks:
        assert chunk["take"] == 1 and len(chunk["retakes"]) == 1
        assert "near-silence" in chunk["check"]["implausible"] and "near-silence" in chunk["retakes"][0]["reason"]
