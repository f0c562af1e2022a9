"""A chunk's tokens saved as a Bark voice preset, so a good take can voice later jobs.

Bark Infinity's habit: every clip's semantic, coarse and fine tokens are a
reusable speaker. The file has exactly the layout of Suno's presets
(``semantic_prompt`` (T,), ``coarse_prompt`` (2, T'), ``fine_prompt`` (8, T')),
as int64 and without pickles, so ``pipeline.voices.load_voice`` and upstream
Bark both read it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.storage import atomic_write_bytes
from workers.records import VoicePrompt
from workers.settings import BarkSettings

TOKEN_DTYPE = np.int64


class Codebooks(NamedTuple):
    """The checkpoint's codebook counts: all that a voice's shape check needs, small enough
    to travel inline where the whole :class:`BarkSettings` would not."""

    n_coarse_codebooks: int
    n_fine_codebooks: int

    @classmethod
    def of(cls, settings: BarkSettings) -> Codebooks:
        return cls(settings.n_coarse_codebooks, settings.n_fine_codebooks)


def voice_from_tokens(
    name: str, semantic: np.ndarray, coarse: np.ndarray, fine: np.ndarray, settings: BarkSettings | Codebooks = BarkSettings()
) -> VoicePrompt:
    """A voice prompt from one chunk's tokens, for use in memory; shapes (the checkpoint's
    codebook counts) are checked here."""
    semantic, coarse, fine = (np.asarray(a) for a in (semantic, coarse, fine))
    _check(name, "semantic", semantic, rows=None)
    _check(name, "coarse", coarse, rows=settings.n_coarse_codebooks)
    _check(name, "fine", fine, rows=settings.n_fine_codebooks)
    if coarse.shape[1] != fine.shape[1]:
        raise ValueError(f"tokens {name!r}: coarse has {coarse.shape[1]} frames but fine has {fine.shape[1]}")
    return VoicePrompt(name=name, semantic_prompt=semantic, coarse_prompt=coarse, fine_prompt=fine)


def save_voice_npz(
    path: Path, semantic: np.ndarray, coarse: np.ndarray, fine: np.ndarray, settings: BarkSettings = BarkSettings()
) -> None:
    """Write the tokens as a voice-preset ``.npz``, whole or not at all (temp file, then rename)."""
    atomic_write_bytes(Path(path), voice_npz_bytes(str(path), semantic, coarse, fine, settings))


def voice_npz_bytes(
    name: str, semantic: np.ndarray, coarse: np.ndarray, fine: np.ndarray, settings: BarkSettings | Codebooks = BarkSettings()
) -> bytes:
    """The bytes of a voice-preset ``.npz`` (plain int64 arrays, nothing pickled)."""
    voice = voice_from_tokens(name, semantic, coarse, fine, settings)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        semantic_prompt=voice.semantic_prompt.astype(TOKEN_DTYPE),
        coarse_prompt=voice.coarse_prompt.astype(TOKEN_DTYPE),
        fine_prompt=voice.fine_prompt.astype(TOKEN_DTYPE),
    )
    return buffer.getvalue()


def _check(name: str, field: str, array: np.ndarray, rows: int | None) -> None:
    """What a voice needs: integer tokens, Bark's shape, at least one frame."""
    problem = None
    if not np.issubdtype(array.dtype, np.integer):
        problem = f"dtype {array.dtype} is not an integer type"
    elif rows is None and array.ndim != 1:
        problem = f"expected shape (tokens,), got {array.shape}"
    elif rows is not None and (array.ndim != 2 or array.shape[0] != rows):
        problem = f"expected shape ({rows}, frames), got {array.shape}"
    elif array.size == 0:
        problem = "is empty; a voice needs at least one token"
    if problem:
        raise ValueError(f"tokens {name!r}: {field}: {problem}")
