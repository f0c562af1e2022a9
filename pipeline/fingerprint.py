"""An item's fingerprint: a digest of everything that shapes its audio, so resume knows what it resumes.

Resume used to match on the item id alone, so a rerun with another voice, a
fixed text or a new seed silently kept the old audio. Each manifest line and
each item's metadata now records a fingerprint of:

- the item's text (as read, before the text front end);
- its voice by content: a digest of the prompt's token arrays, not its name,
  so an edited ``.npz`` under the same path counts as a new voice (no voice: a
  random one, fixed by the seed);
- its seed, voice mode and reset interval, and its merged sampling settings;
- its language when the item names its own (a detected one follows from its text);
- the job's settings that change the audio: ``text`` (chunking), ``output``
  format, rate, silences, fades and trim, and each stage's ``dtype``;
- the model's identity: source, format, revision, tokenizer and codec, plus a
  digest of the checkpoint folder's file names, sizes and modification times,
  so rewriting a local checkpoint's files (or copying them, which is treated
  the same: the digest does not read gigabytes of weights) counts as a new model;
  for a hub checkpoint, the commit its snapshot is of (the driver fetches only
  configs and tokenizer, so what else the local cache holds must not count).

Settings that only change *which extra files* are written (subtitles, saved
tokens) or how fast the job runs (batch sizes, replicas, placement) are left
out on purpose. The parts are kept too (``ItemFingerprint.parts``), so a redo
can say what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import JobConfig
from workers.config import STAGE_NAMES, SamplingSet
from workers.records import VoicePrompt

FINGERPRINT_PREFIX = "fp1:"  # bump when what goes into a fingerprint changes meaning
DIGEST_HEX = 32  # 128 bits: enough to tell apart every item a job will ever see
NO_VOICE = "random"
UNKNOWN_CHANGE = "input or settings"
# Text settings added after fingerprints were first kept: in a fingerprint only when set, so earlier ones hold.
_LATER_TEXT_SETTINGS = {"urls", "max_unknown_share", "default_language", "target_speech_s", "max_speech_s"}
# Settings whose default changed: unset, they are recorded at the old default, which fingerprints
# made before the change hold (``text.max_chars`` was the chunk budget, 220, before speech seconds).
_FORMER_TEXT_DEFAULTS = {"max_chars": 220}


@dataclass(frozen=True)
class ItemFingerprint:
    value: str
    parts: dict[str, str]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:DIGEST_HEX]


def _json_digest(value) -> str:
    return _digest(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8"))


def voice_digest(voice: VoicePrompt | None) -> str:
    """The voice by content: its three token arrays (as int64, with their shapes), not its name."""
    if voice is None:
        return NO_VOICE
    h = hashlib.sha256()
    for field in ("semantic_prompt", "coarse_prompt", "fine_prompt"):
        array = getattr(voice, field)
        h.update(f"{field}{tuple(array.shape)}".encode())
        h.update(array.astype("<i8", copy=False).tobytes())
    return h.hexdigest()[:DIGEST_HEX]


def folder_digest(folder: Path) -> str:
    """Names, sizes and modification times of every file below ``folder`` (symlinks followed, as in
    a Hugging Face cache snapshot); cheap even for many GB of weights."""
    entries = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            try:
                stat = path.stat()
            except OSError:
                continue  # a dangling link: not part of what loads
            entries.append((path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns))
    return _json_digest(entries)


def _local(spec: str | None) -> Path | None:
    if not spec:
        return None
    path = Path(spec).expanduser()
    return path if path.exists() else None


def model_identity(config: JobConfig, checkpoint_dir: Path | None) -> str:
    """Which weights make the audio: the config's names for them and what is on disk under them."""
    model = config.model
    identity = {
        "source": model.source,
        "format": model.format,
        "revision": model.revision,
        "suno_files": model.suno_files.model_dump() if model.format == "suno" else None,
        "tokenizer": model.tokenizer,
        "codec_checkpoint": model.codec_checkpoint,
        "checkpoint_files": None,
    }
    if checkpoint_dir is not None and checkpoint_dir.is_dir():
        if Path(model.source).expanduser().is_dir():
            identity["checkpoint_files"] = folder_digest(checkpoint_dir)
        else:  # a hub snapshot, named by its commit
            identity["checkpoint_commit"] = checkpoint_dir.name
    for name, spec in (("tokenizer_files", model.tokenizer), ("codec_file", model.codec_checkpoint)):
        path = _local(spec)
        if path is not None:
            identity[name] = folder_digest(path) if path.is_dir() else _json_digest([path.stat().st_size, path.stat().st_mtime_ns])
    return _json_digest(identity)


class Fingerprinter:
    """Computes item fingerprints; the job-wide parts are computed once."""

    def __init__(self, config: JobConfig, checkpoint_dir: Path | None) -> None:
        output = config.output
        self.model = model_identity(config, checkpoint_dir)
        self.settings = _json_digest(
            {
                "text": {
                    **config.text.model_dump(exclude=_LATER_TEXT_SETTINGS),
                    **config.text.model_dump(include=_LATER_TEXT_SETTINGS, exclude_defaults=True),
                    **{k: v for k, v in _FORMER_TEXT_DEFAULTS.items() if getattr(config.text, k) is None},
                },
                "output": {
                    "format": output.format,
                    "sample_rate": output.sample_rate,
                    "silence": output.silence.model_dump(),
                    "crossfade_s": output.crossfade_s,
                    "trim": output.trim.model_dump(),
                    # Only when set, so the fingerprints of wav and flac items made before these settings hold.
                    **({"bitrate_kbps": output.bitrate} if output.bitrate is not None else {}),
                    **({"loudness": output.loudness.model_dump()} if output.loudness is not None else {}),
                },
                "dtype": {stage: config.stages.of(stage).dtype for stage in STAGE_NAMES},
            }
        )

    def item(
        self,
        *,
        text: str,
        voice: VoicePrompt | None,
        seed: int,
        sampling: SamplingSet,
        voice_mode: str,
        voice_reset_every: int | None,
        language: str | None = None,
    ) -> ItemFingerprint:
        parts = {
            "text": _digest(text.encode("utf-8", "surrogatepass")),
            "voice": voice_digest(voice),
            "seed": str(seed),
            "voice_mode": f"{voice_mode}/{voice_reset_every or 0}",
            "sampling": _json_digest(sampling.model_dump()),
            "settings": self.settings,
            "model": self.model,
        }
        if language is not None:  # the item's own (a detected one follows from its text and the settings)
            parts["language"] = language
        return ItemFingerprint(FINGERPRINT_PREFIX + _json_digest(parts), parts)


def changed_parts(old: dict[str, str] | None, new: dict[str, str]) -> str:
    """What differs between two fingerprints' parts, for the console (``voice, seed``)."""
    if not old:
        return UNKNOWN_CHANGE  # recorded before fingerprints, or without parts
    names = [name for name in new if old.get(name) != new[name]]
    return ", ".join(names) or UNKNOWN_CHANGE
