"""Admitting an item into a job: its own voice and its text's length are checked against
the job's limits and voice rules, and a bad item fails alone with one line in the manifest.

These run ``NarrationJob._admit`` without Ray: admission happens before any chunk is
sent, and the manifest it writes is read back as a user would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from pipeline.config import ConfigError, load_config
from pipeline.job import NarrationJob
from pipeline.sources import Item
from tests.conftest import REPO
from tests.test_voices import good_arrays


@pytest.fixture
def voice_files(tmp_path):
    voices = tmp_path / "configs" / "voices"
    voices.mkdir(parents=True)
    np.savez(voices / "narrator.npz", **good_arrays())
    private = tmp_path / "private"
    private.mkdir()
    np.savez(private / "secret.npz", **good_arrays())
    return voices, private


def job_config(tmp_path, tiny_model_dir, **overrides):
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw.update(overrides)
    path = tmp_path / "configs" / "job.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def admit_all(config, output, items) -> tuple[dict, dict]:
    """(voice name of each admitted item, manifest error of each failed one)."""
    job = NarrationJob(config, str(output), quiet=True)
    admitted = {}
    try:
        for item in items:
            run = job._admit(item)
            if run is not None:
                admitted[item.id] = run.plan.voice_name
    finally:
        job.close()
    lines = [json.loads(line) for line in (output / "manifest.jsonl").read_text().splitlines()]
    assert all(line["status"] == "failed" for line in lines)
    return admitted, {line["id"]: line["error"] for line in lines}


def test_item_voices_come_from_presets_and_voices_dir_only(tiny_model_dir, tmp_path, voice_files):
    _, private = voice_files
    config = job_config(tmp_path, tiny_model_dir, voices_dir="voices", voice=str(private / "secret.npz"))
    assert config.voices_dir == (tmp_path / "configs" / "voices").resolve()  # relative to the config's folder
    admitted, failed = admit_all(
        config,
        tmp_path / "out",
        [
            Item("cast", "Hello there.", voice="narrator.npz"),
            Item("preset", "Hello there.", voice="v2/en_speaker_1"),
            Item("default", "Hello there."),
            Item("climb", "Hello there.", voice="../../private/secret.npz"),
            Item("absolute", "Hello there.", params={"voice": str(private / "secret.npz")}),
            Item("missing", "Hello there.", voice="nobody.npz"),
            Item("after", "Still admitted."),
        ],
    )
    # The job's own voice may be any file its user names; items may not reach it by path.
    assert admitted == {
        "cast": "narrator.npz", "preset": "v2/en_speaker_1", "default": str(private / "secret.npz"),
        "after": str(private / "secret.npz"),
    }
    assert failed == {
        "climb": "voice: voice '../../private/secret.npz': not allowed: an item's voice file must be a relative path inside voices_dir",
        "absolute": f"voice: voice '{private / 'secret.npz'}': not allowed: an item's voice file must be a relative path inside voices_dir",
        "missing": "voice: voice 'nobody.npz': no such file in voices_dir",
    }


def test_allow_voice_paths_lets_items_name_any_file(tiny_model_dir, tmp_path, voice_files):
    _, private = voice_files
    config = job_config(tmp_path, tiny_model_dir, allow_voice_paths=True)
    admitted, failed = admit_all(config, tmp_path / "out", [Item("a", "Hello.", voice=str(private / "secret.npz"))])
    assert admitted == {"a": str(private / "secret.npz")} and failed == {}


def test_an_item_over_the_text_limit_fails_alone_with_the_limit_named(tiny_model_dir, tmp_path):
    config = job_config(tmp_path, tiny_model_dir, limits={"max_item_chars": 1000})
    admitted, failed = admit_all(
        config, tmp_path / "out", [Item("long", "Word. " * 200), Item("short", "Word. " * 100)]
    )
    assert list(admitted) == ["short"]
    assert failed == {"long": "text: 1200 characters, over limits.max_item_chars (1000)"}


def test_limits_are_validated_with_their_path_and_take_units(tiny_model_dir, tmp_path):
    config = job_config(tmp_path, tiny_model_dir, limits={"max_item_bytes": "2 MiB", "max_voice_bytes": "512KB"})
    assert (config.limits.max_item_bytes, config.limits.max_voice_bytes) == (2 << 20, 512_000)
    assert config.limits.max_item_chars == 1_000_000  # the defaults stay
    with pytest.raises(ConfigError, match=r"limits\.max_item_chars: Input should be greater than or equal to 1"):
        job_config(tmp_path, tiny_model_dir, limits={"max_item_chars": 0})
    with pytest.raises(ConfigError, match=r"limits\.max_line_bytes: Extra inputs are not permitted"):
        job_config(tmp_path, tiny_model_dir, limits={"max_line_bytes": 5})


def test_metadata_depth_cannot_be_set_past_what_the_metadata_writer_takes(tiny_model_dir, tmp_path):
    from pipeline.assembly import ItemMetadata
    from pipeline.config import MAX_METADATA_DEPTH

    with pytest.raises(ConfigError, match=r"limits\.max_metadata_depth: Input should be less than or equal to 200"):
        job_config(tmp_path, tiny_model_dir, limits={"max_metadata_depth": 300})
    deepest = "bottom"
    for _ in range(MAX_METADATA_DEPTH):
        deepest = {"in": deepest}
    ItemMetadata(
        id="a", status="ok", duration_s=1, sample_rate=24000, voice_mode="fixed", language="en",
        seed=0, model="m", wall_s=1, extra={"meta": deepest},
    ).model_dump_json()
