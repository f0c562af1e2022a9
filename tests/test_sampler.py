"""The whole-batch sampler: its random stream, its filters, and the distribution it draws from.

The draws are checked against what they claim to be: SplitMix64 (an independent
pure-Python implementation), Suno's filters (his numpy code, transcribed), and
the categorical distribution itself (a chi-square test over many draws; the
seeds are fixed, so the test is deterministic).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.special import softmax as scipy_softmax
from scipy.stats import chisquare

from workers.config import CoarseSampling, FineSampling, SemanticSampling
from workers.sampler import BAD_TOKEN, counter_bases, draw, sample, seed_keys, suno_filter, uniforms

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15


def _splitmix_finaliser(x: int) -> int:
    x &= MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def test_uniforms_are_splitmix64_outputs():
    seeds = [0, 1, 2**40 + 7, 2**63 - 1]
    counters = [0, 1, 5, 2**32 * 3 + 17]
    got = uniforms(seed_keys(torch.tensor(seeds)), torch.tensor([counters] * len(seeds)))
    for row, seed in enumerate(seeds):
        key = _splitmix_finaliser(seed)
        for column, counter in enumerate(counters):
            bits = _splitmix_finaliser(key + (counter + 1) * GAMMA)
            assert got[row, column].item() == ((bits >> 11) + 0.5) / 2**53


def test_uniforms_are_uniform_and_streams_differ():
    keys = seed_keys(torch.tensor([0, 1]))
    u = uniforms(keys, torch.arange(200_000).expand(2, -1))  # 2, 200000
    assert 0 < u.min() and u.max() < 1
    for row in u:
        counts, _ = np.histogram(row.numpy(), bins=50, range=(0, 1))
        assert chisquare(counts).pvalue > 1e-3
    assert abs(np.corrcoef(u[0].numpy(), u[1].numpy())[0, 1]) < 0.01  # neighbouring seeds: unrelated streams


def _suno_filter_one_row(logits: np.ndarray, top_k: int | None, top_p: float | None) -> np.ndarray:
    """Suno's filtering of one row, transcribed from bark/generation.py (numpy top-p, torch top-k)."""
    logits = logits.astype(np.float32).copy()
    if top_p is not None:
        sorted_indices = np.argsort(logits)[::-1]
        cumulative = np.cumsum(scipy_softmax(logits[sorted_indices]))
        remove = cumulative > top_p
        remove[1:] = remove[:-1].copy()
        remove[0] = False
        logits[sorted_indices[remove]] = -np.inf
    if top_k is not None:
        row = torch.from_numpy(logits)
        v, _ = torch.topk(row, min(top_k, row.size(-1)))
        row[row < v[-1]] = -float("inf")
        logits = row.numpy()
    return logits


SETTINGS = [(None, None), (5, None), (None, 0.5), (12, 0.8), (1, 0.99), (1000, 0.1)]


def test_filters_follow_suno_row_by_row():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (len(SETTINGS), 64)).astype(np.float32)
    top_k = torch.tensor([k or 64 for k, _ in SETTINGS])
    top_p = torch.tensor([np.inf if p is None else p for _, p in SETTINGS], dtype=torch.float32)
    ours = suno_filter(torch.from_numpy(logits), top_p, top_k).numpy()
    for row, (k, p) in enumerate(SETTINGS):
        np.testing.assert_array_equal(ours[row], _suno_filter_one_row(logits[row], k, p), err_msg=f"top_k={k} top_p={p}")


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, None, None), (0.7, 20, 0.9), (1.3, None, 0.6)])
def test_draws_follow_the_distribution(temperature, top_k, top_p):
    """40 000 chunks draw once each from the same logits; their tokens fit Suno's distribution."""
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 1.5, 48).astype(np.float32)
    expected = scipy_softmax(_suno_filter_one_row(logits, top_k, top_p).astype(np.float64) / temperature)
    n = 40_000
    tokens, probs = sample(
        torch.from_numpy(logits).expand(n, -1),
        temperature=torch.full((n,), temperature),
        top_p=torch.full((n,), np.inf if top_p is None else top_p),
        top_k=torch.full((n,), top_k or 48),
        keys=seed_keys(torch.arange(n) * 7919 + 11),
        steps=torch.zeros(n, dtype=torch.long),
    )
    np.testing.assert_allclose(probs[0].numpy(), expected, rtol=1e-5, atol=1e-7)
    counts = np.bincount(tokens.numpy(), minlength=48)
    kept = expected > 0
    assert counts[~kept].sum() == 0, "a filtered-out token was drawn"
    assert chisquare(counts[kept], n * expected[kept]).pvalue > 1e-3


def test_successive_steps_of_one_chunk_follow_the_distribution():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n = 20_000
    tokens, _ = sample(
        logits.expand(n, -1),
        temperature=torch.ones(n), top_p=torch.full((n,), np.inf), top_k=torch.full((n,), 4),
        keys=seed_keys(torch.full((n,), 42)), steps=torch.arange(n),
    )
    expected = torch.softmax(logits.double(), -1).numpy()
    assert chisquare(np.bincount(tokens.numpy(), minlength=4), n * expected).pvalue > 1e-3


def test_greedy_rows_take_the_argmax_and_sampled_rows_beside_them_are_unchanged():
    rng = np.random.default_rng(9)
    logits = torch.from_numpy(rng.normal(0, 1, (4, 30)).astype(np.float32))
    common = {"top_p": torch.full((4,), np.inf), "top_k": torch.full((4,), 30), "keys": seed_keys(torch.arange(4)), "steps": torch.zeros(4, dtype=torch.long)}
    mixed, _ = sample(logits, temperature=torch.tensor([0.0, 0.7, 0.0, 0.7]), **common)
    sampled, _ = sample(logits, temperature=torch.full((4,), 0.7), **common)
    assert mixed[0] == logits[0].argmax() and mixed[2] == logits[2].argmax()
    assert mixed[1] == sampled[1] and mixed[3] == sampled[3]


def test_a_row_without_a_finite_distribution_fails_alone():
    logits = torch.tensor([[1.0, 2.0, 3.0], [float("nan"), 0.0, 1.0], [3.0, 2.0, 1.0]])
    tokens, _ = sample(
        logits, temperature=torch.tensor([0.7, 0.7, 0.0]), top_p=torch.full((3,), np.inf), top_k=torch.full((3,), 3),
        keys=seed_keys(torch.arange(3)), steps=torch.zeros(3, dtype=torch.long),
    )
    assert tokens[1] == BAD_TOKEN and tokens[0] != BAD_TOKEN and tokens[2] == 0


def test_a_rows_draw_is_the_same_in_any_batch():
    probs = torch.softmax(torch.randn(3, 10, generator=torch.Generator().manual_seed(0)), -1)
    keys = seed_keys(torch.tensor([5, 6, 7]))
    bases = counter_bases(torch.tensor([3, 0, 9]))
    together = draw(probs, keys, bases, torch.arange(10))
    alone = draw(probs[1:2], keys[1:2], bases[1:2], torch.arange(10))
    assert torch.equal(together[1:2], alone)


@pytest.mark.parametrize("value", [1e-300, 1e-9, 1e-3, 101.0, -0.5, float("nan"), float("inf")])
def test_temperatures_that_overflow_or_mean_nothing_are_refused(value):
    for model in (SemanticSampling, CoarseSampling, FineSampling):
        with pytest.raises(ValidationError, match="temperature"):
            model(temperature=value)


@pytest.mark.parametrize("value", [0.0, 0.01, 0.7, 100.0])
def test_greedy_and_usual_temperatures_are_accepted(value):
    for model in (SemanticSampling, CoarseSampling, FineSampling):
        assert model(temperature=value).temperature == value
