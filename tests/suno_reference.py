"""Suno's own stage functions (``bark.generation``) on a checkpoint of ours, with an exact draw.

Suno's code draws with ``torch.multinomial`` on the global RNG, one row at a
time. To compare its tokens with ours, both sides must draw with the same
randomness: here Suno's ``torch.multinomial`` is replaced by the exponential-race draw
of :mod:`workers.sampler`, keyed like ours by (chunk seed, step, index), so the
only differences left are differences of distribution or stop rule. Nothing
else of Suno's code is touched: its prompt layout, filtering order, EOS rule,
windows and history handling run as released.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import bark.generation as suno
import numpy as np
import torch
from bark.model import GPT, GPTConfig
from bark.model_fine import FineGPT, FineGPTConfig

from workers.layouts import SUNO_STATE_PREFIX
from workers.sampler import counter_bases, draw, seed_keys


def load_suno_models(directory: Path, tokenizer) -> dict:
    """Suno's GPT classes loaded from our suno-format files, as ``bark.generation.models`` holds them."""

    def load(name: str, config_cls, model_cls):
        checkpoint = torch.load(directory / name, map_location="cpu", weights_only=True)
        model = model_cls(config_cls(**checkpoint["model_args"]))
        state = {key.removeprefix(SUNO_STATE_PREFIX): value for key, value in checkpoint["model"].items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all(key.endswith(".attn.bias") for key in missing), (missing, unexpected)
        return model.eval()

    return {
        "text": {"model": load("text_2.pt", GPTConfig, GPT), "tokenizer": tokenizer},
        "coarse": load("coarse_2.pt", GPTConfig, GPT),
        "fine": load("fine_2.pt", FineGPTConfig, FineGPT),
    }


class ExactDraws:
    """Stands in for ``torch.multinomial`` in Suno's module: the draw for call ``n`` of a chunk
    uses the counters of step ``n``. For the fine stage each model forward is one step and
    each frame's draw within it is offset by ``frame * codebook_size``, as in our fine engine."""

    def __init__(self, seed: int) -> None:
        self.key = seed_keys(torch.tensor([seed]))
        self.step = -1
        self.draws_in_step = 0
        self.per_forward = False

    def next_step(self) -> None:
        self.step += 1
        self.draws_in_step = 0

    def multinomial(self, probs: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
        assert num_samples == 1 and probs.dim() == 1
        if not self.per_forward:
            self.next_step()
        width = probs.shape[0]
        index = torch.arange(width) + self.draws_in_step * width
        self.draws_in_step += 1
        return draw(probs[None], self.key, counter_bases(torch.tensor([self.step])), index)  # (1,)


class _TorchWithDraw:
    """``torch`` as Suno's module sees it, with ``multinomial`` replaced."""

    def __init__(self, draws: ExactDraws) -> None:
        self._draws = draws

    def __getattr__(self, name: str):
        return self._draws.multinomial if name == "multinomial" else getattr(torch, name)


class _StepPerForward(torch.nn.Module):
    """Suno's fine model, counting each forward (one window and codebook) as a step of draws."""

    def __init__(self, model, draws: ExactDraws) -> None:
        super().__init__()
        self.inner, self.draws = model, draws
        draws.per_forward = True

    def forward(self, codebook, codes):
        self.draws.next_step()
        return self.inner(codebook, codes)


@contextlib.contextmanager
def suno_with_exact_draws(models: dict, seed: int, *, fine: bool = False):
    """Suno's module with ``models`` installed and its draws keyed by ``seed``; restored after."""
    draws = ExactDraws(seed)
    installed = dict(models)
    if fine:
        installed["fine"] = _StepPerForward(models["fine"], draws)
    saved_models, saved_torch = dict(suno.models), suno.torch
    suno.models.clear()
    suno.models.update(installed)
    suno.torch = _TorchWithDraw(draws)
    try:
        yield suno
    finally:
        suno.torch = saved_torch
        suno.models.clear()
        suno.models.update(saved_models)


def history(voice) -> dict | None:
    """A voice prompt as the dict of arrays Suno's functions accept."""
    if voice is None:
        return None
    return {name: np.asarray(getattr(voice, name)) for name in ("semantic_prompt", "coarse_prompt", "fine_prompt")}
