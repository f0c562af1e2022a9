"""Our stage engines against the first oracle: transformers' Bark sub-models, one chunk at a time, greedy.

The oracle models are loaded by transformers itself (``BarkModel.from_pretrained``),
ours by the stage loader, so the test also proves the loader reads the same
weights. Greedy tokens must match token for token, for every batch size, with
and without a voice, with chunks joining the slots mid-decode. (Sampled tokens
are compared with Suno's own code in ``test_suno_oracle.py``: transformers'
sampling order and stop rule differ from Suno's, and Suno's wins.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BarkModel
from transformers.models.bark.generation_configuration_bark import (
    BarkCoarseGenerationConfig,
    BarkFineGenerationConfig,
    BarkSemanticGenerationConfig,
)

from workers.config import CoarseSampling, FineSampling, ModelConfig, SemanticSampling
from workers.records import CoarseRequest, FineRequest, SemanticRequest
from pipeline.voices import load_voice
from workers.checkpoints import load_settings_for, load_stage_model, load_tokenizer
from workers.coarse import CoarsePolicy, flatten_coarse, unflatten_coarse
from workers.codec import decode_audio
from workers.engine import Admission, GptEngine, run_to_completion
from workers.fine import FineEngine
from workers.semantic import SemanticPolicy

TEXTS = [
    "Hello.",
    "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down.",
    "Ein kurzer Satz auf Deutsch, bitte.",
]
GREEDY = 0.0
SEMANTIC_STEPS = 96  # enough for several coarse windows, short enough for CI


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    model_config = ModelConfig(source=str(tiny_model_dir))
    oracle = BarkModel.from_pretrained(tiny_model_dir).eval()
    ours = {stage: load_stage_model(model_config, stage, "cpu", torch.float32) for stage in ("semantic", "coarse", "fine", "codec")}
    return {
        "oracle": oracle,
        "ours": ours,
        "settings": load_settings_for(model_config),
        "tokenizer": load_tokenizer(model_config),
    }


@pytest.fixture(scope="module")
def voices():
    return [None, load_voice("v2/en_speaker_6"), load_voice("v2/de_speaker_3")]


def _history(voice):
    if voice is None:
        return None
    return {k: torch.as_tensor(getattr(voice, k)) for k in ("semantic_prompt", "coarse_prompt", "fine_prompt")}


def _sampling_kwargs(sampling) -> dict:
    # transformers samples only with do_sample; top_k=0 turns off its default top-k of 50.
    assert sampling.temperature == GREEDY, "transformers is the greedy oracle"
    return {"do_sample": False, "top_k": 0}


def _oracle_semantic(tiny, text_ids, voice, seed, sampling: SemanticSampling):
    width = tiny["settings"].semantic.max_input_semantic_length
    ids = torch.zeros((1, width), dtype=torch.long)
    mask = torch.zeros((1, width), dtype=torch.long)
    ids[0, : len(text_ids)] = torch.as_tensor(text_ids)
    mask[0, : len(text_ids)] = 1
    config = BarkSemanticGenerationConfig(**tiny["settings"].semantic.to_dict())
    config.max_new_tokens = sampling.max_new_tokens
    torch.manual_seed(seed)
    out = tiny["oracle"].semantic.generate(
        ids,
        attention_mask=mask,
        semantic_generation_config=config,
        history_prompt=_history(voice),
        min_eos_p=sampling.min_eos_p,
        **_sampling_kwargs(sampling),
    )[0].numpy()
    eos = tiny["settings"].semantic.eos_token_id
    return out[:-1] if len(out) and out[-1] == eos else out


def _oracle_coarse(tiny, semantic, voice, seed, sampling: CoarseSampling):
    s = tiny["settings"]
    torch.manual_seed(seed)
    return tiny["oracle"].coarse_acoustics.generate(
        torch.as_tensor(semantic)[None].clone(),
        semantic_generation_config=BarkSemanticGenerationConfig(**s.semantic.to_dict()),
        coarse_generation_config=BarkCoarseGenerationConfig(**s.coarse.to_dict()),
        codebook_size=s.codebook_size,
        history_prompt=_history(voice),
        **_sampling_kwargs(sampling),
    )[0].numpy()


def _oracle_fine(tiny, coarse, voice):
    s = tiny["settings"]
    # transformers' fine model is greedy at temperature 1.0 (or None), samples otherwise.
    return tiny["oracle"].fine_acoustics.generate(
        torch.as_tensor(flatten_coarse(coarse, s))[None],
        semantic_generation_config=BarkSemanticGenerationConfig(**s.semantic.to_dict()),
        coarse_generation_config=BarkCoarseGenerationConfig(**s.coarse.to_dict()),
        fine_generation_config=BarkFineGenerationConfig(**s.fine.to_dict()),
        codebook_size=s.codebook_size,
        history_prompt=_history(voice),
        temperature=1.0,
    )[0].numpy()


def _engine(tiny, stage: str, slots: int, attention: str = "sdpa", **options) -> GptEngine:
    policy = {"semantic": SemanticPolicy, "coarse": CoarsePolicy}[stage]
    return GptEngine(tiny["ours"][stage], policy(tiny["ours"][stage], tiny["settings"]), slots, attention, **options)


def _drive(engine, admissions: list[Admission], arrivals: list[int]) -> dict:
    """Drives an engine the way its actor does, with chunks arriving over time:
    ``arrivals[i]`` chunks arrive before step ``i`` (the rest arrive at once after)."""
    waiting, arrived, results, step = [], 0, {}, 0
    while arrived < len(admissions) or waiting or engine.active:
        due = arrivals[step] if step < len(arrivals) else len(admissions) - arrived
        waiting += admissions[arrived : arrived + due]
        arrived = min(len(admissions), arrived + due)
        take, waiting = waiting[: engine.room()], waiting[engine.room() :]
        done = engine.admit(take) if take else []
        if engine.active:
            done += engine.step()
        results.update((f.handle, f.tokens) for f in done)
        step += 1
    return results


def _semantic_requests(tiny, voices, texts, seed: int, sampling) -> list[SemanticRequest]:
    return [
        SemanticRequest(
            key=str(i),
            text_ids=tiny["tokenizer"].encode(text, add_special_tokens=False),
            voice=voices[i % len(voices)],
            seed=seed + i,
            sampling=sampling,
        )
        for i, text in enumerate(texts)
    ]


TEXTS_LATE = TEXTS + ["Short.", "A fifth chunk arrives late and joins a running batch."]


@pytest.mark.parametrize("continuous", [True, False])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("slots", [1, 2, 4])
def test_semantic_greedy_matches_oracle(tiny, voices, slots, attention, continuous):
    """Chunks join and leave the slots at different steps; each still gets the oracle's tokens."""
    sampling = SemanticSampling(temperature=GREEDY, min_eos_p=0.2, max_new_tokens=SEMANTIC_STEPS)
    requests = _semantic_requests(tiny, voices, TEXTS_LATE, 600, sampling)
    engine = _engine(tiny, "semantic", slots, attention, continuous=continuous)
    ours = _drive(engine, [Admission(i, r) for i, r in enumerate(requests)], [1, 0, 0, 2, 0, 1])
    assert sorted(ours) == list(range(len(requests))) and engine.cache.free == slots
    for i, request in enumerate(requests):
        expected = _oracle_semantic(tiny, request.text_ids, request.voice, request.seed, sampling)
        assert ours[i].dtype == np.int64 and len(ours[i]) > 0
        np.testing.assert_array_equal(ours[i], expected, err_msg=f"chunk {i}")


@pytest.mark.parametrize("continuous", [True, False])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("slots", [1, 3])
def test_coarse_greedy_matches_oracle(tiny, voices, slots, attention, continuous):
    """Chunks at different windows share decode steps; prompts of one length prefill together."""
    rng = np.random.default_rng(13)
    vocab = tiny["settings"].semantic_vocab_size
    semantic = [rng.integers(0, vocab, n) for n in (5, 64, 23, 41, 1)]  # from under one window to several
    requests = [
        CoarseRequest(key=str(i), voice=voices[i % len(voices)], seed=700 + i, sampling=CoarseSampling(temperature=GREEDY))
        for i in range(len(semantic))
    ]
    engine = _engine(tiny, "coarse", slots, attention, continuous=continuous)
    admissions = [Admission(i, r, semantic[i]) for i, r in enumerate(requests)]
    ours = _drive(engine, admissions, [1, 0, 1, 0, 0, 0, 2])
    assert sorted(ours) == list(range(len(requests))) and engine.cache.free == slots
    for i, request in enumerate(requests):
        expected = _oracle_coarse(tiny, semantic[i], request.voice, request.seed, request.sampling)
        assert ours[i].shape == (2, tiny["settings"].coarse_length(len(semantic[i])) // 2)
        np.testing.assert_array_equal(flatten_coarse(ours[i], tiny["settings"]), expected, err_msg=f"chunk {i}")


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_fine_greedy_matches_oracle(tiny, voices, batch_size, attention):
    rng = np.random.default_rng(11)
    codebook = tiny["settings"].codebook_size
    lengths = [40, 1300, 700]  # one window, three windows with history, two windows
    coarse = [rng.integers(0, codebook, (2, n)) for n in lengths]
    requests = [
        FineRequest(key=str(i), voice=v, seed=300 + i, sampling=FineSampling(temperature=GREEDY))
        for i, v in enumerate(voices)
    ]
    engine = FineEngine(tiny["ours"]["fine"], tiny["settings"], batch_size, attention)
    ours = run_to_completion(engine, [Admission(i, r, c) for i, (r, c) in enumerate(zip(requests, coarse))])
    for request, finished, c in zip(requests, ours, coarse):
        expected = _oracle_fine(tiny, c, request.voice)
        assert finished.tokens.shape == (8, c.shape[1])
        np.testing.assert_array_equal(finished.tokens[:2], c)
        np.testing.assert_array_equal(finished.tokens, expected, err_msg=f"chunk {request.key}")


def test_codec_matches_oracle(tiny):
    rng = np.random.default_rng(5)
    settings = tiny["settings"]
    fine = [rng.integers(0, settings.codebook_size, (8, n)) for n in (10, 75, 33)]
    ours = decode_audio(tiny["ours"]["codec"], fine)
    for codes, audio in zip(fine, ours):
        with torch.no_grad():
            expected = tiny["oracle"].codec_decode(torch.as_tensor(codes)[None])[0].numpy()
        assert audio.dtype == np.float32
        assert audio.shape == (codes.shape[1] * settings.samples_per_frame,)
        np.testing.assert_allclose(audio, expected, rtol=0, atol=1e-5)


def test_chained_stages_match_oracle_end_to_end(tiny, voices):
    """One text through all four of our stages equals the oracle chained by hand (greedy)."""
    settings = tiny["settings"]
    voice = voices[1]
    ids = tiny["tokenizer"].encode(TEXTS[1], add_special_tokens=False)
    semantic_sampling = SemanticSampling(temperature=GREEDY, min_eos_p=0.2, max_new_tokens=SEMANTIC_STEPS)
    semantic = run_to_completion(
        _engine(tiny, "semantic", 1),
        [Admission(0, SemanticRequest(key="k", text_ids=ids, voice=voice, seed=1, sampling=semantic_sampling))]
    )[0].tokens
    coarse = run_to_completion(
        _engine(tiny, "coarse", 1),
        [Admission(0, CoarseRequest(key="k", voice=voice, seed=2, sampling=CoarseSampling(temperature=GREEDY)), semantic)]
    )[0].tokens
    fine = run_to_completion(
        FineEngine(tiny["ours"]["fine"], settings, 1),
        [Admission(0, FineRequest(key="k", voice=voice, seed=3, sampling=FineSampling(temperature=GREEDY)), coarse)]
    )[0].tokens
    audio = decode_audio(tiny["ours"]["codec"], [fine])[0]

    expected_semantic = _oracle_semantic(tiny, ids, voice, 1, semantic_sampling)
    expected_coarse = _oracle_coarse(tiny, expected_semantic, voice, 2, CoarseSampling(temperature=GREEDY))
    expected_fine = _oracle_fine(tiny, unflatten_coarse(expected_coarse, settings), voice)
    with torch.no_grad():
        expected_audio = tiny["oracle"].codec_decode(torch.as_tensor(expected_fine)[None])[0].numpy()
    np.testing.assert_array_equal(semantic, expected_semantic)
    np.testing.assert_array_equal(flatten_coarse(coarse, settings), expected_coarse)
    np.testing.assert_array_equal(fine, expected_fine)
    np.testing.assert_allclose(audio, expected_audio, rtol=0, atol=1e-5)


def test_compiled_decode_step_matches_oracle(tiny, voices):
    """decode_compile: torch_compile runs one fixed-shape step over every slot (idle ones
    included) and still gives each chunk the oracle's tokens."""
    settings = tiny["settings"]
    sampling = SemanticSampling(temperature=GREEDY, min_eos_p=0.2, max_new_tokens=32)
    requests = _semantic_requests(tiny, voices, TEXTS, 900, sampling)
    engine = _engine(tiny, "semantic", 2, decode_compile="torch_compile")
    semantic = _drive(engine, [Admission(i, r) for i, r in enumerate(requests)], [1, 0, 0, 1])
    coarse_requests = [CoarseRequest(key=r.key, voice=r.voice, seed=950 + i, sampling=CoarseSampling(temperature=GREEDY)) for i, r in enumerate(requests)]
    engine = _engine(tiny, "coarse", 2, decode_compile="torch_compile")
    coarse = _drive(engine, [Admission(i, r, semantic[i]) for i, r in enumerate(coarse_requests)], [1, 0, 0, 1])
    for i, (request, coarse_request) in enumerate(zip(requests, coarse_requests)):
        np.testing.assert_array_equal(semantic[i], _oracle_semantic(tiny, request.text_ids, request.voice, request.seed, sampling))
        expected = _oracle_coarse(tiny, semantic[i], request.voice, coarse_request.seed, coarse_request.sampling)
        np.testing.assert_array_equal(flatten_coarse(coarse[i], settings), expected)


def test_cuda_graphs_without_a_gpu_is_refused(tiny):
    with pytest.raises(ValueError, match="cuda_graphs needs a GPU"):
        _engine(tiny, "semantic", 2, decode_compile="cuda_graphs")
