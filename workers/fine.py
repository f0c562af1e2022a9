"""Fine stage: two coarse codebooks (+ voice history) -> all eight EnCodec codebooks.

The fine model is non-causal and always reads a full window of
``max_fine_input_length`` frames, so every chunk's window has the same shape and
chunks of any length batch without padding or masks. A window slides by
``max_fine_history_length`` frames; a chunk leaves the batch after its last window.
Codebooks ``n_coarse..n_fine-1`` are predicted one after another in each window.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from workers.config import AttentionImpl
from workers.records import FineRequest
from workers.gpt import run_blocks
from workers.settings import BarkSettings


@dataclass
class _Chunk:
    codes: torch.Tensor  # (frames incl. history and end padding, n_fine_codebooks)
    n_history: int
    n_frames: int  # the chunk's own frames
    n_windows: int
    temperature: float
    generator: torch.Generator


def _prepare(request: FineRequest, coarse: np.ndarray, settings: BarkSettings, device) -> _Chunk:
    cfg = settings.fine
    pad = settings.codebook_size
    n_coarse, n_frames = coarse.shape
    codes = torch.full((n_frames, cfg.n_fine_codebooks), pad, dtype=torch.long)
    codes[:, :n_coarse] = torch.tensor(coarse.T)
    n_history = 0
    if request.voice is not None:
        history = torch.tensor(request.voice.fine_prompt.T[-cfg.max_fine_history_length :], dtype=torch.long)
        codes = torch.cat([history, codes])
        n_history = len(history)
    if len(codes) < cfg.max_fine_input_length:
        filler = torch.full((cfg.max_fine_input_length - len(codes), cfg.n_fine_codebooks), pad, dtype=torch.long)
        codes = torch.cat([codes, filler])
    n_windows = max(0, math.ceil((n_frames - (cfg.max_fine_input_length - n_history)) / cfg.max_fine_history_length)) + 1
    generator = torch.Generator(device=device)
    generator.manual_seed(request.seed)
    return _Chunk(codes.to(device), n_history, n_frames, n_windows, request.sampling.temperature, generator)


def _window_bounds(chunk: _Chunk, window: int, settings: BarkSettings) -> tuple[int, int]:
    """(start of the model's input window, first frame it fills in)."""
    cfg = settings.fine
    total = len(chunk.codes)
    start = min(window * cfg.max_fine_history_length, total - cfg.max_fine_input_length)
    fill_from = min(chunk.n_history + window * cfg.max_fine_history_length, total - cfg.max_fine_history_length)
    return start, fill_from


def _predict(logits: torch.Tensor, chunk: _Chunk, first: int, settings: BarkSettings) -> torch.Tensor:
    """Codebook ids for frames ``first..`` of one window, greedy or sampled with the chunk's generator."""
    logits = logits[:, : settings.codebook_size]
    if chunk.temperature == 0:
        return torch.argmax(logits[first:], dim=-1)
    probs = torch.softmax(logits / chunk.temperature, dim=-1)[first:]
    return torch.multinomial(probs, num_samples=1, generator=chunk.generator).view(-1)


def _logits(model, codebook: int, buffers: torch.Tensor, attention: AttentionImpl) -> torch.Tensor:
    """The fine model's forward for one codebook: embeddings of the codebooks so far, summed."""
    embeds = sum(model.input_embeds_layers[i](buffers[:, :, i]) for i in range(codebook + 1))
    positions = torch.arange(buffers.shape[1], device=buffers.device)
    hidden = run_blocks(model, model.drop(embeds + model.position_embeds_layer(positions)[None]), attention, causal=False)
    return model.lm_heads[codebook - model.config.n_codes_given](hidden)


@torch.inference_mode()
def generate_fine(
    model,
    settings: BarkSettings,
    requests: Sequence[FineRequest],
    coarse_tokens: Sequence[np.ndarray],
    attention: AttentionImpl = "eager",
) -> list[np.ndarray]:
    """All codebooks per request, shape (n_fine_codebooks, frames), as many frames as its coarse input."""
    device = model.position_embeds_layer.weight.device
    cfg = settings.fine
    chunks = [_prepare(r, c, settings, device) for r, c in zip(requests, coarse_tokens)]
    n_coarse = settings.coarse.n_coarse_codebooks
    for window in range(max((c.n_windows for c in chunks), default=0)):
        group = [c for c in chunks if window < c.n_windows]
        bounds = [_window_bounds(c, window, settings) for c in group]
        buffers = torch.stack([c.codes[s : s + cfg.max_fine_input_length] for c, (s, _) in zip(group, bounds)])
        for codebook in range(n_coarse, cfg.n_fine_codebooks):
            logits = _logits(model, codebook, buffers, attention).float()
            for row, (chunk, (start, fill_from)) in enumerate(zip(group, bounds)):
                first = fill_from - start
                buffers[row, first:, codebook] = _predict(logits[row], chunk, first, settings)
        for row, (chunk, (start, fill_from)) in enumerate(zip(group, bounds)):
            first = fill_from - start
            chunk.codes[fill_from : fill_from + cfg.max_fine_input_length - first, n_coarse:] = buffers[row, first:, n_coarse:]
    return [c.codes[c.n_history : c.n_history + c.n_frames].T.cpu().numpy() for c in chunks]
