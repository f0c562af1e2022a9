"""Whole-batch token sampling on the stage's device: Suno's rules, counter-based randomness.

Bark's reference (``bark/generation.py``) samples each chunk alone: top-p over
the *untempered* logits, then top-k, then a softmax at the temperature, then
``torch.multinomial`` on the global RNG. Here the same rules run as tensor
operations over a ``(rows, vocab)`` batch, each row with its own settings, so
a decode step costs the same few kernels whether it carries 1 row or 256.

Randomness is counter-based: the uniform a row uses for vocabulary index ``i``
at step ``s`` is a pure function of the chunk's seed, ``s`` and ``i``
(SplitMix64: a 64-bit mix of ``key(seed) + counter * golden_gamma``). A
chunk's draws therefore never depend on its batch, its slot, its replica, its
device or the order in which chunks arrive, and no generator state is kept.

The draw is an exponential race: with ``E_i = -log u_i`` independent Exp(1)
variables, ``argmax(p_i / E_i)`` is an exact sample from ``p`` (it is the
Gumbel-max trick, ``argmax(log p_i - log E_i)``, without the logarithms).
Unlike inverse-CDF sampling it barely reacts to last-bit differences in the
logits (a draw changes only where two racers tie), which keeps tokens stable
across batch shapes.
"""

from __future__ import annotations

import torch

# SplitMix64 (Steele, Lea, Flood 2014): the golden-ratio increment and the
# finaliser's multipliers, as signed int64 (torch has no uint64 arithmetic).
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX_1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX_2 = 0x94D049BB133111EB - (1 << 64)
# A counter is step * STEP_STRIDE + index: indices (vocabulary, or frame * vocab
# for the fine stage) stay below 2**32, steps below 2**31.
STEP_STRIDE = 1 << 32
_MANTISSA_BITS = 53  # uniforms are float64 with 53 random bits, never exactly 0 or 1

# A row whose settings make no finite distribution (NaN logits) gets this token:
# it fails alone, and the rows batched with it are not touched.
BAD_TOKEN = -1
BAD_ROW_ERROR = "sampling produced no finite probabilities (NaN or inf logits)"


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 bit patterns (multiplication wraps mod 2**64)."""
    x = (x ^ _shift_right(x, 30)) * _MIX_1
    x = (x ^ _shift_right(x, 27)) * _MIX_2
    return x ^ _shift_right(x, 31)


def seed_keys(seeds: torch.Tensor) -> torch.Tensor:
    """Each chunk's stream key (rows,), from its seed (non-negative, below 2**63)."""
    return mix64(seeds.to(torch.int64))


def uniforms(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """Float64 uniforms in (0, 1): ``keys`` (rows,) broadcast against ``counters`` (rows, ...)."""
    shape = (-1,) + (1,) * (counters.dim() - 1)
    # SplitMix64's n-th output is mix(state + (n + 1) * gamma): never the fixed point mix(0) = 0 at n = 0.
    bits = mix64(keys.view(shape) + (counters + 1) * _GOLDEN_GAMMA)
    return (_shift_right(bits, 64 - _MANTISSA_BITS).to(torch.float64) + 0.5) * 2.0**-_MANTISSA_BITS


def counter_bases(steps: torch.Tensor) -> torch.Tensor:
    """Where each row's counters start at its current step (rows,)."""
    return steps.to(torch.int64) * STEP_STRIDE


def draw(probs: torch.Tensor, keys: torch.Tensor, bases: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` (rows, ..., vocab), drawn exactly from it: an exponential race
    whose uniforms are those of the counters ``bases[row] + index`` (``index``: the trailing shape)."""
    counters = bases.view((-1,) + (1,) * index.dim()) + index
    return torch.argmax(probs.to(torch.float64) / -torch.log(uniforms(keys, counters)), dim=-1)


def suno_filter(logits: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Suno's top-p (on the untempered logits), then top-k, per row; removed ids get -inf.

    ``top_p`` (rows,) float, ``inf`` where off; ``top_k`` (rows,) long, the vocabulary
    width where off. One sort serves both: top-p removes a tail of the sorted order,
    so what it keeps stays sorted for top-k.
    """
    rows, width = logits.shape
    ordered, order = torch.sort(logits, dim=-1, descending=True)  # rows, width
    cumulative = torch.cumsum(torch.softmax(ordered, dim=-1), dim=-1)  # rows, width
    # Suno keeps the first id whose cumulative probability passes top_p: shift by one.
    passed = cumulative > top_p[:, None]
    removed_sorted = torch.cat([torch.zeros_like(passed[:, :1]), passed[:, :-1]], dim=-1)
    kept_sorted = ordered.masked_fill(removed_sorted, -torch.inf)
    kth = kept_sorted.gather(1, (top_k.clamp(1, width) - 1)[:, None])  # rows, 1
    removed = torch.zeros_like(removed_sorted).scatter(1, order, removed_sorted)
    return logits.masked_fill(removed | (logits < kth), -torch.inf)


def sample(
    logits: torch.Tensor,
    *,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    keys: torch.Tensor,
    steps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of ``logits`` (rows, vocab), and the distribution it came from.

    Returns ``(tokens, probs)``: ``tokens`` (rows,) indices into the vocabulary axis,
    ``BAD_TOKEN`` for a row without a finite distribution; ``probs`` (rows, vocab)
    float32, the tempered, filtered distribution (temperature 1 for greedy rows,
    ``temperature == 0``, which take the argmax instead of a draw), as Suno computes it.
    """
    filtered = suno_filter(logits.float(), top_p, top_k)  # rows, vocab
    greedy = temperature == 0
    probs = torch.softmax(filtered / torch.where(greedy, 1.0, temperature)[:, None], dim=-1)
    drawn = draw(probs, keys, counter_bases(steps), torch.arange(logits.shape[-1], device=logits.device))
    tokens = torch.where(greedy, torch.argmax(filtered, dim=-1), drawn)
    finite = torch.isfinite(probs).all(dim=-1)
    return torch.where(finite, tokens, BAD_TOKEN), probs
