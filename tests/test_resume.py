"""Resume knows what it resumes: each item's record carries a fingerprint of what shaped its audio,
a rerun redoes exactly the items whose fingerprint changed, earlier failures keep the exit code
at 1 until retried, and a repeated id never touches the record of the item it repeats."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.fingerprint import Fingerprinter, voice_digest
from pipeline.voices import load_voice
from tests.conftest import REPO
from workers.config import SamplingSet
from workers.records import VoicePrompt

SUMMARY = re.compile(r"^(done|stopped|aborted): (\d+) ok, (\d+) failed, (\d+) skipped, (\d+) changed; .* -> (.+)$", re.MULTILINE)
ZERO_WIDTH_SPACE = "\u200b"  # read as text, but nothing is left to say once cleaned: fails after the fingerprint


def _config(tmp_path, model_dir) -> str:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"source": str(model_dir), "format": "hf"}
    raw["sampling"]["semantic"]["max_new_tokens"] = 12
    raw["output"]["subtitles"] = False
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _rows(seed_a: int, text_b: str, voice_c: str) -> list[dict]:
    return [
        {"id": "a", "text": "Alpha speaks first.", "params": {"seed": seed_a}},
        {"id": "b", "text": text_b},
        {"id": "c", "text": "Charlie speaks third.", "voice": voice_c},
        {"id": "d", "text": "Delta stays the same."},
        {"id": "e", "text": ZERO_WIDTH_SPACE},
        {"id": "a", "text": "A repeated id, never narrated."},
    ]


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _summary(out: str) -> tuple[str, int, int, int, int]:
    match = SUMMARY.search(out)
    assert match, out
    return (match.group(1), *(int(match.group(n)) for n in (2, 3, 4, 5)))


def _stamps(out, ids) -> dict[str, tuple[int, int]]:
    return {i: ((s := (out / f"{i}.wav").stat()).st_ino, s.st_mtime_ns) for i in ids}


def _records(out) -> dict[str, dict]:
    """The last manifest line of each id (the record resume reads)."""
    return {e["id"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def test_a_rerun_redoes_exactly_what_changed_and_tells_the_truth_in_its_exit_code(ray_session, quick_model_dir, tmp_path, capsys):
    source = tmp_path / "rows.jsonl"
    out = tmp_path / "out"
    command = ["run", "--config", _config(tmp_path, quick_model_dir), "--input", str(source), "--output", str(out)]
    _write(source, _rows(5, "Bravo speaks second.", "v2/en_speaker_6"))

    # 1. First run: four narrated, the unsayable text failed, the repeated id failed on the console only.
    assert main(command) == 1
    printed = capsys.readouterr()
    assert _summary(printed.out) == ("done", 4, 2, 0, 0)
    assert "FAILED  a: id: duplicate item id in the input" in printed.err
    assert "FAILED  e: text: empty after cleaning" in printed.err
    records = _records(out)
    assert {i: r["status"] for i, r in records.items()} == {"a": "ok", "b": "ok", "c": "ok", "d": "ok", "e": "failed"}
    lines_of_a = [e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()) if e["id"] == "a"]
    assert lines_of_a == [records["a"]]  # the repeated id wrote nothing: a's only line is its ok line
    for item_id in "abcd":
        meta = json.loads((out / f"{item_id}.json").read_text())
        assert meta["fingerprint"] == records[item_id]["fingerprint"] and meta["fingerprint"].startswith("fp1:")
        assert set(meta["fingerprint_parts"]) >= {"text", "voice", "seed", "sampling", "settings", "model"}
    assert records["e"]["fingerprint"]
    first = _stamps(out, "abcd")

    # 2. The same input again: nothing to narrate, but the output is not complete, so exit 1,
    # with the earlier failure listed with its reason and the way to retry it.
    assert main(command) == 1
    printed = capsys.readouterr()
    assert _summary(printed.out) == ("done", 0, 2, 4, 0)
    assert "FAILED  e: text: empty after cleaning (recorded by an earlier run)" in printed.err
    assert "1 item failed in an earlier run and was not retried: rerun with --retry-failed" in printed.err
    assert _stamps(out, "abcd") == first

    # 3. A new seed for a, a new text for b, another voice for c: exactly those three are redone.
    _write(source, _rows(6, "Bravo speaks second, and differently.", "v2/en_speaker_1"))
    assert main(command) == 1
    printed = capsys.readouterr()
    assert _summary(printed.out) == ("done", 3, 2, 1, 3)
    for item_id, part in (("a", "seed"), ("b", "text"), ("c", "voice")):
        assert re.search(rf"^ok      {item_id}: .*\(redone: {part} changed\)$", printed.err, re.MULTILINE), printed.err
    third = _stamps(out, "abcd")
    assert third["d"] == first["d"]
    assert all(third[i] != first[i] for i in "abc")
    records_after = _records(out)
    for item_id in "abc":
        meta = json.loads((out / f"{item_id}.json").read_text())
        assert records_after[item_id]["fingerprint"] == meta["fingerprint"] != records[item_id]["fingerprint"]
    assert records_after["d"] == records["d"]
    assert json.loads((out / "a.json").read_text())["seed"] == 6
    assert json.loads((out / "c.json").read_text())["voice"] == "v2/en_speaker_1"

    # 4. --retry-failed tries e again (it fails again, as a failure of this run).
    lines_before = len((out / "manifest.jsonl").read_text().splitlines())
    assert main([*command, "--retry-failed"]) == 1
    printed = capsys.readouterr()
    assert _summary(printed.out) == ("done", 0, 2, 4, 0)
    assert "FAILED  e: text: empty after cleaning\n" in printed.err and "earlier run" not in printed.err
    assert len((out / "manifest.jsonl").read_text().splitlines()) == lines_before  # the same failure is not written twice

    # 5. --force redoes everything.
    assert main([*command, "--force"]) == 1
    assert _summary(capsys.readouterr().out) == ("done", 4, 2, 0, 0)
    assert all(stamp != third[i] for i, stamp in _stamps(out, "abcd").items())


def test_a_fixed_input_is_narrated_on_the_rerun_without_retry_failed(ray_session, tiny_model_dir, tmp_path, capsys):
    """The trap from the issue: a wrong text column, fixed, then the same command again. The rows'
    records say they failed; their input changed, so the rerun narrates them."""
    source = _write(tmp_path / "rows.jsonl", [{"id": "x", "body": "Hello there."}, {"id": "y", "body": "Good night."}])
    out = tmp_path / "out"
    config = tmp_path / "job.yaml"
    raw = yaml.safe_load(open(_config(tmp_path, tiny_model_dir)))
    raw["input"] = {"columns": {"id": "id", "text": "text"}}
    config.write_text(yaml.safe_dump(raw))
    command = ["run", "--config", str(config), "--input", source, "--output", str(out)]

    assert main(command) in (1, 2)  # every row lacks its text: failed row by row (1), or at once (2)
    assert "'text'" in capsys.readouterr().err
    raw["input"]["columns"]["text"] = "body"
    config.write_text(yaml.safe_dump(raw))
    assert main(command) == 0
    assert _summary(capsys.readouterr().out)[:4] == ("done", 2, 0, 0)
    assert main(command) == 0
    assert _summary(capsys.readouterr().out) == ("done", 0, 0, 2, 0)


# ---------------------------------------------------------------- the fingerprint's parts, without Ray


def _parts(fingerprinter: Fingerprinter, **changes) -> dict[str, str]:
    item = dict(text="Hello.", voice=None, seed=1, sampling=SamplingSet(), voice_mode="fixed", voice_reset_every=None)
    return fingerprinter.item(**{**item, **changes}).parts


def test_a_voice_is_known_by_its_arrays_not_its_name(tmp_path):
    six = load_voice("v2/en_speaker_6")
    renamed = VoicePrompt(name="my-narrator", semantic_prompt=six.semantic_prompt, coarse_prompt=six.coarse_prompt, fine_prompt=six.fine_prompt)
    # The same arrays saved as uint16 (presets differ in dtype) under another path.
    path = tmp_path / "copy.npz"
    np.savez(path, semantic_prompt=six.semantic_prompt.astype(np.uint16), coarse_prompt=six.coarse_prompt.astype(np.uint16), fine_prompt=six.fine_prompt.astype(np.uint16))
    assert voice_digest(six) == voice_digest(renamed) == voice_digest(load_voice(str(path)))
    assert voice_digest(six) != voice_digest(load_voice("v2/en_speaker_1"))
    edited = six.fine_prompt.copy()
    edited[0, 0] = (edited[0, 0] + 1) % 1024
    np.savez(path, semantic_prompt=six.semantic_prompt, coarse_prompt=six.coarse_prompt, fine_prompt=edited)
    assert voice_digest(load_voice(str(path))) != voice_digest(six)  # same path, new content


def test_model_identity_changes_when_a_local_checkpoints_files_change(tmp_path, tiny_model_dir):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = load_config(_config(tmp_path, model))
    before = _parts(Fingerprinter(config, model))
    assert _parts(Fingerprinter(config, model)) == before  # stable
    (model / "config.json").write_text((model / "config.json").read_text() + "\n")
    after = _parts(Fingerprinter(config, model))
    assert [name for name in before if before[name] != after[name]] == ["model"]


def test_settings_that_change_the_audio_change_the_fingerprint_and_others_do_not(tmp_path, tiny_model_dir):
    raw = yaml.safe_load(open(_config(tmp_path, tiny_model_dir)))
    base = _parts(Fingerprinter(load_config(_config(tmp_path, tiny_model_dir)), tiny_model_dir))

    def with_(**section) -> dict[str, str]:
        path = tmp_path / "variant.yaml"
        path.write_text(yaml.safe_dump({**raw, **section}))
        return _parts(Fingerprinter(load_config(path), tiny_model_dir))

    assert with_(output={**raw["output"], "format": "flac"})["settings"] != base["settings"]
    assert with_(text={**raw["text"], "max_chars": 100})["settings"] != base["settings"]
    assert with_(text={**raw["text"], "target_speech_s": 8})["settings"] != base["settings"]
    assert with_(text={**raw["text"], "max_speech_s": 15})["settings"] != base["settings"]
    assert with_(output={**raw["output"], "subtitles": True}) == base  # which files, not the audio
    assert with_(scheduler={"max_chunks_in_flight": 3}) == base  # speed, not the audio
    fingerprinter = Fingerprinter(load_config(_config(tmp_path, tiny_model_dir)), tiny_model_dir)
    sampling = SamplingSet.model_validate({"semantic": {"temperature": 0.5}})
    assert [k for k, v in _parts(fingerprinter, sampling=sampling).items() if v != base[k]] == ["sampling"]
    assert [k for k, v in _parts(fingerprinter, voice_mode="chained").items() if v != base[k]] == ["voice_mode"]


def test_the_speech_budget_at_its_defaults_keeps_the_fingerprints_of_character_budget_outputs(tmp_path, tiny_model_dir):
    """Outputs made when ``text.max_chars: 220`` was the budget (set, or its default) are not all
    redone because the budget became seconds of speech: the new settings at their defaults and an
    unset ``max_chars`` are recorded as before."""
    raw = yaml.safe_load(open(_config(tmp_path, tiny_model_dir)))

    def settings_of(text: dict) -> str:
        path = tmp_path / "variant.yaml"
        path.write_text(yaml.safe_dump({**raw, "text": text}))
        return _parts(Fingerprinter(load_config(path), tiny_model_dir))["settings"]

    before = settings_of({"max_chars": 220, "max_tokens": 200})  # what configs/tiny.yaml said
    assert settings_of({"max_tokens": 200}) == before
    assert settings_of({"target_speech_s": 10, "max_speech_s": 13, "max_tokens": 200}) == before
