"""Our batched stages against the oracle: transformers' Bark sub-models, one chunk at a time.

The oracle models are loaded by transformers itself (``BarkModel.from_pretrained``),
ours by the stage loader, so the test also proves the loader reads the same
weights. Greedy runs must match token for token; sampled runs must match too,
because every chunk draws from its own generator seeded like
``torch.manual_seed(seed)`` before the oracle's ``generate``.
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
from workers.coarse import CoarseEngine, flatten_coarse, generate_coarse, unflatten_coarse
from workers.codec import decode_audio
from workers.fine import generate_fine
from workers.semantic import SemanticEngine, generate_semantic

TEXTS = [
    "Hello.",
    "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down.",
    "Ein kurzer Satz auf Deutsch, bitte.",
]
GREEDY = 0.0
SAMPLED = {"semantic": 0.7, "coarse": 0.7, "fine": 0.5}
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
    if sampling.temperature == GREEDY:
        return {"do_sample": False, "top_k": 0}
    return {"do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k or 0, "top_p": sampling.top_p}


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


def _oracle_fine(tiny, coarse, voice, seed, temperature):
    s = tiny["settings"]
    torch.manual_seed(seed)
    # transformers' fine model is greedy at temperature 1.0 (or None), samples otherwise.
    return tiny["oracle"].fine_acoustics.generate(
        torch.as_tensor(flatten_coarse(coarse, s))[None],
        semantic_generation_config=BarkSemanticGenerationConfig(**s.semantic.to_dict()),
        coarse_generation_config=BarkCoarseGenerationConfig(**s.coarse.to_dict()),
        fine_generation_config=BarkFineGenerationConfig(**s.fine.to_dict()),
        codebook_size=s.codebook_size,
        history_prompt=_history(voice),
        temperature=temperature if temperature != GREEDY else 1.0,
    )[0].numpy()


def _batches(n: int, batch_size: int):
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_semantic_matches_oracle(tiny, voices, batch_size, mode):
    temperature = GREEDY if mode == "greedy" else SAMPLED["semantic"]
    sampling = SemanticSampling(temperature=temperature, min_eos_p=0.2, max_new_tokens=SEMANTIC_STEPS)
    requests = [
        SemanticRequest(
            key=str(i),
            text_ids=tiny["tokenizer"].encode(text, add_special_tokens=False),
            voice=voice,
            seed=100 + i,
            sampling=sampling,
        )
        for i, (text, voice) in enumerate(zip(TEXTS, voices))
    ]
    ours = []
    for rows in _batches(len(requests), batch_size):
        ours += generate_semantic(tiny["ours"]["semantic"], tiny["settings"], [requests[i] for i in rows])
    for request, tokens in zip(requests, ours):
        expected = _oracle_semantic(tiny, request.text_ids, request.voice, request.seed, sampling)
        assert tokens.dtype == np.int64 and len(tokens) > 0
        np.testing.assert_array_equal(tokens, expected, err_msg=f"chunk {request.key}")


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_coarse_matches_oracle(tiny, voices, batch_size, mode):
    temperature = GREEDY if mode == "greedy" else SAMPLED["coarse"]
    rng = np.random.default_rng(7)
    vocab = tiny["settings"].semantic.semantic_vocab_size
    lengths = [5, 64, 23, 41]  # from under one window to several
    semantic = [rng.integers(0, vocab, n) for n in lengths]
    chunk_voices = [voices[0], voices[1], voices[2], voices[1]]
    requests = [
        CoarseRequest(key=str(i), voice=v, seed=200 + i, sampling=CoarseSampling(temperature=temperature))
        for i, v in enumerate(chunk_voices)
    ]
    ours = []
    for rows in _batches(len(requests), batch_size):
        ours += generate_coarse(
            tiny["ours"]["coarse"], tiny["settings"], [requests[i] for i in rows], [semantic[i] for i in rows]
        )
    for request, tokens, sem in zip(requests, ours, semantic):
        expected = _oracle_coarse(tiny, sem, request.voice, request.seed, request.sampling)
        assert tokens.shape == (2, tiny["settings"].coarse_length(len(sem)) // 2)
        np.testing.assert_array_equal(flatten_coarse(tokens, tiny["settings"]), expected, err_msg=f"chunk {request.key}")


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_fine_matches_oracle(tiny, voices, batch_size, mode):
    temperature = GREEDY if mode == "greedy" else SAMPLED["fine"]
    rng = np.random.default_rng(11)
    codebook = tiny["settings"].codebook_size
    lengths = [40, 1300, 700]  # one window, three windows with history, two windows
    coarse = [rng.integers(0, codebook, (2, n)) for n in lengths]
    requests = [
        FineRequest(key=str(i), voice=v, seed=300 + i, sampling=FineSampling(temperature=temperature))
        for i, v in enumerate(voices)
    ]
    ours = []
    for rows in _batches(len(requests), batch_size):
        ours += generate_fine(tiny["ours"]["fine"], tiny["settings"], [requests[i] for i in rows], [coarse[i] for i in rows])
    for request, tokens, c in zip(requests, ours, coarse):
        expected = _oracle_fine(tiny, c, request.voice, request.seed, temperature)
        assert tokens.shape == (8, c.shape[1])
        np.testing.assert_array_equal(tokens[:2], c)
        np.testing.assert_array_equal(tokens, expected, err_msg=f"chunk {request.key}")


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
    """One text through all four of our stages equals the oracle chained by hand."""
    settings = tiny["settings"]
    voice = voices[1]
    ids = tiny["tokenizer"].encode(TEXTS[1], add_special_tokens=False)
    semantic_sampling = SemanticSampling(temperature=0.7, min_eos_p=0.2, max_new_tokens=SEMANTIC_STEPS)
    semantic = generate_semantic(
        tiny["ours"]["semantic"], settings, [SemanticRequest(key="k", text_ids=ids, voice=voice, seed=1, sampling=semantic_sampling)]
    )[0]
    coarse = generate_coarse(
        tiny["ours"]["coarse"], settings, [CoarseRequest(key="k", voice=voice, seed=2, sampling=CoarseSampling())], [semantic]
    )[0]
    fine = generate_fine(tiny["ours"]["fine"], settings, [FineRequest(key="k", voice=voice, seed=3, sampling=FineSampling())], [coarse])[0]
    audio = decode_audio(tiny["ours"]["codec"], [fine])[0]

    expected_semantic = _oracle_semantic(tiny, ids, voice, 1, semantic_sampling)
    expected_coarse = _oracle_coarse(tiny, expected_semantic, voice, 2, CoarseSampling())
    expected_fine = _oracle_fine(tiny, unflatten_coarse(expected_coarse.tolist(), settings), voice, 3, FineSampling().temperature)
    with torch.no_grad():
        expected_audio = tiny["oracle"].codec_decode(torch.as_tensor(expected_fine)[None])[0].numpy()
    np.testing.assert_array_equal(semantic, expected_semantic)
    np.testing.assert_array_equal(flatten_coarse(coarse, settings), expected_coarse)
    np.testing.assert_array_equal(fine, expected_fine)
    np.testing.assert_allclose(audio, expected_audio, rtol=0, atol=1e-5)


def test_top_k_and_top_p_sampling_match_oracle(tiny, voices):
    """Per-chunk top-k / top-p filtering draws what transformers' warpers draw."""
    settings = tiny["settings"]
    filters = {"temperature": 0.8, "top_k": 40, "top_p": 0.9}
    sampling = SemanticSampling(min_eos_p=0.2, max_new_tokens=SEMANTIC_STEPS, **filters)
    ids = [tiny["tokenizer"].encode(text, add_special_tokens=False) for text in TEXTS[:2]]
    requests = [
        SemanticRequest(key=str(i), text_ids=t, voice=v, seed=400 + i, sampling=sampling)
        for i, (t, v) in enumerate(zip(ids, voices))
    ]
    semantic = generate_semantic(tiny["ours"]["semantic"], settings, requests)
    coarse_requests = [
        CoarseRequest(key=r.key, voice=r.voice, seed=500 + i, sampling=CoarseSampling(**filters))
        for i, r in enumerate(requests)
    ]
    coarse = generate_coarse(tiny["ours"]["coarse"], settings, coarse_requests, semantic)
    for request, tokens, coarse_request, coarse_tokens in zip(requests, semantic, coarse_requests, coarse):
        np.testing.assert_array_equal(tokens, _oracle_semantic(tiny, request.text_ids, request.voice, request.seed, sampling))
        expected = _oracle_coarse(tiny, tokens, request.voice, coarse_request.seed, coarse_request.sampling)
        np.testing.assert_array_equal(flatten_coarse(coarse_tokens, settings), expected)


def _run_engine(engine, admit, n_chunks: int, arrivals: list[int]) -> dict[int, np.ndarray]:
    """Drives a continuous engine the way its actor does, with chunks arriving over time:
    ``arrivals[i]`` is how many chunks arrive before step ``i`` (the rest arrive at once after)."""
    waiting, arrived, results, step = [], 0, {}, 0
    while arrived < n_chunks or waiting or engine.active:
        due = arrivals[step] if step < len(arrivals) else n_chunks - arrived
        waiting += range(arrived, min(n_chunks, arrived + due))
        arrived = min(n_chunks, arrived + due)
        take = [waiting.pop(0) for _ in range(min(len(engine.free), len(waiting)))]
        results.update({h: r for h, r, _ in admit(take)} if take else {})
        if engine.active:
            results.update({h: r for h, r, _ in engine.step()})
        step += 1
    return results


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("slots", [1, 2, 4])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_continuous_semantic_matches_oracle(tiny, voices, slots, mode, attention):
    """Chunks join and leave the slots at different steps; each still gets the oracle's tokens."""
    temperature = GREEDY if mode == "greedy" else SAMPLED["semantic"]
    sampling = SemanticSampling(temperature=temperature, min_eos_p=0.2, max_new_tokens=SEMANTIC_STEPS)
    texts = TEXTS + ["Short.", "A fifth chunk arrives late and joins a running batch."]
    requests = [
        SemanticRequest(
            key=str(i),
            text_ids=tiny["tokenizer"].encode(text, add_special_tokens=False),
            voice=voices[i % len(voices)],
            seed=600 + i,
            sampling=sampling,
        )
        for i, text in enumerate(texts)
    ]
    engine = SemanticEngine(tiny["ours"]["semantic"], tiny["settings"], slots, attention)
    ours = _run_engine(engine, lambda take: engine.admit(take, [requests[i] for i in take]), len(requests), [1, 0, 0, 2, 0, 1])
    assert sorted(ours) == list(range(len(requests))) and sorted(engine.free) == list(range(slots))
    for i, request in enumerate(requests):
        expected = _oracle_semantic(tiny, request.text_ids, request.voice, request.seed, sampling)
        np.testing.assert_array_equal(ours[i], expected, err_msg=f"chunk {i}")


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("slots", [1, 3])
@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_continuous_coarse_matches_oracle(tiny, voices, slots, mode, attention):
    """Chunks at different windows share decode steps; prompts of one length prefill together."""
    temperature = GREEDY if mode == "greedy" else SAMPLED["coarse"]
    rng = np.random.default_rng(13)
    vocab = tiny["settings"].semantic.semantic_vocab_size
    semantic = [rng.integers(0, vocab, n) for n in (5, 64, 23, 41, 1)]
    requests = [
        CoarseRequest(key=str(i), voice=voices[i % len(voices)], seed=700 + i, sampling=CoarseSampling(temperature=temperature))
        for i in range(len(semantic))
    ]
    engine = CoarseEngine(tiny["ours"]["coarse"], tiny["settings"], slots, attention)
    admit = lambda take: engine.admit(take, [requests[i] for i in take], [semantic[i] for i in take])  # noqa: E731
    ours = _run_engine(engine, admit, len(requests), [1, 0, 1, 0, 0, 0, 2])
    assert sorted(ours) == list(range(len(requests))) and sorted(engine.free) == list(range(slots))
    for i, request in enumerate(requests):
        expected = _oracle_coarse(tiny, semantic[i], request.voice, request.seed, request.sampling)
        np.testing.assert_array_equal(flatten_coarse(ours[i], tiny["settings"]), expected, err_msg=f"chunk {i}")


@pytest.mark.parametrize("mode", ["greedy", "sampled"])
def test_fine_with_sdpa_matches_oracle(tiny, voices, mode):
    temperature = GREEDY if mode == "greedy" else SAMPLED["fine"]
    rng = np.random.default_rng(17)
    coarse = [rng.integers(0, tiny["settings"].codebook_size, (2, n)) for n in (40, 1300)]
    requests = [FineRequest(key=str(i), voice=voices[i], seed=800 + i, sampling=FineSampling(temperature=temperature)) for i in range(2)]
    ours = generate_fine(tiny["ours"]["fine"], tiny["settings"], requests, coarse, attention="sdpa")
    for request, tokens, c in zip(requests, ours, coarse):
        np.testing.assert_array_equal(tokens, _oracle_fine(tiny, c, request.voice, request.seed, temperature))


def test_compiled_decode_step_matches_oracle(tiny, voices):
    """decode_compile: torch_compile runs one fixed-shape step over every slot (idle ones
    included) and still gives each chunk the oracle's tokens."""
    settings = tiny["settings"]
    sampling = SemanticSampling(temperature=0.7, min_eos_p=0.2, max_new_tokens=32)
    requests = [
        SemanticRequest(key=str(i), text_ids=tiny["tokenizer"].encode(t, add_special_tokens=False), voice=v, seed=900 + i, sampling=sampling)
        for i, (t, v) in enumerate(zip(TEXTS, voices))
    ]
    semantic_engine = SemanticEngine(tiny["ours"]["semantic"], settings, 2, "sdpa", decode_compile="torch_compile")
    semantic = _run_engine(
        semantic_engine, lambda take: semantic_engine.admit(take, [requests[i] for i in take]), len(requests), [1, 0, 0, 1]
    )
    coarse_requests = [CoarseRequest(key=r.key, voice=r.voice, seed=950 + i, sampling=CoarseSampling()) for i, r in enumerate(requests)]
    coarse_engine = CoarseEngine(tiny["ours"]["coarse"], settings, 2, "sdpa", decode_compile="torch_compile")
    coarse = _run_engine(
        coarse_engine,
        lambda take: coarse_engine.admit(take, [coarse_requests[i] for i in take], [semantic[i] for i in take]),
        len(requests),
        [1, 0, 0, 1],
    )
    for i, (request, coarse_request) in enumerate(zip(requests, coarse_requests)):
        np.testing.assert_array_equal(semantic[i], _oracle_semantic(tiny, request.text_ids, request.voice, request.seed, sampling))
        expected = _oracle_coarse(tiny, semantic[i], request.voice, coarse_request.seed, coarse_request.sampling)
        np.testing.assert_array_equal(flatten_coarse(coarse[i], settings), expected)


def test_cuda_graphs_without_a_gpu_is_refused(tiny):
    with pytest.raises(ValueError, match="cuda_graphs needs a GPU"):
        SemanticEngine(tiny["ours"]["semantic"], tiny["settings"], 2, "sdpa", decode_compile="cuda_graphs")
