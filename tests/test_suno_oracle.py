"""Sampled tokens against the reference that defines Bark: Suno's own ``bark.generation``.

Suno's ``generate_text_semantic``, ``generate_coarse`` and ``generate_fine`` run
one chunk at a time on Suno's own GPT classes, loaded from the suno-format files
of the same random-weight checkpoint our engines load in the hf layout. Both
sides draw with one exact sampler keyed by the chunk's seed
(``tests/suno_reference.py``), so any difference would be a difference of
distribution (filter order, temperature) or of stop rule. Our side runs batched,
with chunks arriving mid-decode; the tokens must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.voices import load_voice
from suno_reference import history, load_suno_models, suno_with_exact_draws
from workers.checkpoints import load_settings_for, load_stage_model, load_tokenizer
from workers.coarse import CoarsePolicy
from workers.config import CoarseSampling, FineSampling, ModelConfig, SemanticSampling
from workers.engine import Admission, GptEngine, run_to_completion
from workers.fine import FineEngine
from workers.records import CoarseRequest, FineRequest, SemanticRequest
from workers.semantic import SemanticPolicy
from workers.tiny_model import make_tiny_model

TEXTS = [
    "Hello.",
    "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down.",
    "Ein kurzer Satz auf Deutsch, bitte.",
    "A fourth chunk arrives late and joins a running batch.",
]
MAX_SEMANTIC = 160  # Suno's cap is 768; it takes a max_gen_duration_s for a shorter one
# (temperature, top_k, top_p): Bark's default, and its filters alone and together.
FILTERS = [(0.7, None, None), (0.8, 40, 0.9), (0.7, None, 0.8), (1.0, 10, None)]


@pytest.fixture(scope="module")
def both(tiny_model_dir, tmp_path_factory):
    """Our stage models (hf layout) and Suno's (suno layout) with the same weights."""
    suno_dir = make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-suno", seed=0, fmt="suno")
    config = ModelConfig(source=str(tiny_model_dir))
    tokenizer = load_tokenizer(config)
    return {
        "ours": {stage: load_stage_model(config, stage, "cpu", torch.float32) for stage in ("semantic", "coarse", "fine")},
        "suno": load_suno_models(suno_dir, tokenizer),
        "settings": load_settings_for(config),
        "tokenizer": tokenizer,
    }


@pytest.fixture(scope="module")
def voices():
    return [load_voice("v2/en_speaker_6"), None, load_voice("v2/de_speaker_3")]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), FILTERS)
def test_semantic_draws_and_stops_as_suno_does(both, voices, temperature, top_k, top_p):
    sampling = SemanticSampling(temperature=temperature, top_k=top_k, top_p=top_p, min_eos_p=0.2, max_new_tokens=MAX_SEMANTIC)
    requests = [
        SemanticRequest(
            key=str(i), text_ids=both["tokenizer"].encode(text, add_special_tokens=False),
            voice=voices[i % len(voices)], seed=1000 + i, sampling=sampling,
        )
        for i, text in enumerate(TEXTS)
    ]
    engine = GptEngine(both["ours"]["semantic"], SemanticPolicy(both["ours"]["semantic"], both["settings"]), slots=3)
    ours = run_to_completion(engine, [Admission(i, r) for i, r in enumerate(requests)])
    lengths = []
    for text, request, finished in zip(TEXTS, requests, ours):
        with suno_with_exact_draws(both["suno"], request.seed) as suno:
            expected = suno.generate_text_semantic(
                text, history_prompt=history(request.voice), temp=temperature, top_k=top_k, top_p=top_p,
                silent=True, min_eos_p=0.2, max_gen_duration_s=(MAX_SEMANTIC - 0.5) / suno.SEMANTIC_RATE_HZ,
                use_kv_caching=True,
            )
        np.testing.assert_array_equal(finished.tokens, expected, err_msg=f"chunk {request.key}")
        lengths.append(len(expected))
    assert min(lengths) < MAX_SEMANTIC, f"no chunk stopped early: {lengths}"  # the stop rule was exercised


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), FILTERS[:2])
def test_coarse_draws_as_suno_does(both, voices, temperature, top_k, top_p):
    settings = both["settings"]
    rng = np.random.default_rng(21)
    semantic = [rng.integers(0, settings.semantic_vocab_size, n) for n in (5, 64, 23, 41)]
    sampling = CoarseSampling(temperature=temperature, top_k=top_k, top_p=top_p)
    requests = [CoarseRequest(key=str(i), voice=voices[i % len(voices)], seed=2000 + i, sampling=sampling) for i in range(len(semantic))]
    engine = GptEngine(both["ours"]["coarse"], CoarsePolicy(both["ours"]["coarse"], settings), slots=2)
    ours = run_to_completion(engine, [Admission(i, r, s) for i, (r, s) in enumerate(zip(requests, semantic))])
    for request, finished, tokens in zip(requests, ours, semantic):
        with suno_with_exact_draws(both["suno"], request.seed) as suno:
            expected = suno.generate_coarse(
                tokens, history_prompt=history(request.voice), temp=temperature, top_k=top_k, top_p=top_p,
                silent=True, use_kv_caching=True,
            )
        np.testing.assert_array_equal(finished.tokens, expected, err_msg=f"chunk {request.key}")


def test_fine_draws_as_suno_does(both, voices):
    settings = both["settings"]
    rng = np.random.default_rng(23)
    coarse = [rng.integers(0, settings.codebook_size, (2, n)) for n in (40, 1300, 700)]
    requests = [FineRequest(key=str(i), voice=v, seed=3000 + i, sampling=FineSampling()) for i, v in enumerate(voices)]
    ours = run_to_completion(
        FineEngine(both["ours"]["fine"], settings, batch_size=3),
        [Admission(i, r, c) for i, (r, c) in enumerate(zip(requests, coarse))],
    )
    for request, finished, codes in zip(requests, ours, coarse):
        with suno_with_exact_draws(both["suno"], request.seed, fine=True) as suno:
            expected = suno.generate_fine(codes, history_prompt=history(request.voice), temp=request.sampling.temperature)
        np.testing.assert_array_equal(finished.tokens, expected, err_msg=f"chunk {request.key}")
