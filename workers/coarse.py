"""Coarse stage: semantic tokens (+ voice history) -> the first two EnCodec codebooks.

Bark generates coarse tokens in sliding windows: each window re-reads up to 256
semantic tokens around the current position, the infer token and up to 630
tokens of coarse history, then samples up to 60 interleaved codebook tokens.

Chunks of a batch step through their windows together. Within a window, the
chunks whose prompts have the same length run as one batch (no padding, so no
chunk's prompt shifts another chunk's arithmetic); after the first few windows
every prompt reaches the full history length and the whole batch runs as one.
Each chunk generates exactly the number of tokens its own semantic length asks
for and then leaves the batch.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.generation.logits_process import AlternatingCodebooksLogitsProcessor, LogitsProcessor

from workers.config import AttentionImpl
from workers.records import CoarseRequest, VoicePrompt
from workers.decoding import decode_step
from workers.gpt import SlotCache, compiled_decode, decode_active, prefill
from workers.sampling import RowSampler, sample_rows
from workers.settings import BarkSettings


def voice_histories(voice: VoicePrompt | None, settings: BarkSettings) -> tuple[np.ndarray, np.ndarray]:
    """The voice's semantic history and flattened, offset coarse history, trimmed to align."""
    if voice is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    ratio = settings.semantic_to_coarse_ratio
    codebook_offsets = settings.codebook_size * np.arange(voice.coarse_prompt.shape[0])[:, None]
    coarse = (voice.coarse_prompt + codebook_offsets).T.reshape(-1) + settings.semantic.semantic_vocab_size
    semantic = voice.semantic_prompt
    max_semantic_history = int(np.floor(settings.coarse.max_coarse_history / ratio))
    n_semantic = min(max_semantic_history, len(semantic) - len(semantic) % 2, int(np.floor(len(coarse) / ratio)))
    n_coarse = int(round(n_semantic * ratio))
    semantic = semantic[len(semantic) - n_semantic :]
    coarse = coarse[len(coarse) - n_coarse :]
    # Bark drops the last two coarse tokens of the history: time alignment sounds better.
    return semantic, coarse[:-2]


@dataclass
class _Chunk:
    """One chunk's sliding-window state."""

    semantic: np.ndarray  # semantic history + the chunk's semantic tokens
    history_len: int  # semantic history tokens at the front of ``semantic``
    coarse: list[int]  # coarse history + generated so far (offset ids)
    coarse_history_len: int
    target_len: int  # flattened coarse tokens to generate
    sampler: RowSampler
    window_tokens: list[int] = field(default_factory=list)

    @property
    def generated(self) -> int:
        return len(self.coarse) - self.coarse_history_len

    @property
    def done(self) -> bool:
        return self.generated >= self.target_len


def _window_prompt(chunk: _Chunk, settings: BarkSettings) -> list[int]:
    cfg = settings.coarse
    ratio = settings.semantic_to_coarse_ratio
    max_semantic_history = int(np.floor(cfg.max_coarse_history / ratio))
    semantic_idx = chunk.history_len + int(round(chunk.generated / ratio))
    start = max(0, semantic_idx - max_semantic_history)
    window = chunk.semantic[start : start + cfg.max_coarse_input_length].tolist()
    window += [cfg.coarse_semantic_pad_token] * (cfg.max_coarse_input_length - len(window))
    history = chunk.coarse[-cfg.max_coarse_history :] if cfg.max_coarse_history else []
    return window + [cfg.coarse_infer_token] + history


def _run_window(model, settings: BarkSettings, group: list[_Chunk], device) -> None:
    """Generate one window (up to ``sliding_window_len`` tokens) for chunks whose prompts share a length."""
    prompts = torch.tensor([_window_prompt(c, settings) for c in group], dtype=torch.long, device=device)
    steps = [min(settings.coarse.sliding_window_len, c.target_len - c.generated) for c in group]
    active = list(range(len(group)))
    out = model(input_ids=prompts, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1, :]
    step = 0
    while True:
        tokens = sample_rows([group[i].sampler for i in active], logits, step)
        step += 1
        for row, token in zip(active, tokens):
            group[row].coarse.append(token)
        keep = [p for p, row in enumerate(active) if step < steps[row]]
        if not keep:
            return
        n_active, active = len(active), [active[p] for p in keep]
        cache, logits = decode_step(model, cache, keep, n_active, [group[row].coarse[-1] for row in active])


class _CodebookIdsOnly(LogitsProcessor):
    """Forbids the coarse vocabulary's tail (pad and infer ids) at every step.

    transformers' alternating-codebook processor leaves the ids past the second
    codebook open on odd steps; upstream Bark samples only inside the current
    codebook. A model that picks such an id would hand the codec an invalid code,
    so we forbid it. Where transformers picks a valid id, both agree exactly.
    """

    def __init__(self, first_invalid_id: int) -> None:
        self.first_invalid_id = first_invalid_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.first_invalid_id :] = -float("inf")
        return scores


def _coarse_sampler(request: CoarseRequest, settings: BarkSettings, device) -> RowSampler:
    s = request.sampling
    semantic_vocab = settings.semantic.semantic_vocab_size
    # The alternation reads only the number of tokens generated in the current window.
    alternate = AlternatingCodebooksLogitsProcessor(0, semantic_vocab, settings.codebook_size)
    codebook_ids_only = _CodebookIdsOnly(semantic_vocab + settings.codebook_size * settings.coarse.n_coarse_codebooks)
    return RowSampler(
        seed=request.seed,
        device=device,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        renormalize=settings.coarse.renormalize_logits,
        constraints=[alternate, codebook_ids_only],
    )


@torch.inference_mode()
def generate_coarse(
    model, settings: BarkSettings, requests: Sequence[CoarseRequest], semantic_tokens: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Coarse codebooks per request, shape (n_coarse_codebooks, frames), ids in [0, codebook_size)."""
    cfg = settings.coarse
    device = model.input_embeds_layer.weight.device
    chunks = _chunks(requests, semantic_tokens, settings, device)
    n_windows = max((math.ceil(c.target_len / cfg.sliding_window_len) for c in chunks), default=0)
    for _ in range(n_windows):
        by_prompt_len: dict[int, list[_Chunk]] = defaultdict(list)
        for chunk in chunks:
            if not chunk.done:
                by_prompt_len[len(_window_prompt(chunk, settings))].append(chunk)
        for group in by_prompt_len.values():
            _run_window(model, settings, group, device)
    return [unflatten_coarse(c.coarse[c.coarse_history_len :], settings) for c in chunks]


def _chunks(requests: Sequence[CoarseRequest], semantic_tokens: Sequence[np.ndarray], settings: BarkSettings, device) -> list[_Chunk]:
    chunks = []
    for request, semantic in zip(requests, semantic_tokens):
        semantic_history, coarse_history = voice_histories(request.voice, settings)
        chunks.append(
            _Chunk(
                semantic=np.concatenate([semantic_history, np.asarray(semantic, dtype=np.int64)]),
                history_len=len(semantic_history),
                coarse=coarse_history.tolist(),
                coarse_history_len=len(coarse_history),
                target_len=settings.coarse_length(len(semantic)),
                sampler=_coarse_sampler(request, settings, device),
            )
        )
    return chunks


def unflatten_coarse(tokens: list[int], settings: BarkSettings) -> np.ndarray:
    """Interleaved, offset coarse ids -> (codebooks, frames) codebook ids."""
    n_codebooks = settings.coarse.n_coarse_codebooks
    flat = np.asarray(tokens, dtype=np.int64).reshape(-1, n_codebooks).T
    return flat - settings.semantic.semantic_vocab_size - settings.codebook_size * np.arange(n_codebooks)[:, None]


def flatten_coarse(codebooks: np.ndarray, settings: BarkSettings) -> np.ndarray:
    """(codebooks, frames) ids -> interleaved, offset ids as transformers' coarse model emits them."""
    n_codebooks = codebooks.shape[0]
    offset = codebooks + settings.semantic.semantic_vocab_size + settings.codebook_size * np.arange(n_codebooks)[:, None]
    return offset.T.reshape(-1)


@dataclass
class _Row:
    """One chunk in a slot, somewhere inside its current window."""

    handle: object
    chunk: _Chunk
    window_steps: int = 0  # tokens this window generates
    step: int = 0  # tokens generated in this window so far
    seconds: float = 0.0


class CoarseEngine:
    """Continuous batching over sliding windows: every window is a prefill of its
    slot followed by decode steps; chunks start, change window and finish at
    different steps, and a freed slot takes a waiting chunk at once.

    Prefills run grouped by prompt length (no padding); every decode step runs
    all chunks that are inside a window, each at its own position.
    """

    def __init__(self, model, settings: BarkSettings, slots: int, attention: AttentionImpl, decode_compile: str = "off") -> None:
        self.model, self.settings, self.attention = model, settings, attention
        self.device = model.input_embeds_layer.weight.device
        self.cache = SlotCache(model, slots)
        self.decode_fn = None if decode_compile == "off" else compiled_decode(model, self.cache, attention, decode_compile)
        self.rows: dict[int, _Row] = {}
        self.free = list(range(slots))
        self.to_prefill: list[int] = []

    @property
    def active(self) -> int:
        return len(self.rows)

    def admit(self, handles: list, requests: Sequence[CoarseRequest], semantic_tokens: Sequence[np.ndarray]) -> list:
        """Takes chunks into free slots; their first window is prefilled by the next ``step``."""
        finished = []
        for handle, chunk in zip(handles, _chunks(requests, semantic_tokens, self.settings, self.device)):
            if chunk.done:  # nothing to generate (an empty semantic input)
                finished.append((handle, unflatten_coarse([], self.settings), 0.0))
                continue
            slot = self.free.pop()
            self.rows[slot] = _Row(handle, chunk)
            self.to_prefill.append(slot)
        return finished

    @torch.inference_mode()
    def step(self) -> list:
        """Prefills the chunks starting a window, then one decode step for the others."""
        finished = []
        decoding = [slot for slot in sorted(self.rows) if slot not in self.to_prefill]
        starting, self.to_prefill = self.to_prefill, []
        by_length: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
        for slot in starting:
            prompt = _window_prompt(self.rows[slot].chunk, self.settings)
            by_length[len(prompt)].append((slot, prompt))
        for group in by_length.values():
            started = time.perf_counter()
            slots = [slot for slot, _ in group]
            prompts = torch.tensor([prompt for _, prompt in group], dtype=torch.long, device=self.device)
            for slot in slots:
                row = self.rows[slot]
                row.step = 0
                row.window_steps = min(self.settings.coarse.sliding_window_len, row.chunk.target_len - row.chunk.generated)
            index = torch.tensor(slots, device=self.device)
            logits = prefill(self.model, self.cache, index, self.model.input_embeds_layer(prompts), self.attention)
            finished += self._sample(slots, logits, time.perf_counter() - started)
        if decoding:
            started = time.perf_counter()
            last = [self.rows[s].chunk.coarse[-1] for s in decoding]
            logits = decode_active(self.model, self.cache, decoding, last, self.attention, self.decode_fn)
            finished += self._sample(decoding, logits, time.perf_counter() - started)
        return finished

    def _sample(self, slots: list[int], logits: torch.Tensor, seconds: float) -> list:
        rows = [self.rows[s] for s in slots]
        tokens = sample_rows([r.chunk.sampler for r in rows], logits, [r.step for r in rows])
        finished = []
        for slot, row, token in zip(slots, rows, tokens):
            row.seconds += seconds / len(slots)
            row.chunk.coarse.append(token)
            row.step += 1
            if row.chunk.done:
                coarse = unflatten_coarse(row.chunk.coarse[row.chunk.coarse_history_len :], self.settings)
                finished.append((row.handle, coarse, row.seconds))
                del self.rows[slot]
                self.free.append(slot)
            elif row.step >= row.window_steps:
                self.to_prefill.append(slot)
        return finished
