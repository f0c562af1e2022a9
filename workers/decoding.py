"""One decoding step of a shrinking batch, shared by the autoregressive stages."""

from __future__ import annotations

import torch


def decode_step(model, cache, keep: list[int], n_active: int, last_tokens: list[int]):
    """Drops the finished rows from the KV cache, feeds each kept row its last token,
    and returns the cache and the next logits (rows in ``keep`` order)."""
    device = model.lm_head.weight.device
    if len(keep) < n_active:
        cache.batch_select_indices(torch.tensor(keep, device=device))
    next_ids = torch.tensor([[token] for token in last_tokens], dtype=torch.long, device=device)
    out = model(input_ids=next_ids, past_key_values=cache, use_cache=True)
    return out.past_key_values, out.logits[:, -1, :]
