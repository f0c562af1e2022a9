"""Semantic stage: text token ids (+ the voice's semantic history) -> semantic tokens.

The whole batch shares one layout (text padded to 256, history padded to 256,
one infer token), so chunks batch without attention masks. A chunk leaves the
batch as soon as it emits EOS or reaches its length limit; its KV-cache rows
are dropped with it, so the rest decode with fewer rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers.generation.logits_process import BarkEosPrioritizerLogitsProcessor, SuppressTokensLogitsProcessor

from pipeline.records import SemanticRequest
from workers.decoding import decode_step
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
    samplers = []
    for request in requests:
        s = request.sampling
        eos_first = BarkEosPrioritizerLogitsProcessor(eos_token_id=cfg.eos_token_id, min_eos_p=s.min_eos_p, device=device)
        samplers.append(
            RowSampler(
                seed=request.seed,
                device=device,
                temperature=s.temperature,
                top_k=s.top_k,
                top_p=s.top_p,
                renormalize=cfg.renormalize_logits,
                constraints=[suppress, eos_first],
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
