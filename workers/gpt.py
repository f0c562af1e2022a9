"""Bark's GPT blocks run over a preallocated slot KV cache.

Continuous batching needs what transformers' Bark forward cannot give: every
row of a batch at its own position, rows joining and leaving between steps, and
keys/values in one fixed tensor (so a decode step has a fixed shape and can be
compiled or captured as a CUDA graph). These functions reuse the loaded
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


class SlotCache:
    """Keys and values for ``slots`` sequences of up to the model's ``block_size`` positions."""

    def __init__(self, model, slots: int) -> None:
        cfg = model.config
        weight = model.lm_head.weight
        self.heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.capacity = cfg.block_size
        shape = (len(model.layers), slots, self.heads, self.capacity, self.head_dim)
        self.keys = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.values = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=weight.device)


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
    into ``slots``, replacing what those slots held; returns each row's next-token logits."""
    length = embeds.shape[1]
    if length > cache.capacity:
        raise ValueError(f"prompt of {length} positions exceeds the model's block size {cache.capacity}")
    positions = torch.arange(length, device=embeds.device)
    hidden = model.drop(embeds + model.position_embeds_layer(positions)[None])

    def store(layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        cache.keys[layer, slots, :, :length] = k
        cache.values[layer, slots, :, :length] = v

    hidden = run_blocks(model, hidden, impl, causal=True, on_kv=store)
    cache.lengths[slots] = length
    return model.lm_head(hidden)[:, -1, :]


def _step_blocks(model, cache: SlotCache, slots: torch.Tensor, positions: torch.Tensor, tokens: torch.Tensor, impl: AttentionImpl, width: int | None) -> torch.Tensor:
    """The blocks for one token per slot at ``positions``: writes each slot's new key and
    value, attends over its first ``width`` keys (None: every slot, whole capacity, read
    as a view), and returns the next logits per row."""
    hidden = model.drop(model.input_embeds_layer(tokens)[:, None] + model.position_embeds_layer(positions)[:, None])
    key_index = torch.arange(cache.capacity if width is None else width, device=tokens.device)
    allowed = (key_index[None, :] <= positions[:, None])[:, None, None, :]  # rows, 1, 1, keys
    for index, block in enumerate(model.layers):
        q, k, v = _split_heads(block.attn.att_proj(block.layernorm_1(hidden)), block.attn.num_heads)
        cache.keys[index, slots, :, positions] = k[:, :, 0]
        cache.values[index, slots, :, positions] = v[:, :, 0]
        if width is None:
            keys, values = cache.keys[index], cache.values[index]
        else:
            keys, values = cache.keys[index, slots, :, :width], cache.values[index, slots, :, :width]
        hidden = hidden + block.attn.out_proj(_merge_heads(attend(q, keys, values, allowed, impl)))
        hidden = hidden + block.mlp(block.layernorm_2(hidden))
    return model.lm_head(model.layernorm_final(hidden))[:, -1, :]


def decode(model, cache: SlotCache, slots: torch.Tensor, tokens: torch.Tensor, impl: AttentionImpl, width: int) -> torch.Tensor:
    """One token per given slot, each at its own position; returns the next logits per row.
    Keys beyond ``width`` are not read (every given slot must be shorter than it)."""
    positions = cache.lengths[slots]
    logits = _step_blocks(model, cache, slots, positions, tokens, impl, width)
    cache.lengths[slots] = positions + 1
    return logits


def decode_active(model, cache: SlotCache, slots: list[int], last_tokens: list[int], impl: AttentionImpl, compiled=None) -> torch.Tensor:
    """One decode step of the given slots: through the compiled fixed-shape step when there
    is one, else reading keys only as far as the longest of them."""
    if compiled is not None:
        return compiled(slots, last_tokens)
    index = torch.tensor(slots, device=cache.lengths.device)
    tokens = torch.tensor(last_tokens, dtype=torch.long, device=cache.lengths.device)
    return decode(model, cache, index, tokens, impl, width=int(cache.lengths[index].max()) + 1)


def decode_all(model, cache: SlotCache, tokens: torch.Tensor, active: torch.Tensor, impl: AttentionImpl) -> torch.Tensor:
    """``decode`` over every slot and the whole capacity: one fixed shape, for compiled steps.

    Idle slots (``active`` false) compute a throwaway row and keep their length.
    """
    positions = cache.lengths.clamp(max=cache.capacity - 1)
    slots = torch.arange(len(tokens), device=tokens.device)
    logits = _step_blocks(model, cache, slots, positions, tokens, impl, width=None)
    cache.lengths.copy_(torch.where(active, positions + 1, cache.lengths))
    return logits


def compiled_decode(model, cache: SlotCache, impl: AttentionImpl, how: str):
    """A step function ``(slots, last_tokens) -> logits`` of the active rows, built on a
    compiled ``decode_all``: ``torch_compile`` (inductor), or ``cuda_graphs`` (inductor
    with its CUDA-graph mode, replaying the captured step; GPU only)."""
    if how == "cuda_graphs" and cache.keys.device.type != "cuda":
        raise ValueError("decode_compile: cuda_graphs needs a GPU; use torch_compile or off")
    mode = "reduce-overhead" if how == "cuda_graphs" else None
    step = torch.compile(decode_all, mode=mode, dynamic=False)
    n_slots = cache.lengths.shape[0]
    device = cache.lengths.device

    def run(slots: list[int], last_tokens: list[int]) -> torch.Tensor:
        tokens = torch.zeros(n_slots, dtype=torch.long, device=device)
        active = torch.zeros(n_slots, dtype=torch.bool, device=device)
        index = torch.tensor(slots, device=device)
        tokens[index] = torch.tensor(last_tokens, dtype=torch.long, device=device)
        active[index] = True
        return step(model, cache, tokens, active, impl)[index]

    return run
