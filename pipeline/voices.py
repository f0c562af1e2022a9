"""Voice prompts: Suno's preset speakers or a user's ``.npz``, checked before use.

A voice is Bark's history: the semantic, coarse and fine tokens of a short clip.
A bad one (wrong shape, a token out of the vocabulary) would only fail deep
inside a GPU actor, or worse, produce noise; here it fails at once with one
line naming the voice and the field. Files are read by hand, not with
``np.load``: a voice file from the internet must never run code (object arrays
are refused unread) nor take the driver's memory (sizes are checked before a
byte is inflated, against ``limits.max_voice_bytes``).

The job's own voice may be any file the user names. An item's voice is chosen
by whoever wrote the input, so it is a preset or a file inside ``voices_dir``
unless the job sets ``allow_voice_paths``.

Presets come from the files of Suno's ``bark`` package, located without
importing it (importing bark loads torch and its model code).
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from pipeline.archives import oversize_reason
from pipeline.config import LimitsConfig
from workers.errors import UserError
from workers.records import VoicePrompt
from workers.settings import BarkSettings

NPZ_SUFFIX = ".npz"
NPY_SUFFIX = ".npy"  # np.savez stores each array as "<name>.npy"
_FIELDS = ("semantic_prompt", "coarse_prompt", "fine_prompt")
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER_BYTES = 10_000  # numpy's own bound on an array header
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


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


def load_voice(spec: str, settings: BarkSettings = BarkSettings(), limits: LimitsConfig = LimitsConfig()) -> VoicePrompt:
    """The job's own voice: a preset name or a path to any ``.npz`` file the user names.

    Shapes and token ranges come from ``settings`` (the checkpoint's constants);
    the file's size from ``limits``, checked before anything is inflated.
    """
    return _load(spec, _resolve(spec), settings, limits)


def load_item_voice(
    spec: str,
    settings: BarkSettings = BarkSettings(),
    limits: LimitsConfig = LimitsConfig(),
    *,
    voices_dir: Path | None = None,
    allow_paths: bool = False,
) -> VoicePrompt:
    """An item's own voice (a dataset cell, front matter, params), which whoever wrote the
    input chose, not the user running the job: a preset, or an ``.npz`` path relative to
    ``voices_dir``; any path only with ``allow_paths``.

    A path outside ``voices_dir`` (absolute, ``..``, a symlink out) is refused
    without being opened, and the message says only that: it describes no file
    the user did not name.
    """
    if allow_paths or not spec.endswith(NPZ_SUFFIX):
        return load_voice(spec, settings, limits)
    return _load(spec, _inside(spec, voices_dir), settings, limits)


def _inside(spec: str, voices_dir: Path | None) -> Path:
    """``voices_dir / spec`` when that is a file inside ``voices_dir``, else a VoiceError saying no more."""
    if voices_dir is None:
        raise VoiceError(
            f"voice {spec!r}: an item's voice must be a preset name; "
            "set voices_dir (or allow_voice_paths) to let items name .npz files"
        )
    not_allowed = VoiceError(f"voice {spec!r}: not allowed: an item's voice file must be a relative path inside voices_dir")
    try:
        relative = Path(spec)
        if relative.is_absolute() or spec.startswith("~") or ".." in relative.parts:
            raise not_allowed
        root = voices_dir.resolve()
        path = (root / relative).resolve()  # follows symlinks: one pointing out of voices_dir is refused
        if not path.is_relative_to(root):
            raise not_allowed
        found = path.is_file()
    except (OSError, ValueError):  # a NUL byte, a name too long for the file system
        raise not_allowed from None
    if not found:
        raise VoiceError(f"voice {spec!r}: no such file in voices_dir")
    return path


def _load(spec: str, path: Path, settings: BarkSettings, limits: LimitsConfig) -> VoicePrompt:
    arrays = _read_npz(spec, path, limits)
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


def _read_npz(spec: str, path: Path, limits: LimitsConfig) -> dict[str, np.ndarray]:
    """The three arrays of an ``.npz``, read by hand rather than with ``np.load``: sizes
    are checked against the zip's declared sizes and each array's header before a byte
    is inflated or allocated, and object arrays (pickles) are refused unread."""
    try:
        archive = zipfile.ZipFile(path)
    except OSError as exc:
        raise VoiceError(f"voice {spec!r}: file: cannot read {path}: {exc.strerror or exc}") from None
    except (zipfile.BadZipFile, ValueError, EOFError):
        what = f"holds one array, not an {NPZ_SUFFIX} archive" if _is_npy(path) else f"is not an {NPZ_SUFFIX} archive"
        raise VoiceError(f"voice {spec!r}: file: {path} {what}") from None
    with archive:
        members = {}
        for field in _FIELDS:
            try:
                members[field] = archive.getinfo(f"{field}{NPY_SUFFIX}")
            except KeyError:
                raise VoiceError(f"voice {spec!r}: {field}: missing from {path}") from None
        too_large = oversize_reason(
            members.values(),
            limits.max_voice_bytes,
            limits.max_compression_ratio,
            bytes_limit="limits.max_voice_bytes",
            ratio_limit="limits.max_compression_ratio",
        )
        if too_large:
            raise VoiceError(f"voice {spec!r}: file: {too_large}")
        return {field: _read_array(spec, field, archive, info) for field, info in members.items()}


def _read_array(spec: str, field: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One ``.npy`` member whose header must describe exactly the bytes the member holds."""

    def unreadable(reason: str) -> VoiceError:
        return VoiceError(f"voice {spec!r}: {field}: unreadable ({reason})")

    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in _NPY_HEADER_READERS:
                raise unreadable(f".npy format version {version[0]}.{version[1]} is not supported")
            shape, fortran_order, dtype = _NPY_HEADER_READERS[version](member, max_header_size=_MAX_NPY_HEADER_BYTES)
            if dtype.hasobject:
                raise unreadable("an object array; it would need unpickling, which is never done")
            n_bytes = math.prod(shape) * dtype.itemsize
            held = info.file_size - member.tell()
            if n_bytes != held:
                raise unreadable(f"its header describes {n_bytes} bytes of data, the file holds {held}")
            data = member.read(n_bytes)  # reading to the member's end checks its CRC
        return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C").copy()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise unreadable(reason) from None


def _is_npy(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(_NPY_MAGIC)) == _NPY_MAGIC
    except (OSError, ValueError):
        return False


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
