"""Seeds derived from names, not from order.

A chunk's seed depends only on the job seed, its item id, its index and the
stage, so the same input and config give the same audio whatever the batching,
the replica count or the order in which chunks finish.
"""

from __future__ import annotations

import hashlib

_SEED_BITS = 63  # torch generators take seeds below 2**63


def derive_seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << _SEED_BITS) - 1)


def item_seed(job_seed: int, item_id: str) -> int:
    return derive_seed("item", job_seed, item_id)


def chunk_seed(seed_of_item: int, index: int) -> int:
    return derive_seed("chunk", seed_of_item, index)


def stage_seed(seed_of_chunk: int, stage: str) -> int:
    return derive_seed("stage", seed_of_chunk, stage)


def take_seed(seed_of_chunk: int, take: int) -> int:
    """The seed of a chunk's ``take``: its own seed for the first (0), one derived from it for each retake."""
    return seed_of_chunk if take == 0 else derive_seed("retake", seed_of_chunk, take)
