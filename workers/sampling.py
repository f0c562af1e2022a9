"""Per-chunk token sampling.

Each chunk in a batch gets its own logits processors and its own random
generator, applied to its own row of logits. So a chunk's tokens depend only on
its own logits, settings and seed: never on what it was batched with. The
processors are transformers' own, in the order its ``generate`` applies them, so
a chunk run here draws exactly what ``generate`` draws for that chunk alone
after ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.generation.logits_process import (
    LogitNormalization,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class RowSampler:
    """Chooses the next token of one chunk from its logits row."""

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device,
        temperature: float,
        top_k: int | None = None,
        top_p: float | None = None,
        renormalize: bool = True,
        constraints: Sequence[LogitsProcessor] = (),
    ) -> None:
        self.greedy = temperature == 0
        processors = LogitsProcessorList(constraints)
        if not self.greedy:
            if temperature != 1.0:
                processors.append(TemperatureLogitsWarper(temperature))
            if top_k:
                processors.append(TopKLogitsWarper(top_k=top_k))
            if top_p is not None and top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=top_p))
        if renormalize:
            processors.append(LogitNormalization())
        self.processors = processors
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, generated: torch.Tensor) -> int:
        """``logits``: (vocab,) float32; ``generated``: a (1, n) stand-in whose length is all that
        length-aware processors (Bark's alternating coarse codebooks) read."""
        scores = self.processors(generated, logits[None])
        if self.greedy:
            return int(torch.argmax(scores, dim=-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))


def sample_rows(samplers: Sequence[RowSampler], logits: torch.Tensor, steps: int | Sequence[int] = 0) -> list[int]:
    """Next token for every row of ``logits`` (rows, vocab), each with its own sampler.

    ``steps`` counts the tokens generated so far in the current generate call
    (one count for all rows, or one per row).
    """
    logits = logits.to(dtype=torch.float32)
    steps = [steps] * len(samplers) if isinstance(steps, int) else steps
    return [
        sampler(row, torch.empty((1, step), dtype=torch.long, device=logits.device))
        for sampler, row, step in zip(samplers, logits, steps)
    ]
