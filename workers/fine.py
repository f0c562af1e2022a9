"""Fine stage: two coarse codebooks (+ voice history) -> all eight EnCodec codebooks.

The fine model is non-causal and always reads a full window of
``max_fine_input_length`` (1024) frames, so every chunk's window has the same
shape and chunks of any length batch without padding or masks. A window slides
by ``max_fine_history_length`` (512) frames, and codebooks
``n_coarse..n_fine-1`` are predicted one after another in each window, as in
Suno's ``generate_fine``.

A batch's chunks live in one padded tensor on the device; each window is one
gather of every row's window, one forward and one whole-batch draw per codebook,
and one write back, so its cost does not grow with the number of rows in
torch ops. The draw is the same counter-based exponential race as the GPT stages',
keyed by (chunk seed, window and codebook, frame, code).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from workers.config import AttentionImpl
from workers.engine import Admission, BatchEngine, Finished
from workers.gpt import run_blocks
from workers.records import FineRequest
from workers.sampler import BAD_ROW_ERROR, STEP_STRIDE, draw, seed_keys
from workers.settings import BarkSettings


@dataclass(frozen=True)
class _Chunk:
    codes: np.ndarray  # (frames incl. history and end padding, n_fine_codebooks)
    n_history: int
    n_frames: int  # the chunk's own frames
    n_windows: int


def logits_for(model, codebook: int, codes: torch.Tensor, attention: AttentionImpl) -> torch.Tensor:
    """The fine model's forward for one codebook over windows (rows, frames, codebooks):
    the embeddings of the codebooks so far, summed; returns (rows, frames, vocab)."""
    embeds = sum(model.input_embeds_layers[i](codes[:, :, i]) for i in range(codebook + 1))
    positions = torch.arange(codes.shape[1], device=codes.device)
    hidden = run_blocks(model, model.drop(embeds + model.position_embeds_layer(positions)[None]), attention, causal=False)
    return model.lm_heads[codebook - model.config.n_codes_given](hidden)


class FineEngine(BatchEngine):
    """Up to ``batch_size`` chunks through all their windows at once."""

    def __init__(self, model, settings: BarkSettings, batch_size: int, attention: AttentionImpl = "sdpa") -> None:
        super().__init__(batch_size)
        self.model, self.settings, self.attention = model, settings, attention
        self.device = model.position_embeds_layer.weight.device
        self.cfg = settings.fine

    def _prepare(self, request: FineRequest, coarse: np.ndarray) -> _Chunk:
        """Suno's layout: the voice's last 512 fine frames, the coarse codebooks with the
        rest padded, and padding at the end up to one full window."""
        cfg, pad = self.cfg, self.settings.codebook_size
        n_coarse, n_frames = coarse.shape
        codes = np.full((n_frames, cfg.n_fine_codebooks), pad, dtype=np.int64)
        codes[:, :n_coarse] = coarse.T
        n_history = 0
        if request.voice is not None:
            history = request.voice.fine_prompt.T[-cfg.max_fine_history_length :]
            codes = np.concatenate([history, codes])
            n_history = len(history)
        if len(codes) < cfg.max_fine_input_length:
            filler = np.full((cfg.max_fine_input_length - len(codes), cfg.n_fine_codebooks), pad, dtype=np.int64)
            codes = np.concatenate([codes, filler])
        n_windows = max(0, math.ceil((n_frames - (cfg.max_fine_input_length - n_history)) / cfg.max_fine_history_length)) + 1
        return _Chunk(codes, n_history, n_frames, n_windows)

    @torch.inference_mode()
    def compute(self, batch: list[Admission]) -> list[Finished]:
        started = time.perf_counter()
        cfg, settings = self.cfg, self.settings
        chunks = [self._prepare(a.request, np.asarray(a.upstream)) for a in batch]
        longest = max(len(c.codes) for c in chunks)
        padded = np.full((len(chunks), longest, cfg.n_fine_codebooks), settings.codebook_size, dtype=np.int64)
        for row, chunk in enumerate(chunks):
            padded[row, : len(chunk.codes)] = chunk.codes
        codes = torch.from_numpy(padded).to(self.device)  # rows, frames, codebooks
        keys = seed_keys(torch.tensor([a.request.seed for a in batch])).to(self.device)
        temperatures = torch.tensor([a.request.sampling.temperature for a in batch], device=self.device)
        finite = torch.ones(len(batch), dtype=torch.bool, device=self.device)
        lengths = np.array([len(c.codes) for c in chunks])
        histories = np.array([c.n_history for c in chunks])
        for window in range(max(c.n_windows for c in chunks)):
            rows = np.array([i for i, c in enumerate(chunks) if window < c.n_windows])
            # Suno's bounds: where the window starts, and the first frame it fills in.
            starts = np.minimum(window * cfg.max_fine_history_length, lengths[rows] - cfg.max_fine_input_length)
            fills = np.minimum(histories[rows] + window * cfg.max_fine_history_length, lengths[rows] - cfg.max_fine_history_length)
            index = torch.from_numpy(rows).to(self.device)
            firsts = fills - starts
            window_finite = self.window(
                codes, window, index, torch.from_numpy(starts).to(self.device), torch.from_numpy(firsts).to(self.device),
                keys[index], temperatures[index], drawn_from=int(firsts.min()),
            )
            finite.index_copy_(0, index, finite[index] & window_finite)
        with torch.profiler.record_function("engine.to_host"):
            codes_host, finite_host = codes.cpu().numpy(), finite.cpu().numpy()
        seconds = (time.perf_counter() - started) / len(batch)
        return [
            Finished(a.handle, codes_host[row, c.n_history : c.n_history + c.n_frames].T.copy(), seconds)
            if finite_host[row]
            else Finished(a.handle, None, seconds, BAD_ROW_ERROR)
            for row, (a, c) in enumerate(zip(batch, chunks))
        ]

    def window(self, codes, window: int, rows, starts, firsts, keys, temperature, drawn_from: int = 0) -> torch.Tensor:
        """One window of the given ``rows`` of ``codes`` (rows, frames, codebooks; updated in
        place): codebooks n_coarse.. predicted frame-parallel from each row's first filled
        frame on. ``starts``, ``firsts``, ``keys``, ``temperature``: per given row;
        ``drawn_from``: the smallest of ``firsts``, before which no row draws (with a voice or
        after the first window, half the window: the draws there are skipped).
        Returns whether each row's distributions were finite."""
        cfg, settings = self.cfg, self.settings
        device = codes.device
        frames = starts[:, None] + torch.arange(cfg.max_fine_input_length, device=device)  # rows, window
        buffer = codes[rows[:, None], frames]  # rows, window, codebooks
        drawn_frames = torch.arange(drawn_from, cfg.max_fine_input_length, device=device)  # frames that may draw
        fill = drawn_frames[None] >= firsts[:, None]  # rows, drawn frames
        greedy = (temperature == 0)[:, None]
        # The counter of frame f and code c: f * codebook_size + c, from each row's first filled frame.
        index = drawn_frames[:, None] * settings.codebook_size + torch.arange(settings.codebook_size, device=device)
        finite = torch.ones(len(rows), dtype=torch.bool, device=device)
        n_coarse = settings.n_coarse_codebooks
        for codebook in range(n_coarse, cfg.n_fine_codebooks):
            logits = logits_for(self.model, codebook, buffer, self.attention)[:, drawn_from:, : settings.codebook_size].float()
            probs = torch.softmax(logits / torch.where(temperature == 0, 1.0, temperature)[:, None, None], dim=-1)
            step = window * (cfg.n_fine_codebooks - n_coarse) + (codebook - n_coarse)
            bases = step * STEP_STRIDE - firsts * settings.codebook_size
            drawn = draw(probs, keys, bases, index)  # rows, drawn frames
            predicted = torch.where(greedy, torch.argmax(logits, dim=-1), drawn)
            buffer[:, drawn_from:, codebook] = torch.where(fill, predicted, buffer[:, drawn_from:, codebook])
            finite &= (torch.isfinite(probs).all(dim=-1) | ~fill).all(dim=-1)
        codes[rows[:, None], frames] = buffer
        return finite
