"""Long-form narration through real Ray actors: voices across chunks, reproducibility,
subtitles, saved tokens, Markdown and EPUB inputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from pipeline.cli import main
from workers.config import CoarseSampling, FineSampling, ModelConfig, SemanticSampling
from pipeline.planner import history_sources
from workers.records import CoarseRequest, FineRequest, SemanticRequest, VoicePrompt
from pipeline.voices import load_voice
from tests.conftest import REPO
from workers.checkpoints import load_settings_for, load_stage_model, load_tokenizer
from workers.coarse import CoarsePolicy
from workers.engine import Admission, GptEngine, run_to_completion
from workers.fine import FineEngine
from workers.semantic import SemanticPolicy

CHAPTER = (
    "The rain had not stopped for three days. Water ran down the gutters [sighs] and the streets "
    "were empty, except for a dog that nobody claimed.\n\n"
    "Anna watched from the window. \"Will it ever end?\" she asked. Her brother laughed — he always "
    "laughed — and said nothing at all... The clock struck NINE."
)


def _config(tmp_path, tiny_model_dir, name="job.yaml", **overrides) -> str:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw["sampling"]["semantic"]["max_new_tokens"] = 40
    raw["text"]["max_chars"] = 90
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _narrate(config: str, source, out) -> dict:
    assert main(["run", "--config", config, "--input", str(source), "--output", str(out), "--quiet"]) == 0
    return {m["id"]: m for m in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def test_history_sources_per_voice_mode():
    assert history_sources(4, "fixed", None, has_voice=True) == [None, None, None, None]
    assert history_sources(4, "fixed", None, has_voice=False) == [None, 0, 0, 0]
    assert history_sources(4, "chained", None, has_voice=True) == [None, 0, 1, 2]
    assert history_sources(5, "chained", 2, has_voice=True) == [None, 0, None, 2, None]
    assert history_sources(5, "chained", 2, has_voice=False) == [None, 0, 0, 2, 0]


@pytest.mark.parametrize(
    "quality", [{"retakes": 0}, {"retakes": 1, "silence_dbfs": 0.0}], ids=["first takes", "every chunk retaken"]
)
def test_chained_chunks_continue_the_previous_chunks_tokens(ray_session, tiny_model_dir, tmp_path, quality):
    """Every chunk's saved tokens equal a direct run of the stages whose voice is the previous chunk's tokens;
    where every take is judged implausible (all audio is under 0 dBFS), the chunk's kept take (its seed is
    the retake's) continues the previous chunk's kept take."""
    source = tmp_path / "chapter.txt"
    source.write_text(CHAPTER, encoding="utf-8")
    config = _config(tmp_path, tiny_model_dir, voice_mode="chained", output__save_tokens=True, quality=quality)
    out = tmp_path / "out"
    _narrate(config, source, out)
    meta = json.loads((out / "chapter.json").read_text())
    chunks = meta["chunks"]
    assert len(chunks) >= 3
    assert [c["take"] for c in chunks] == [quality["retakes"]] * len(chunks)
    assert [c["voice"] for c in chunks] == ["v2/en_speaker_6"] + [f"chunk {i}" for i in range(len(chunks) - 1)]

    model = ModelConfig(source=str(tiny_model_dir))
    settings, tokenizer = load_settings_for(model), load_tokenizer(model)
    stages = {s: load_stage_model(model, s, "cpu", torch.float32) for s in ("semantic", "coarse", "fine")}
    job = yaml.safe_load(open(config))
    semantic_sampling = SemanticSampling(**job["sampling"]["semantic"])
    from pipeline.seeds import stage_seed

    voice = load_voice("v2/en_speaker_6")
    for chunk in chunks:
        saved = load_voice(str(out / "chapter.tokens" / f"{chunk['index']:04d}.npz"))
        ids = tokenizer.encode(chunk["text"], add_special_tokens=False)
        semantic_request = SemanticRequest(key="k", text_ids=ids, voice=voice, seed=stage_seed(chunk["seed"], "semantic"), sampling=semantic_sampling)
        semantic = run_to_completion(GptEngine(stages["semantic"], SemanticPolicy(stages["semantic"], settings), 1), [Admission(0, semantic_request)])[0].tokens
        coarse_sampling = CoarseSampling(**job["sampling"]["coarse"])
        coarse_request = CoarseRequest(key="k", voice=voice, seed=stage_seed(chunk["seed"], "coarse"), sampling=coarse_sampling)
        coarse = run_to_completion(GptEngine(stages["coarse"], CoarsePolicy(stages["coarse"], settings), 1), [Admission(0, coarse_request, semantic)])[0].tokens
        fine_request = FineRequest(key="k", voice=voice, seed=stage_seed(chunk["seed"], "fine"), sampling=FineSampling(**job["sampling"]["fine"]))
        fine = run_to_completion(FineEngine(stages["fine"], settings, 1), [Admission(0, fine_request, coarse)])[0].tokens
        np.testing.assert_array_equal(saved.semantic_prompt, semantic)
        np.testing.assert_array_equal(saved.coarse_prompt, coarse)
        np.testing.assert_array_equal(saved.fine_prompt, fine)
        voice = VoicePrompt(name="previous", semantic_prompt=semantic, coarse_prompt=coarse, fine_prompt=fine)


def test_same_audio_whatever_batching_replicas_or_order(ray_session, quick_model_dir, tmp_path):
    """Chained voices, random item voice: the hardest case for ordering (fixed voices: test_pipeline)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text(CHAPTER, encoding="utf-8")
    (inputs / "b.txt").write_text("A second, shorter text. It has two sentences.", encoding="utf-8")
    layouts = [
        {"batch_size": 1, "replicas": 1},
        {"batch_size": 3, "replicas": 2},
    ]
    results = []
    for n, layout in enumerate(layouts):
        stages = {s: {**layout, "num_gpus": 0.5} for s in ("semantic", "coarse", "fine", "codec")}
        config = _config(tmp_path, quick_model_dir, f"c{n}.yaml", voice_mode="chained", stages=stages, voice=None)
        out = tmp_path / f"out{n}"
        _narrate(config, inputs, out)
        results.append({i: sf.read(out / f"{i}.wav", dtype="float32")[0] for i in ("a", "b")})
    for item in ("a", "b"):
        np.testing.assert_array_equal(results[0][item], results[1][item])


def _parse_srt(text: str) -> list[tuple[float, float, str]]:
    stamp = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        match = re.fullmatch(f"{stamp} --> {stamp}", lines[1])
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, match.groups())
        cues.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000, " ".join(lines[2:])))
    return cues


def test_markdown_with_chapters_subtitles_and_item_params(ray_session, tiny_model_dir, tmp_path):
    book = tmp_path / "book.md"
    book.write_text(
        "---\nvoice: v2/de_speaker_3\nsampling: {semantic: {temperature: 0.5}}\n---\n"
        "# Chapter One\n\nThe *first* chapter begins here. It is short.\n\n"
        "# Chapter Two\n\nThe second chapter. [laughs] It ends.\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    line = 16  # output.subtitles as a table: lines of at most 16 characters
    config = _config(tmp_path, tiny_model_dir, output__format="flac", output__subtitles={"max_line_chars": line})
    manifest = _narrate(config, book, out)
    assert manifest["book"]["status"] == "ok"
    audio, rate = sf.read(out / "book.flac", dtype="float32")
    meta = json.loads((out / "book.json").read_text())
    assert rate == 24_000 and meta["voice"] == "v2/de_speaker_3"
    assert "chapter" in [c["break_after"] for c in meta["chunks"]]
    words = " ".join(c["text"] for c in meta["chunks"]).split()
    assert words[:2] == ["Chapter", "One"] and "[laughs]" in words and "*first*" not in words
    duration = len(audio) / rate
    cues = _parse_srt((out / "book.srt").read_text())
    assert cues and all(a < b for a, b, _ in cues)
    assert all(b1 <= a2 for (_, b1, _), (a2, _, _) in zip(cues, cues[1:]))
    assert cues[-1][1] <= duration + 1e-3
    assert " ".join(t for _, _, t in cues).split() == words
    srt_lines = [ln for block in (out / "book.srt").read_text().strip().split("\n\n") for ln in block.splitlines()[2:]]
    assert srt_lines and all(len(ln) <= line for ln in srt_lines)
    assert 0 <= meta["subtitles_too_fast"] <= len(cues)  # the tiny model's speech has no set pace
    vtt = (out / "book.vtt").read_text()
    assert vtt.startswith("WEBVTT") and vtt.count("-->") == len(cues)


def test_resampling_is_applied_when_asked(ray_session, tiny_model_dir, tmp_path):
    source = tmp_path / "x.txt"
    source.write_text("Just one sentence to narrate.", encoding="utf-8")
    out = tmp_path / "out"
    _narrate(_config(tmp_path, tiny_model_dir, output__sample_rate=16_000), source, out)
    audio, rate = sf.read(out / "x.wav")
    meta = json.loads((out / "x.json").read_text())
    assert rate == 16_000 == meta["sample_rate"]
    assert len(audio) / rate == pytest.approx(meta["duration_s"], abs=1e-3)
