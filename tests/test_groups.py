"""Chunks travel in groups: one call per stage and one writer call for the chunks a turn of the
job's loop sends, each chunk still with its own output, receipt and failure."""

from __future__ import annotations

import dataclasses
import json

import ray
import soundfile as sf
import yaml

from pipeline.config import SchedulerConfig, load_config
from pipeline.job import NarrationJob
from pipeline.scheduler import StagePipeline, group_limit
from pipeline.sources import Item
from tests.conftest import REPO
from workers.config import STAGE_NAMES

N_ITEMS = 12
BAD = "i01"  # in the first group, with three good items
MAX_GROUP = 4
IN_FLIGHT = 16  # every item fits in the first turn: groups of items 0-3, 4-7, 8-11


def test_a_group_is_capped_by_max_group_and_by_the_replicas_it_must_feed():
    assert group_limit(SchedulerConfig(max_chunks_in_flight=64, max_group=16), widest=1) == 16
    assert group_limit(SchedulerConfig(max_chunks_in_flight=64, max_group=16), widest=8) == 2  # 8 replicas x 4 stages
    assert group_limit(SchedulerConfig(max_chunks_in_flight=4, max_group=16), widest=2) == 1
    assert group_limit(SchedulerConfig(max_chunks_in_flight=512, max_group=1), widest=1) == 1  # grouping off


def _config(tmp_path, model_dir) -> str:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"source": str(model_dir), "format": "hf"}
    for stage in raw["stages"].values():
        stage["num_gpus"] = 0
    raw["sampling"]["semantic"]["max_new_tokens"] = 16
    raw["scheduler"] = {"max_chunks_in_flight": IN_FLIGHT, "max_group": MAX_GROUP}
    raw["output"].update(subtitles=False)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _poison(spec_of):
    """The planner, but item BAD's semantic temperature slipped past validation (built without it):
    its numbers go bad inside the semantic stage, as in tests/test_engines.py."""

    def spec(item):
        spec = spec_of(item)
        if item.id != BAD:
            return spec
        semantic = spec.sampling.semantic
        bad = type(semantic).model_construct(**{**semantic.model_dump(), "temperature": 1e-38})
        return dataclasses.replace(spec, sampling=spec.sampling.model_copy(update={"semantic": bad}))

    return spec


def test_a_failing_chunk_fails_only_its_item_and_a_group_is_one_call_per_stage(ray_session, tiny_model_dir, tmp_path):
    config = load_config(_config(tmp_path, tiny_model_dir))
    pipeline = StagePipeline(config)  # the job's, left running by it, so its actors can be asked what they got
    try:
        pipeline.placements()
        out = tmp_path / "out"
        job = NarrationJob(config, str(out), quiet=True, pipeline=pipeline)
        job.planner.spec = _poison(job.planner.spec)
        items = [Item(id=f"i{n:02d}", text=f"Sentence number {n} is read aloud.") for n in range(N_ITEMS)]
        summary = job.run(iter(items))
        calls = {s: ray.get([a.calls.remote() for a in pipeline.replicas[s]]) for s in STAGE_NAMES}
        received = {s: ray.get([a.received.remote() for a in pipeline.replicas[s]]) for s in STAGE_NAMES}
    finally:
        pipeline.shutdown()

    assert (summary.ok, summary.failed) == (N_ITEMS - 1, 1)
    entries = {e["id"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert set(entries) == {item.id for item in items}
    bad = entries.pop(BAD)
    assert bad["status"] == "failed" and bad["error"].startswith("chunk 0: semantic: ") and "NaN" in bad["error"], bad
    assert "\n" not in bad["error"]
    assert not (out / f"{BAD}.wav").exists()
    for item_id, entry in entries.items():  # the bad chunk's three group mates too
        assert entry["status"] == "ok", entry
        audio, rate = sf.read(out / f"{item_id}.wav", dtype="float32")
        assert rate == 24_000 and len(audio) > 0

    # Counted, not timed: every stage got every chunk, in three calls (groups of items 0-3, 4-7, 8-11);
    # the later stages passed the failed chunk's record on without queuing it.
    assert received == {"semantic": [N_ITEMS], "coarse": [N_ITEMS - 1], "fine": [N_ITEMS - 1], "codec": [N_ITEMS - 1]}
    assert calls == {s: [N_ITEMS // MAX_GROUP] for s in STAGE_NAMES}, calls
    assert all(count < N_ITEMS for counts in calls.values() for count in counts)
