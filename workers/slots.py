"""The slot cache: one preallocated KV tensor per GPT stage, handed out a slot per chunk,
plus each slot's decoding state on the device.

A slot is a row of the cache (all layers, all heads, the model's whole block of
positions). Everything a decode step reads or writes per slot lives in fixed
tensors of ``slots`` rows here, so the step has one shape from the first call
to the last and a CUDA graph captured once replays for any mix of chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


class SlotCache:
    """Keys and values for ``slots`` sequences of up to the model's ``block_size`` positions,
    and which slots are free. Slots are handed out lowest first, so a lightly loaded
    engine keeps its work in the first rows."""

    def __init__(self, model, slots: int) -> None:
        cfg = model.config
        weight = model.lm_head.weight
        self.heads = cfg.num_heads
        self.head_dim = cfg.hidden_size // cfg.num_heads
        self.capacity = cfg.block_size
        self.slots = slots
        shape = (len(model.layers), slots, self.heads, self.capacity, self.head_dim)
        self.keys = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self.values = torch.zeros(shape, device=weight.device, dtype=weight.dtype)
        self._free = list(range(slots - 1, -1, -1))

    @property
    def free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        return self._free.pop()

    def release(self, slot: int) -> None:
        self._free.append(slot)
        self._free.sort(reverse=True)


@dataclass
class SlotState:
    """Per-slot decoding state on the device, each a (slots,) tensor.

    ``decoding`` marks the slots that the next decode step advances; the others
    (free, or waiting for a prefill) keep their values. ``sampled`` is where every
    step leaves its tokens: the one tensor the host reads back per step.
    """

    last_token: torch.Tensor  # long: the token the next step feeds in
    position: torch.Tensor  # long: where that token's key and value go
    key: torch.Tensor  # long: the chunk's random stream (sampler.seed_keys)
    step: torch.Tensor  # long: tokens the chunk has generated (the sampler's counter)
    temperature: torch.Tensor  # float32, 0 = greedy
    top_k: torch.Tensor  # long, the sampled vocabulary's width when off
    top_p: torch.Tensor  # float32, inf when off
    min_eos_p: torch.Tensor  # float32, inf when off
    allow_eos: torch.Tensor  # bool
    decoding: torch.Tensor  # bool
    sampled: torch.Tensor  # long

    @classmethod
    def empty(cls, slots: int, device: torch.device) -> SlotState:
        dtypes = {"temperature": torch.float32, "top_p": torch.float32, "min_eos_p": torch.float32}
        dtypes |= {"allow_eos": torch.bool, "decoding": torch.bool}
        return cls(
            **{f.name: torch.zeros(slots, dtype=dtypes.get(f.name, torch.long), device=device) for f in fields(cls)}
        )

    def write(self, slots: torch.Tensor, **values: torch.Tensor) -> None:
        """Sets the named fields of ``slots`` (a long tensor on this device) in place."""
        for name, value in values.items():
            target = getattr(self, name)
            target.index_copy_(0, slots, value.to(device=target.device, dtype=target.dtype))
