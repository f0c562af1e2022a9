"""Semantic stage: text token ids (+ the voice's semantic history) -> semantic tokens.

The whole batch shares one layout (text padded to 256, history padded to 256,
one infer token), so chunks batch without attention masks. A chunk leaves the
batch as soon as it emits EOS or reaches its length limit; its KV-cache rows
are dropped with it, so the rest decode with fewer rows.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from transformers.generation.logits_process import BarkEosPrioritizerLogitsProcessor, SuppressTokensLogitsProcessor

from workers.config import AttentionImpl
from workers.records import SemanticRequest
from workers.decoding import decode_step
from workers.gpt import SlotCache, compiled_decode, decode_active, prefill
from workers.sampling import RowSampler, sample_rows
from workers.settings import BarkSettings


def _prompt_embeddings(model, settings: BarkSettings, requests: Sequence[SemanticRequest], device) -> torch.Tensor:
    cfg = settings.semantic
    width = cfg.max_input_semantic_length
    text = torch.full((len(requests), width), cfg.text_pad_token, dtype=torch.long)
    history = torch.full((len(requests), width), cfg.semantic_pad_token, dtype=torch.long)
    for row, request in enumerate(requests):
        ids = torch.tensor(request.text_ids[:width], dtype=torch.long) + cfg.text_encoding_offset
        text[row, : len(ids)] = ids
        if request.voice is not None:
            prompt = torch.tensor(request.voice.semantic_prompt[-width:], dtype=torch.long)
            history[row, : len(prompt)] = prompt
    infer = torch.full((len(requests), 1), cfg.semantic_infer_token, dtype=torch.long)
    embed = model.input_embeds_layer
    text, history, infer = text.to(device), history.to(device), infer.to(device)
    return torch.cat([embed(text) + embed(history), embed(infer)], dim=1)


def _samplers(model, settings: BarkSettings, requests: Sequence[SemanticRequest], device) -> list[RowSampler]:
    cfg = settings.semantic
    # Only semantic ids and EOS may be generated, as in transformers' BarkSemanticModel.generate.
    suppressed = list(range(cfg.semantic_vocab_size, cfg.semantic_pad_token))
    suppressed += list(range(cfg.semantic_pad_token + 1, model.config.output_vocab_size))
    suppress = SuppressTokensLogitsProcessor(suppressed, device=device)
    # Fixed lengths (benchmarks): EOS is suppressed like every other non-semantic id.
    suppress_eos = SuppressTokensLogitsProcessor([cfg.eos_token_id], device=device)
    samplers = []
    for request in requests:
        s = request.sampling
        if s.stop_at_eos:
            eos_rule = BarkEosPrioritizerLogitsProcessor(eos_token_id=cfg.eos_token_id, min_eos_p=s.min_eos_p, device=device)
        else:
            eos_rule = suppress_eos
        samplers.append(
            RowSampler(
                seed=request.seed,
                device=device,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                renormalize=cfg.renormalize_logits,
                constraints=[suppress, eos_rule],
            )
        )
    return samplers


@torch.inference_mode()
def generate_semantic(model, settings: BarkSettings, requests: Sequence[SemanticRequest]) -> list[np.ndarray]:
    """Semantic tokens per request (EOS not included), each as long as that chunk's own generation."""
    if not requests:
        return []
    device = model.input_embeds_layer.weight.device
    cfg = settings.semantic
    samplers = _samplers(model, settings, requests, device)
    limits = [r.sampling.max_new_tokens or cfg.max_new_tokens for r in requests]
    outputs: list[list[int]] = [[] for _ in requests]
    active = list(range(len(requests)))

    out = model(inputs_embeds=_prompt_embeddings(model, settings, requests, device), use_cache=True)
    cache = out.past_key_values
    logits = out.logits[:, -1, :]
    while active:
        tokens = sample_rows([samplers[i] for i in active], logits)
        keep = []
        for position, (row, token) in enumerate(zip(active, tokens)):
            if token == cfg.eos_token_id:
                continue
            outputs[row].append(token)
            if len(outputs[row]) < limits[row]:
                keep.append(position)
        if not keep:
            break
        n_active, active = len(active), [active[p] for p in keep]
        cache, logits = decode_step(model, cache, keep, n_active, [outputs[row][-1] for row in active])
    return [np.asarray(tokens, dtype=np.int64) for tokens in outputs]


class _Row:
    """One chunk decoding in a slot."""

    def __init__(self, handle, sampler: RowSampler, limit: int) -> None:
        self.handle = handle
        self.sampler = sampler
        self.limit = limit
        self.tokens: list[int] = []
        self.seconds = 0.0


class SemanticEngine:
    """Continuous batching: up to ``slots`` chunks decode together; a finished chunk
    frees its slot at once and a waiting one is prefilled into it between steps."""

    def __init__(self, model, settings: BarkSettings, slots: int, attention: AttentionImpl, decode_compile: str = "off") -> None:
        self.model, self.settings, self.attention = model, settings, attention
        self.device = model.input_embeds_layer.weight.device
        self.cache = SlotCache(model, slots)
        self.rows: dict[int, _Row] = {}
        self.free = list(range(slots))
        self.decode_fn = None if decode_compile == "off" else compiled_decode(model, self.cache, attention, decode_compile)

    @property
    def active(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def admit(self, handles: list, requests: Sequence[SemanticRequest]) -> list[tuple[object, np.ndarray, float]]:
        """Prefills the requests (all semantic prompts share one length) into free slots."""
        started = time.perf_counter()
        slots = [self.free.pop() for _ in requests]
        samplers = _samplers(self.model, self.settings, requests, self.device)
        prompt_len = self.settings.semantic.max_input_semantic_length + 1
        room = self.cache.capacity - prompt_len + 1  # the last token is sampled, never fed back
        for slot, handle, request, sampler in zip(slots, handles, requests, samplers):
            limit = min(request.sampling.max_new_tokens or self.settings.semantic.max_new_tokens, room)
            self.rows[slot] = _Row(handle, sampler, limit)
        embeds = _prompt_embeddings(self.model, self.settings, requests, self.device)
        logits = prefill(self.model, self.cache, torch.tensor(slots, device=self.device), embeds, self.attention)
        return self._sample(slots, logits, time.perf_counter() - started)

    @torch.inference_mode()
    def step(self) -> list[tuple[object, np.ndarray, float]]:
        """One decode step for every active chunk; returns the chunks that finished."""
        started = time.perf_counter()
        slots = sorted(self.rows)
        last = [self.rows[s].tokens[-1] for s in slots]
        logits = decode_active(self.model, self.cache, slots, last, self.attention, self.decode_fn)
        return self._sample(slots, logits, time.perf_counter() - started)

    def _sample(self, slots: list[int], logits: torch.Tensor, seconds: float) -> list[tuple[object, np.ndarray, float]]:
        eos = self.settings.semantic.eos_token_id
        finished = []
        tokens = sample_rows([self.rows[s].sampler for s in slots], logits)
        for slot, token in zip(slots, tokens):
            row = self.rows[slot]
            row.seconds += seconds / len(slots)
            if token != eos:
                row.tokens.append(token)
            if token == eos or len(row.tokens) >= row.limit:
                finished.append((row.handle, np.asarray(row.tokens, dtype=np.int64), row.seconds))
                del self.rows[slot]
                self.free.append(slot)
        return finished
