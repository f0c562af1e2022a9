"""Voice prompts: Suno's preset speakers or a user's ``.npz``, checked before use.

A voice is Bark's history: the semantic, coarse and fine tokens of a short clip.
A bad one (wrong shape, a token out of the vocabulary) would only fail deep
inside a GPU actor, or worse, produce noise; here it fails at once with one
line naming the voice and the field. Files are read with ``allow_pickle=False``:
a voice file from the internet must never run code.

Presets come from the files of Suno's ``bark`` package, located without
importing it (importing bark loads torch and its model code).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import zipfile
import zlib
from pathlib import Path

import numpy as np
from numpy.lib.npyio import NpzFile

from workers.errors import UserError
from workers.records import VoicePrompt
from workers.settings import BarkSettings

NPZ_SUFFIX = ".npz"
_FIELDS = ("semantic_prompt", "coarse_prompt", "fine_prompt")


class VoiceError(UserError):
    """A voice that cannot be used; the message is one line naming voice and field."""


def presets_dir() -> Path | None:
    """``<bark package>/assets/prompts``, or None when bark is not installed."""
    spec = importlib.util.find_spec("bark")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "prompts"
    return folder if folder.is_dir() else None


def list_voices() -> list[str]:
    """Preset names, sorted: ``announcer``, ``en_speaker_0``, ``v2/en_speaker_6``, ..."""
    return list(_preset_names())


@functools.cache
def _preset_names() -> tuple[str, ...]:
    """Scanned once: an installed package's files do not change while we run."""
    folder = presets_dir()
    if folder is None:
        return ()
    names = (p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob(f"*{NPZ_SUFFIX}"))
    return tuple(sorted(names))


def load_voice(spec: str, settings: BarkSettings = BarkSettings()) -> VoicePrompt:
    """A checked voice prompt from a preset name or a path to an ``.npz`` file; shapes and
    token ranges come from ``settings`` (the checkpoint's constants)."""
    path = _resolve(spec)
    arrays = _read_npz(spec, path)
    # field -> (rows, or None for a 1-D array; exclusive upper bound of its tokens)
    shapes = {
        "semantic_prompt": (None, settings.semantic_vocab_size),
        "coarse_prompt": (settings.n_coarse_codebooks, settings.codebook_size),
        "fine_prompt": (settings.n_fine_codebooks, settings.codebook_size),
    }
    for field, (rows, limit) in shapes.items():
        _check_array(spec, field, arrays[field], rows, limit)
    if arrays["coarse_prompt"].shape[1] != arrays["fine_prompt"].shape[1]:
        raise VoiceError(
            f"voice {spec!r}: fine_prompt has {arrays['fine_prompt'].shape[1]} frames but "
            f"coarse_prompt has {arrays['coarse_prompt'].shape[1]}; they must match"
        )
    return VoicePrompt(name=spec, **arrays)


def _resolve(spec: str) -> Path:
    """A path for ``*.npz`` specs; otherwise only a known preset name (no ``../`` tricks)."""
    if spec.endswith(NPZ_SUFFIX):
        return Path(spec).expanduser()
    presets = _preset_names()
    if spec in presets:
        return presets_dir() / f"{spec}{NPZ_SUFFIX}"
    if not presets:
        raise VoiceError(f"voice {spec!r}: no presets available (is the bark package installed?)")
    close = difflib.get_close_matches(spec, presets, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see list_voices()"
    raise VoiceError(f"voice {spec!r}: unknown preset and not an {NPZ_SUFFIX} path{hint}")


def _read_npz(spec: str, path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise VoiceError(f"voice {spec!r}: file: cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, EOFError, zipfile.BadZipFile):
        raise VoiceError(f"voice {spec!r}: file: {path} is not an {NPZ_SUFFIX} archive") from None
    if not isinstance(loaded, NpzFile):
        raise VoiceError(f"voice {spec!r}: file: {path} holds one array, not an {NPZ_SUFFIX} archive")
    arrays = {}
    with loaded:
        for field in _FIELDS:
            if field not in loaded.files:
                raise VoiceError(f"voice {spec!r}: {field}: missing from {path}")
            try:
                arrays[field] = loaded[field]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                # Object arrays land here: their pickle is refused, never run.
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise VoiceError(f"voice {spec!r}: {field}: unreadable ({reason})") from None
    return arrays


def _check_array(spec: str, field: str, array: np.ndarray, rows: int | None, limit: int) -> None:
    def fail(problem: str) -> VoiceError:
        return VoiceError(f"voice {spec!r}: {field}: {problem}")

    if not np.issubdtype(array.dtype, np.integer):
        raise fail(f"dtype {array.dtype} is not an integer type")
    if rows is None and array.ndim != 1:
        raise fail(f"expected a 1-D array, got shape {array.shape}")
    if rows is not None and (array.ndim != 2 or array.shape[0] != rows):
        raise fail(f"expected shape ({rows}, frames), got {array.shape}")
    if array.size == 0:
        raise fail("is empty")
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise fail(f"has negative token {low}")
    if high >= limit:
        raise fail(f"token {high} is out of range (must be < {limit})")
