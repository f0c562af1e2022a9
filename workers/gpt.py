"""Bark's GPT blocks over a preallocated slot KV cache.

Continuous batching needs what transformers' Bark forward cannot give: every
row of a batch at its own position, rows joining and leaving between steps, and
keys/values in one fixed tensor, so that a decode step has one fixed shape and
can be compiled or captured as a CUDA graph. These functions reuse the loaded
model's own modules (embeddings, layer norms, projections, MLPs, heads) and
replace only the attention bookkeeping.

``eager`` attention repeats transformers' arithmetic operation for operation
(matmul, scale, mask fill, softmax, matmul), so a row's logits differ from the
one-chunk-at-a-time oracle only where a longer, masked key range changes the
order of a floating-point reduction. ``sdpa`` uses torch's fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workers.config import AttentionImpl
from workers.slots import SlotCache


def _split_heads(projected: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, seq, 3 * hidden) -> three (rows, heads, seq, head_dim)."""
    rows, seq, width = projected.shape
    return tuple(t.view(rows, seq, heads, width // 3 // heads).permute(0, 2, 1, 3) for t in projected.split(width // 3, dim=2))


def _merge_heads(attended: torch.Tensor) -> torch.Tensor:
    rows, heads, seq, head_dim = attended.shape
    return attended.transpose(1, 2).contiguous().view(rows, seq, heads * head_dim)


def attend(q, k, v, allowed: torch.Tensor | None, impl: AttentionImpl) -> torch.Tensor:
    """Attention of ``q`` over ``k``/``v``; ``allowed`` (broadcast to the score shape) marks the keys
    each query may see, None for all."""
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(weights, v)


def _causal(length: int, device) -> torch.Tensor:
    return torch.ones((length, length), dtype=torch.bool, device=device).tril()


def run_blocks(model, hidden: torch.Tensor, impl: AttentionImpl, *, causal: bool, on_kv=None) -> torch.Tensor:
    """The model's blocks and final norm over whole sequences (no cache read).

    ``on_kv(layer, k, v)`` receives each layer's keys and values, to be stored.
    """
    allowed = _causal(hidden.shape[1], hidden.device) if causal else None
    for index, block in enumerate(model.layers):
        q, k, v = _split_heads(block.attn.att_proj(block.layernorm_1(hidden)), block.attn.num_heads)
        if on_kv is not None:
            on_kv(index, k, v)
        hidden = hidden + block.attn.out_proj(_merge_heads(attend(q, k, v, allowed, impl)))
        hidden = hidden + block.mlp(block.layernorm_2(hidden))
    return model.layernorm_final(hidden)


def prefill(model, cache: SlotCache, slots: torch.Tensor, embeds: torch.Tensor, impl: AttentionImpl) -> torch.Tensor:
    """Runs equal-length prompts (rows, length, hidden: token embeddings without positions)
    into ``slots``, replacing what those slots held; returns each row's next-token logits
    (rows, vocab)."""
    length = embeds.shape[1]
    if length > cache.capacity:
        raise ValueError(f"prompt of {length} positions exceeds the model's block size {cache.capacity}")
    positions = torch.arange(length, device=embeds.device)
    hidden = model.drop(embeds + model.position_embeds_layer(positions)[None])  # rows, length, hidden

    def store(layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        cache.keys[layer, slots, :, :length] = k
        cache.values[layer, slots, :, :length] = v

    hidden = run_blocks(model, hidden, impl, causal=True, on_kv=store)
    return model.lm_head(hidden[:, -1:])[:, 0]  # rows, vocab


def decode(model, cache: SlotCache, tokens: torch.Tensor, positions: torch.Tensor, impl: AttentionImpl) -> torch.Tensor:
    """One token into every slot at that slot's position: one fixed shape whatever is active.

    ``tokens``, ``positions``: (slots,). Each slot's new key and value are written at
    its position and it attends over its own cache up to there, read in place (a view
    of the whole capacity, no gather). Idle slots compute a throwaway row; the caller
    keeps their state. Returns the next-token logits (slots, vocab).
    """
    slots = torch.arange(tokens.shape[0], device=tokens.device)
    positions = positions.clamp(max=cache.capacity - 1)
    hidden = model.drop(model.input_embeds_layer(tokens) + model.position_embeds_layer(positions))[:, None]  # slots, 1, hidden
    key_index = torch.arange(cache.capacity, device=tokens.device)
    allowed = (key_index[None, :] <= positions[:, None])[:, None, None, :]  # slots, 1, 1, capacity
    for index, block in enumerate(model.layers):
        q, k, v = _split_heads(block.attn.att_proj(block.layernorm_1(hidden)), block.attn.num_heads)  # slots, heads, 1, head_dim
        cache.keys[index, slots, :, positions] = k[:, :, 0]
        cache.values[index, slots, :, positions] = v[:, :, 0]
        attended = attend(q, cache.keys[index], cache.values[index], allowed, impl)  # slots, heads, 1, head_dim
        hidden = hidden + block.attn.out_proj(_merge_heads(attended))
        hidden = hidden + block.mlp(block.layernorm_2(hidden))
    return model.lm_head(model.layernorm_final(hidden))[:, 0]  # slots, vocab
