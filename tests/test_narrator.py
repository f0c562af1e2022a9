"""The Python API (pipeline.narrator) on real Ray actors and the tiny model: results in memory,
models loaded once across calls, bad items failing alone, resume on a kept output, close()."""

from __future__ import annotations

import pytest
import ray
import yaml

from pipeline import Narrator
from pipeline.config import JobConfig
from tests.conftest import REPO


def _config(tiny_model_dir) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw["sampling"]["semantic"]["max_new_tokens"] = 24
    return raw


def _actor_ids(narrator: Narrator) -> list[str]:
    return [actor._actor_id.hex() for actors in narrator.pipeline.replicas.values() for actor in actors]


def _check_ok(result) -> None:
    assert result.status == "ok" and result.error is None
    assert result.audio.dtype == "float32" and result.audio.ndim == 1
    assert result.sample_rate == result.metadata["sample_rate"] == 24000
    assert len(result.audio) / result.sample_rate == pytest.approx(result.metadata["duration_s"], abs=1e-3)
    assert "-->" in result.subtitles


@pytest.fixture(scope="module")
def narrator(ray_session, tiny_model_dir):
    """One Narrator for the module (on a 2-core machine a second set of stage actors would
    wait for CPUs the first holds); built from a JobConfig, as a dict would be."""
    with Narrator(JobConfig.model_validate(_config(tiny_model_dir))) as n:
        yield n


def test_two_calls_share_the_loaded_stage_actors(narrator):
    before = _actor_ids(narrator)
    first = narrator.narrate(["A short line.", "Another one."])
    assert [r.id for r in first] == ["0000", "0001"]
    second = narrator.narrate([{"id": "x", "text": "Once more, briefly.", "genre": "test"}])
    for result in first + second:
        _check_ok(result)
    assert second[0].metadata["extra"] == {"genre": "test"}
    assert _actor_ids(narrator) == before


def test_a_bad_item_fails_alone(narrator):
    results = narrator.narrate(
        [
            {"id": "good", "text": "Fine words."},
            {"id": "empty", "text": "  "},
            {"id": "bad", "text": "Some words.", "params": {"seed": -1}},
        ]
    )
    assert [(r.id, r.status) for r in results] == [("good", "ok"), ("empty", "failed"), ("bad", "failed")]
    _check_ok(results[0])
    for result, field in zip(results[1:], ("text", "params.seed")):
        assert result.error.startswith(field) and "\n" not in result.error
        assert result.audio is None and result.metadata is None


def test_kept_output_resumes_and_reads_back(narrator, tmp_path):
    out = tmp_path / "out"
    items = [{"id": "a", "text": "Kept on disk."}, {"id": "b/c", "text": "In a folder."}]
    first = narrator.narrate(items, output=out)
    for result in first:
        _check_ok(result)
    assert {p.name for p in out.iterdir()} >= {"a.wav", "a.json", "a.srt", "b", "manifest.jsonl"}
    written = {p: p.stat().st_mtime_ns for p in (out / "a.wav", out / "b" / "c.wav")}
    second = narrator.narrate(items, output=out)
    assert all(p.stat().st_mtime_ns == t for p, t in written.items())  # not narrated again
    for a, b in zip(first, second):
        assert (a.id, a.status, a.metadata, a.subtitles) == (b.id, b.status, b.metadata, b.subtitles)
        assert (a.audio == b.audio).all()


def test_close_kills_the_stage_actors(narrator):
    actor = narrator.pipeline.replicas["semantic"][0]
    narrator.close()
    assert narrator.pipeline is None
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actor.placement.remote(), timeout=60)
    with pytest.raises(RuntimeError, match="closed"):
        narrator.narrate(["Too late."])
