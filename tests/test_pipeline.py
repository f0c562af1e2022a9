"""The pipeline through real Ray actors: placement, a whole job, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.scheduler import StagePipeline
from tests.conftest import REPO

STORY = (
    "It was a bright cold day in April. The clocks were striking thirteen, and nobody in the town "
    "seemed to mind. Mr. Smith walked to the station; he carried a small brown case.\n\n"
    "At the station the train was late. He waited, and waited, and read the paper twice! "
    "Would it ever come? Finally the whistle blew."
)


@pytest.fixture()
def tiny_config(tmp_path, tiny_model_dir):
    """configs/tiny.yaml pointed at the session's tiny checkpoint, with short semantic runs."""
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw.setdefault("sampling", {}).setdefault("semantic", {})["max_new_tokens"] = 48
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_each_stage_lands_on_its_own_logical_gpu(ray_session, tiny_config):
    pipeline = StagePipeline(load_config(tiny_config))
    try:
        placements = pipeline.placements()
    finally:
        pipeline.shutdown()
    assert sorted(p["stage"] for p in placements) == ["coarse", "codec", "fine", "semantic"]
    gpu_ids = [p["gpu_ids"] for p in placements]
    assert all(len(ids) == 1 for ids in gpu_ids), gpu_ids
    assert len({ids[0] for ids in gpu_ids}) == 4, "two stages share a GPU"
    for p in placements:
        assert p["cuda_visible_devices"] == p["gpu_ids"][0]
        assert p["device"] == "cpu"  # no CUDA here: the actor falls back to the CPU


def test_job_narrates_texts_in_order_and_isolates_bad_items(ray_session, tiny_config, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "story.txt").write_text(STORY, encoding="utf-8")
    (inputs / "short.txt").write_text("Hello there.", encoding="utf-8")
    (inputs / "empty.txt").write_text("   \n", encoding="utf-8")
    (inputs / "broken.txt").write_bytes(b"caf\xe9 au lait")
    out = tmp_path / "out"

    code = main(["run", "--config", str(tiny_config), "--input", str(inputs), "--output", str(out), "--voice", "v2/en_speaker_6"])

    assert code == 1  # two bad items failed, the others went on
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    by_id = {m["id"]: m for m in manifest}
    assert set(by_id) == {"story", "short", "empty", "broken"}
    assert by_id["empty"]["status"] == "failed" and "text" in by_id["empty"]["error"]
    assert by_id["broken"]["status"] == "failed" and by_id["broken"]["error"]
    for item_id in ("story", "short"):
        entry = by_id[item_id]
        assert entry["status"] == "ok" and entry["error"] is None
        audio, rate = sf.read(out / f"{item_id}.wav", dtype="float32")
        meta = json.loads((out / f"{item_id}.json").read_text())
        assert rate == 24_000 == meta["sample_rate"]
        assert len(audio) / rate == pytest.approx(meta["duration_s"], abs=1e-6)
        assert entry["duration_s"] == pytest.approx(meta["duration_s"])
        assert entry["uri"].endswith(f"{item_id}.wav")
        chunks = meta["chunks"]
        assert [c["index"] for c in chunks] == list(range(len(chunks)))
        silence = {"sentence": 0.25, "paragraph": 0.6, "chapter": 1.5}
        for a, b in zip(chunks, chunks[1:]):
            # joined in order, with the silence of the boundary kind (fades overlap it by 10 ms)
            assert b["start_s"] - a["end_s"] == pytest.approx(silence[a["break_after"]] - 0.01, abs=2e-3)
        assert chunks[-1]["break_after"] == "end"
        assert chunks[-1]["end_s"] == pytest.approx(meta["duration_s"], abs=1e-3)
        assert all(c["samples"] > 0 for c in chunks)
        assert set(meta["timings"]) == {"semantic", "coarse", "fine", "codec"}
        assert meta["voice"] == "v2/en_speaker_6"
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    story_chunks = json.loads((out / "story.json").read_text())["chunks"]
    assert len(story_chunks) > 1
    assert [c["break_after"] for c in story_chunks].count("paragraph") == 1
    assert " ".join(c["text"] for c in story_chunks).split() == STORY.split()


def test_same_job_twice_gives_identical_audio_whatever_the_batch_size(ray_session, tiny_config, tmp_path):
    inputs = tmp_path / "in.txt"
    inputs.write_text(STORY, encoding="utf-8")
    raw = yaml.safe_load(tiny_config.read_text())
    outputs = []
    for batch_size in (1, 4):
        for stage in ("semantic", "coarse", "fine", "codec"):
            raw.setdefault("stages", {}).setdefault(stage, {})["batch_size"] = batch_size
        config = tmp_path / f"b{batch_size}.yaml"
        config.write_text(yaml.safe_dump(raw))
        out = tmp_path / f"out{batch_size}"
        assert main(["run", "--config", str(config), "--input", str(inputs), "--output", str(out), "--quiet"]) == 0
        outputs.append(sf.read(out / "in.wav", dtype="float32")[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_bad_config_exits_2_with_one_line_naming_the_field(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model: {source: x}\nstages: {coarse: {batch_sise: 4}}\n")
    (tmp_path / "a.txt").write_text("hi")
    result = _cli("run", "--config", str(config), "--input", str(tmp_path / "a.txt"), "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stages.coarse.batch_sise" in lines[0]


def test_missing_input_and_bad_arguments_exit_2(tmp_path):
    result = _cli("run", "--config", str(REPO / "configs" / "tiny.yaml"), "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"))
    assert result.returncode == 2 and "--input" in result.stderr
    assert _cli("run", "--config").returncode == 2
    assert _cli("frobnicate").returncode == 2


def test_voices_command_lists_every_preset_of_the_bark_package():
    result = _cli("voices")
    names = result.stdout.split()
    assert result.returncode == 0 and len(names) == 271
    assert {"v2/en_speaker_6", "announcer", "v2/zh_speaker_9"} <= set(names)
