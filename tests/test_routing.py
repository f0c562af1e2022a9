"""Work goes where there is room, and a voice ships once.

Each stage's replica is the one with the fewest chunks outstanding, so a replica
that falls behind gets fewer new chunks, and tokens never depend on where a chunk
went. A voice prompt is put in the object store once while chunks read it and is
never pickled into the stage requests."""

from __future__ import annotations

import pickle
import time

import numpy as np
import ray
import yaml

from pipeline.config import load_config
from pipeline.job import NarrationJob
from pipeline.scheduler import ChunkWork, StagePipeline, VoiceShelf, least_loaded, stage_requests
from pipeline.sources import Item
from pipeline.voices import load_voice
from tests.conftest import REPO
from workers.config import CoarseSampling
from workers.records import CoarseRequest, GroupEntry, StageOutput

WORDS = "the quick brown fox jumps over a lazy dog while rain falls on every quiet street".split()


def _config(tmp_path, model_dir, name: str, coarse_replicas: int = 1) -> str:
    """configs/tiny.yaml on the session's checkpoint, no GPUs (five actors on four logical GPUs
    would not fit), short semantic runs, every chunk's tokens saved for comparison."""
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"source": str(model_dir), "format": "hf"}
    for stage in raw["stages"].values():
        stage["num_gpus"] = 0
    raw["stages"]["coarse"]["replicas"] = coarse_replicas
    raw["sampling"]["semantic"]["max_new_tokens"] = 16
    raw["scheduler"]["max_chunks_in_flight"] = 8
    raw["output"].update(subtitles=False, save_tokens=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# ------------------------------------------------------------------ the choice rule


def test_the_replica_with_fewest_outstanding_chunks_is_chosen_ties_to_the_lowest_index():
    assert least_loaded([3, 1, 2]) == 1
    assert least_loaded([2, 1, 1]) == 1  # a tie: the lower index
    assert least_loaded([0, 0, 0]) == 0
    assert least_loaded([5]) == 0
    # From idle, submitting without finishing deals chunks out in turn, as round robin did.
    outstanding, chosen = [0, 0, 0], []
    for _ in range(6):
        chosen.append(least_loaded(outstanding))
        outstanding[chosen[-1]] += 1
    assert chosen == [0, 1, 2, 0, 1, 2]


def test_a_voice_is_put_once_while_chunks_read_it_and_dropped_after_the_last(ray_session):
    shelf = VoiceShelf()
    job_voice, item_voice = load_voice("v2/en_speaker_6"), load_voice("v2/en_speaker_6")
    refs = [shelf.take(job_voice) for _ in range(3)]
    assert shelf.puts == 1 and len(set(refs)) == 1
    other = shelf.take(item_voice)  # equal in value, but an item's own voice: its own object
    assert shelf.puts == 2 and other != refs[0] and len(shelf) == 2
    for ref in refs:
        shelf.release(ref)
    assert len(shelf) == 1  # the job voice's last reader finished: its ref is dropped
    shelf.release(other)
    assert len(shelf) == 0
    shelf.take(job_voice)
    assert shelf.puts == 3  # in use again: put again


def test_no_stage_request_carries_the_voice(ray_session):
    voice = load_voice("v2/en_speaker_6")
    config = load_config(REPO / "configs" / "tiny.yaml")
    work = ChunkWork(key="k", text_ids=list(range(40)), voice=voice, seed=1, sampling=config.sampling)
    voice_bytes = sum(a.nbytes for a in (voice.semantic_prompt, voice.coarse_prompt, voice.fine_prompt))
    requests = stage_requests(work)
    assert [stage for stage, _ in requests] == ["semantic", "coarse", "fine", "codec"]
    for stage, request in requests:
        assert getattr(request, "voice", None) is None, stage
        assert len(pickle.dumps(request)) < voice_bytes / 10, stage


# ------------------------------------------------------------------ through real actors


def test_chunks_read_their_voice_from_one_shared_ref_with_unchanged_tokens(ray_session, tiny_model_dir, tmp_path):
    """Tokens through the pipeline (voice as one ref) equal the tokens of the same requests with the
    voice pickled inside each, sent to the same actors; without a voice the tokens differ."""
    config = load_config(_config(tmp_path, tiny_model_dir, "voice"))
    voice = load_voice("v2/en_speaker_6")
    pipeline = StagePipeline(config)
    try:
        pipeline.placements()
        works = [
            ChunkWork(key=f"c{i}", text_ids=list(range(5 + i, 25 + i)), voice=voice, seed=100 + i, sampling=config.sampling)
            for i in range(3)
        ]
        silent = ChunkWork(key="silent", text_ids=works[0].text_ids, voice=None, seed=works[0].seed, sampling=config.sampling)
        chunks = pipeline.submit([*works, silent])
        assert pipeline.voices.puts == 1 and len({c.voice for c in chunks[:3]}) == 1 and chunks[3].voice is None
        fine = [ray.get(c.fine) for c in chunks]
        for c in chunks:
            ray.get(c.audio)
            pipeline.finished(c)
        assert len(pipeline.voices) == 0 and pipeline.outstanding == {s: [0] for s in pipeline.outstanding}

        # The old way: the voice pickled into every request, chained through the same actors.
        for work, got in zip(works, fine):
            upstream = None
            for stage, request in stage_requests(work)[:3]:
                actor = pipeline.replicas[stage][0]
                entry = GroupEntry(request=request.model_copy(update={"voice": voice}), upstream=0 if upstream else None)
                upstream = actor.process_group.remote([entry], *([upstream] if upstream else []))
            expected = ray.get(upstream)
            for part in ("semantic", "coarse", "tokens"):
                np.testing.assert_array_equal(getattr(got, part), getattr(expected, part), err_msg=f"{work.key} {part}")
        assert not np.array_equal(fine[3].semantic, fine[0].semantic), "the voice made no difference: nothing was tested"
    finally:
        pipeline.shutdown()


N_ITEMS = 24
# Long coarse chunks queued on the slowed replica ahead of the job: ~15 s of its work here, longer
# than the job takes to start its writers and bring its first chunks through the semantic stage.
LOAD_CHUNKS = 16
LOAD_SEMANTIC_TOKENS = 600


def _items() -> list[Item]:
    rng = np.random.default_rng(7)
    return [Item(id=f"i{n:02d}", text=" ".join(rng.choice(WORDS, 6)).capitalize() + ".") for n in range(N_ITEMS)]


def _tokens(out) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*.tokens/*.npz"))}


def test_a_slowed_coarse_replica_gets_fewer_chunks_and_no_tokens_change(ray_session, quick_model_dir, tmp_path, monkeypatch):
    """Two coarse replicas, replica 0 (the one ties favour) slowed by long chunks of real work sent
    straight to its actor before the job: the job's chunks that land there wait behind them, so it
    keeps them outstanding and the job's later chunks go to replica 1. Every chunk's tokens equal
    those of the same job on one coarse replica."""
    started = time.perf_counter()
    reference = tmp_path / "one"
    summary = NarrationJob(load_config(_config(tmp_path, quick_model_dir, "one")), str(reference), quiet=True).run(iter(_items()))
    assert (summary.ok, summary.failed) == (N_ITEMS, 0)
    one_replica_s = time.perf_counter() - started

    config = load_config(_config(tmp_path, quick_model_dir, "two", coarse_replicas=2))
    out = tmp_path / "two"
    job = NarrationJob(config, str(out), quiet=True)
    job.pipeline = StagePipeline(config)  # started here, so that its slow replica can be loaded first
    job.pipeline.placements()
    slowed = job.pipeline.replicas["coarse"][0]
    rng = np.random.default_rng(3)
    loads = [
        slowed.process_group.remote(
            [GroupEntry(request=CoarseRequest(key=f"load-{n}", seed=n, sampling=CoarseSampling()), upstream=0)],
            StageOutput(key=f"load-{n}", tokens=rng.integers(0, 10_000, LOAD_SEMANTIC_TOKENS)),
        )
        for n in range(LOAD_CHUNKS)
    ]
    while ray.get(slowed.received.remote()) < LOAD_CHUNKS:  # all queued there before the job's first chunk
        time.sleep(0.05)

    seen: dict = {}
    shutdown = StagePipeline.shutdown

    def count_then_shutdown(self):
        """Before the actors go: what each coarse replica received, and what the pipeline still counts."""
        try:
            seen["received"] = ray.get([a.received.remote() for a in self.replicas["coarse"]])
            seen["load_done"] = len(ray.wait(loads, num_returns=len(loads), timeout=0)[0])
            seen["outstanding"] = {stage: list(counts) for stage, counts in self.outstanding.items()}
            seen["voices"] = (self.voices.puts, len(self.voices))
        finally:
            shutdown(self)

    monkeypatch.setattr(StagePipeline, "shutdown", count_then_shutdown)
    started = time.perf_counter()
    summary = job.run(iter(_items()))
    assert (summary.ok, summary.failed) == (N_ITEMS, 0)

    slow, fast = seen["received"][0] - LOAD_CHUNKS, seen["received"][1]
    print(
        f"\ncoarse chunks of the job: slowed replica {slow}, other {fast}; {seen['load_done']} of {LOAD_CHUNKS} load "
        f"chunks done; job {time.perf_counter() - started:.1f} s (on one replica, unloaded: {one_replica_s:.1f} s)"
    )
    assert slow + fast == N_ITEMS
    assert slow * 3 <= fast, f"the slowed replica got {slow} of {N_ITEMS} chunks"
    # The job told the pipeline of every chunk it got back: nothing outstanding, the voice dropped.
    assert all(count == 0 for counts in seen["outstanding"].values() for count in counts), seen["outstanding"]
    assert seen["voices"] == (1, 0)  # the job's voice, put once for the whole job

    tokens = _tokens(out)
    assert len(tokens) == N_ITEMS and tokens == _tokens(reference)
