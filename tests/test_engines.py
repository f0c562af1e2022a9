"""A chunk's sampled tokens are its own: the same at any batch size, in any arrival order,
on either of two replicas; a row whose numbers go bad fails alone."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from transformers.models.bark.generation_configuration_bark import BarkFineGenerationConfig

from pipeline.voices import load_voice
from workers.checkpoints import load_settings_for, load_stage_model, load_tokenizer
from workers.coarse import CoarsePolicy
from workers.config import CoarseSampling, FineSampling, ModelConfig, SemanticSampling
from workers.engine import Admission, GptEngine, run_to_completion
from workers.fine import FineEngine
from workers.records import CoarseRequest, FineRequest, SemanticRequest
from workers.semantic import SemanticPolicy

N_CHUNKS = 16
BATCH_SIZES = (1, 3, 16)
WORDS = "the quick brown fox jumps over a lazy dog while rain falls on every quiet street".split()


@pytest.fixture(scope="module")
def stage(tiny_model_dir):
    config = ModelConfig(source=str(tiny_model_dir))
    settings = load_settings_for(config)
    # The fine stage's windows shrunk from 1024/512 frames to 256/128: the same code paths
    # (first window, history, sliding windows, a last window pulled back) at a sixteenth of the cost.
    fine = BarkFineGenerationConfig(**{**settings.fine.to_dict(), "max_fine_input_length": 256, "max_fine_history_length": 128})
    return {
        "models": {s: load_stage_model(config, s, "cpu", torch.float32) for s in ("semantic", "coarse", "fine")},
        "settings": settings,
        "fine_settings": dataclasses.replace(settings, fine=fine),
        "tokenizer": load_tokenizer(config),
        "voices": [None, load_voice("v2/en_speaker_6"), load_voice("v2/fr_speaker_2")],
    }


def _semantic_admissions(stage) -> list[Admission]:
    rng = random.Random(1)
    sampling = SemanticSampling(temperature=0.7, top_k=50, min_eos_p=0.2, max_new_tokens=48)
    return [
        Admission(
            i,
            SemanticRequest(
                key=str(i),
                text_ids=stage["tokenizer"].encode(" ".join(rng.choices(WORDS, k=rng.randint(1, 14))), add_special_tokens=False),
                voice=stage["voices"][i % 3],
                seed=5000 + i,
                sampling=sampling,
            ),
        )
        for i in range(N_CHUNKS)
    ]


def _coarse_admissions(stage) -> list[Admission]:
    rng = np.random.default_rng(2)
    vocab = stage["settings"].semantic_vocab_size
    return [
        Admission(i, CoarseRequest(key=str(i), voice=stage["voices"][i % 3], seed=6000 + i, sampling=CoarseSampling(top_p=0.9)), rng.integers(0, vocab, int(rng.integers(1, 50))))
        for i in range(N_CHUNKS)
    ]


def _fine_admissions(stage) -> list[Admission]:
    rng = np.random.default_rng(3)
    codebook = stage["settings"].codebook_size
    lengths = [600, 300] + [int(n) for n in rng.integers(1, 130, N_CHUNKS - 2)]  # two chunks of several windows
    return [
        Admission(i, FineRequest(key=str(i), voice=stage["voices"][i % 3], seed=7000 + i, sampling=FineSampling()), rng.integers(0, codebook, (2, n)))
        for i, n in enumerate(lengths)
    ]


ENGINES = {
    "semantic": (_semantic_admissions, lambda s, n: GptEngine(s["models"]["semantic"], SemanticPolicy(s["models"]["semantic"], s["settings"]), n)),  # noqa: E501
    "coarse": (_coarse_admissions, lambda s, n: GptEngine(s["models"]["coarse"], CoarsePolicy(s["models"]["coarse"], s["settings"]), n)),  # noqa: E501
    "fine": (_fine_admissions, lambda s, n: FineEngine(s["models"]["fine"], s["fine_settings"], n)),
}


@pytest.mark.parametrize("name", list(ENGINES))
def test_tokens_do_not_depend_on_batch_order_or_replica(stage, name):
    admissions_of, engine_of = ENGINES[name]
    admissions = admissions_of(stage)
    runs = {}
    for batch_size in BATCH_SIZES:
        results = run_to_completion(engine_of(stage, batch_size), admissions)
        runs[f"batch {batch_size}"] = {f.handle: f.tokens for f in results}
    shuffled = admissions[:]
    random.Random(4).shuffle(shuffled)
    runs["shuffled"] = {f.handle: f.tokens for f in run_to_completion(engine_of(stage, 3), shuffled)}
    replicas = [engine_of(stage, 4), engine_of(stage, 4)]  # two replicas, chunks dealt out in turn
    runs["two replicas"] = {
        f.handle: f.tokens for r, replica in enumerate(replicas) for f in run_to_completion(replica, shuffled[r::2])
    }
    reference = runs.pop(f"batch {BATCH_SIZES[0]}")
    assert all(len(tokens) > 0 for tokens in reference.values())
    for how, tokens in runs.items():
        for handle in range(N_CHUNKS):
            np.testing.assert_array_equal(tokens[handle], reference[handle], err_msg=f"{name}, {how}, chunk {handle}")


def _poisoned(request, temperature: float):
    """A request whose sampling slipped past validation (built without it)."""
    sampling = type(request.sampling).model_construct(**{**request.sampling.model_dump(), "temperature": temperature})
    return request.model_copy(update={"sampling": sampling})


@pytest.mark.parametrize("name", list(ENGINES))
def test_a_row_that_goes_bad_fails_alone(stage, name):
    """A temperature that overflows float32 (1e-38) gives NaN probabilities in its row only."""
    admissions_of, engine_of = ENGINES[name]
    good = admissions_of(stage)[:3]
    bad = Admission(99, _poisoned(good[0].request, 1e-38), good[0].upstream)
    alone = {f.handle: f.tokens for f in run_to_completion(engine_of(stage, 4), good)}
    together = run_to_completion(engine_of(stage, 4), [good[0], bad, good[1], good[2]])
    failed = [f for f in together if f.error is not None]
    assert [f.handle for f in failed] == [99] and failed[0].tokens is None and "NaN" in failed[0].error
    for finished in together:
        if finished.handle != 99:
            np.testing.assert_array_equal(finished.tokens, alone[finished.handle])


def test_a_static_batch_is_admitted_only_into_an_empty_engine(stage):
    engine = GptEngine(stage["models"]["semantic"], SemanticPolicy(stage["models"]["semantic"], stage["settings"]), 4, continuous=False)
    admissions = _semantic_admissions(stage)
    assert engine.room() == 4
    engine.admit(admissions[:2])
    assert engine.room() == 0  # two slots are free, but a static batch runs to its end first
    while engine.active:
        engine.step()
    assert engine.room() == 4


def test_a_stage_actor_fails_the_bad_chunk_and_returns_its_batch_mates(ray_session, stage, tiny_model_dir):
    """Through a real semantic actor: four chunks sent as one group, one with a temperature that
    slipped past validation; its output is a failure record, the other three return their tokens."""
    import ray

    from workers.actors import SemanticWorker
    from workers.config import StageConfig
    from workers.records import ChunkFailure, GroupEntry

    actor = SemanticWorker.options(num_gpus=0).remote(
        ModelConfig(source=str(tiny_model_dir)), StageConfig(batch_size=4, max_wait_ms=500, num_gpus=0)
    )
    try:
        good = [a.request for a in _semantic_admissions(stage)[:3]]
        bad = _poisoned(good[0], 1e-38).model_copy(update={"key": "bad"})
        entries = [GroupEntry(request=r) for r in (good[0], bad, good[1], good[2])]
        refs = actor.process_group.options(num_returns=4).remote(entries)
        failed = ray.get(refs[1])
        assert isinstance(failed, ChunkFailure) and failed.key == "bad", failed
        assert failed.error.startswith("semantic: ") and "NaN" in failed.error
        alone = {f.handle: f.tokens for f in run_to_completion(ENGINES["semantic"][1](stage, 4), _semantic_admissions(stage)[:3])}
        for handle, ref in zip((0, 1, 2), (refs[0], refs[2], refs[3])):
            np.testing.assert_array_equal(ray.get(ref).tokens, alone[handle])
    finally:
        ray.kill(actor)
