"""Semantic stage: text token ids (+ the voice's semantic history) -> semantic tokens.

Every chunk's prompt has Bark's one layout, whatever its text: 256 text ids
(offset, padded) whose embeddings are summed with 256 history ids (the voice's
semantic tokens, padded), then the infer token: 257 positions. A chunk draws
from the semantic ids and EOS only, and stops where Suno's code stops: EOS
drawn, or P(EOS) >= ``min_eos_p`` in the distribution it drew from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workers.engine import RowPlan
from workers.config import SemanticSampling
from workers.records import SemanticRequest
from workers.settings import BarkSettings


@dataclass(frozen=True)
class _Prompt:
    text: np.ndarray  # (max_input_semantic_length,) offset text ids, padded
    history: np.ndarray  # (max_input_semantic_length,) semantic history, padded


class SemanticPolicy:
    """The semantic stage's prompt layout, vocabulary slice, EOS rule and length limit."""

    window = None  # one prefill per chunk

    def __init__(self, model, settings: BarkSettings) -> None:
        cfg = settings.semantic
        self.cfg = cfg
        self.vocab_width = settings.semantic_vocab_size + 1  # the semantic ids, then EOS
        self.eos_index = settings.semantic_vocab_size
        self.eos_token = cfg.eos_token_id
        self.prompt_positions = cfg.max_input_semantic_length + 1
        # The last token is sampled, never fed back: one more than the cache holds after the prompt.
        self.max_tokens = model.config.block_size - self.prompt_positions + 1

    def plan(self, request: SemanticRequest, upstream: np.ndarray | None) -> RowPlan:
        cfg, width = self.cfg, self.cfg.max_input_semantic_length
        text = np.full(width, cfg.text_pad_token, dtype=np.int64)
        ids = np.asarray(request.text_ids[:width], dtype=np.int64) + cfg.text_encoding_offset
        text[: len(ids)] = ids
        history = np.full(width, cfg.semantic_pad_token, dtype=np.int64)
        if request.voice is not None:
            prompt = request.voice.semantic_prompt[-width:]
            history[: len(prompt)] = prompt
        s = request.sampling
        return RowPlan.for_request(
            request,
            limit=self.limit(s),
            context=_Prompt(text, history),
            min_eos_p=s.min_eos_p if s.stop_at_eos else None,
            allow_eos=s.stop_at_eos,
        )

    def limit(self, sampling: SemanticSampling) -> int:
        """The most semantic tokens a chunk generates: a chunk that made this many did not end by itself."""
        return min(sampling.max_new_tokens or self.cfg.max_new_tokens, self.max_tokens)

    def prompt_length(self, context: _Prompt, generated: np.ndarray) -> int:
        return self.prompt_positions

    def embed_prompts(self, model, contexts: Sequence[_Prompt], generated, device) -> torch.Tensor:
        embed = model.input_embeds_layer
        text = torch.from_numpy(np.stack([c.text for c in contexts])).to(device)  # rows, 256
        history = torch.from_numpy(np.stack([c.history for c in contexts])).to(device)  # rows, 256
        infer = torch.full((len(contexts), 1), self.cfg.semantic_infer_token, dtype=torch.long, device=device)
        return torch.cat([embed(text) + embed(history), embed(infer)], dim=1)  # rows, 257, hidden

    def sampled_logits(self, logits: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        vocab, eos = self.eos_index, self.eos_token
        return torch.cat([logits[:, :vocab], logits[:, eos : eos + 1]], dim=1)  # rows, vocab + 1

    def token_ids(self, index: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        return torch.where(index == self.eos_index, self.eos_token, index)

    def result(self, context: _Prompt, generated: np.ndarray) -> np.ndarray:
        return generated.copy()

