"""Coarse stage: semantic tokens (+ voice history) -> the first two EnCodec codebooks.

Bark generates coarse tokens in sliding windows: each window re-reads up to 256
semantic tokens around the current position, the infer token and up to 630
tokens of coarse history, then samples up to ``sliding_window_len`` (60)
interleaved codebook tokens. In the slot engine a window is a prefill of the
chunk's slot followed by decode steps; chunks start, change window and finish
at different steps. Tokens are drawn inside the current codebook only
(codebooks alternate token by token), as in Suno's code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workers.engine import RowPlan
from workers.records import CoarseRequest, VoicePrompt
from workers.settings import BarkSettings


def voice_histories(voice: VoicePrompt | None, settings: BarkSettings) -> tuple[np.ndarray, np.ndarray]:
    """The voice's semantic history and flattened, offset coarse history, trimmed to align."""
    if voice is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ratio = settings.semantic_to_coarse_ratio
    coarse = flatten_coarse(voice.coarse_prompt, settings)
    semantic = voice.semantic_prompt
    max_semantic_history = int(np.floor(settings.coarse.max_coarse_history / ratio))
    n_semantic = min(max_semantic_history, len(semantic) - len(semantic) % 2, int(np.floor(len(coarse) / ratio)))
    n_coarse = int(round(n_semantic * ratio))
    semantic = semantic[len(semantic) - n_semantic :]
    coarse = coarse[len(coarse) - n_coarse :]
    # Bark drops the last two coarse tokens of the history: time alignment sounds better.
    return semantic, coarse[:-2]


def unflatten_coarse(tokens: np.ndarray, settings: BarkSettings) -> np.ndarray:
    """Interleaved, offset coarse ids -> (codebooks, frames) codebook ids."""
    n_codebooks = settings.n_coarse_codebooks
    flat = np.asarray(tokens, dtype=np.int64).reshape(-1, n_codebooks).T
    return flat - settings.semantic_vocab_size - settings.codebook_size * np.arange(n_codebooks)[:, None]


def flatten_coarse(codebooks: np.ndarray, settings: BarkSettings) -> np.ndarray:
    """(codebooks, frames) ids -> interleaved, offset ids as the coarse model reads and emits them."""
    n_codebooks = codebooks.shape[0]
    offset = codebooks + settings.semantic_vocab_size + settings.codebook_size * np.arange(n_codebooks)[:, None]
    return offset.T.reshape(-1).astype(np.int64)


@dataclass(frozen=True)
class _Chunk:
    semantic: np.ndarray  # semantic history + the chunk's semantic tokens
    history_len: int  # semantic history tokens at the front of ``semantic``
    coarse_history: np.ndarray  # offset coarse ids before the chunk's own


class CoarsePolicy:
    """The coarse stage's window prompt, alternating codebook slice and re-prefill rhythm."""

    eos_index = None  # a chunk generates exactly as many tokens as its semantic length asks for
    eos_token = -2  # never produced

    def __init__(self, model, settings: BarkSettings) -> None:
        self.settings = settings
        self.cfg = settings.coarse
        self.vocab_width = settings.codebook_size
        self.window = self.cfg.sliding_window_len
        self.max_tokens = settings.coarse_length(settings.semantic.max_new_tokens)  # grows on demand
        self._max_semantic_history = int(np.floor(self.cfg.max_coarse_history / settings.semantic_to_coarse_ratio))

    def plan(self, request: CoarseRequest, upstream: np.ndarray) -> RowPlan | np.ndarray:
        semantic = np.asarray(upstream, dtype=np.int64)
        target = self.settings.coarse_length(len(semantic))
        if target == 0:  # nothing to generate (the semantic stage stopped at once)
            return unflatten_coarse(np.zeros(0, dtype=np.int64), self.settings)
        semantic_history, coarse_history = voice_histories(request.voice, self.settings)
        chunk = _Chunk(np.concatenate([semantic_history, semantic]), len(semantic_history), coarse_history)
        return RowPlan.for_request(request, limit=target, context=chunk)

    def _prompt(self, chunk: _Chunk, generated: np.ndarray) -> np.ndarray:
        """Suno's window: semantic tokens around the current position (padded to 256), the
        infer token, then the latest ``max_coarse_history`` coarse tokens."""
        cfg = self.cfg
        semantic_idx = chunk.history_len + int(round(len(generated) / self.settings.semantic_to_coarse_ratio))
        start = max(0, semantic_idx - self._max_semantic_history)
        window = np.full(cfg.max_coarse_input_length, cfg.coarse_semantic_pad_token, dtype=np.int64)
        semantic = chunk.semantic[start : start + cfg.max_coarse_input_length]
        window[: len(semantic)] = semantic
        history = np.concatenate([chunk.coarse_history, generated])[-cfg.max_coarse_history :] if cfg.max_coarse_history else []
        return np.concatenate([window, [cfg.coarse_infer_token], history]).astype(np.int64)

    def prompt_length(self, context: _Chunk, generated: np.ndarray) -> int:
        history = min(self.cfg.max_coarse_history, len(context.coarse_history) + len(generated))
        return self.cfg.max_coarse_input_length + 1 + history

    def embed_prompts(self, model, contexts: Sequence[_Chunk], generated: Sequence[np.ndarray], device) -> torch.Tensor:
        prompts = np.stack([self._prompt(c, g) for c, g in zip(contexts, generated)])  # rows, length
        return model.input_embeds_layer(torch.from_numpy(prompts).to(device))

    def _offsets(self, steps: torch.Tensor) -> torch.Tensor:
        """First id of the codebook each row draws from at its step (codebooks alternate)."""
        return self.settings.semantic_vocab_size + (steps % self.settings.n_coarse_codebooks) * self.settings.codebook_size

    def sampled_logits(self, logits: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        columns = self._offsets(steps)[:, None] + torch.arange(self.vocab_width, device=logits.device)  # rows, codebook
        return logits.gather(1, columns)

    def token_ids(self, index: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return index + self._offsets(steps)

    def result(self, context: _Chunk, generated: np.ndarray) -> np.ndarray:
        return unflatten_coarse(generated, self.settings)

