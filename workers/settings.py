"""Bark's generation constants, read from the checkpoint's generation config.

Every offset, pad/infer token, window size and rate used by the stages comes
from here, so a checkpoint with other constants needs no code change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers.models.bark.generation_configuration_bark import (
    BarkCoarseGenerationConfig,
    BarkFineGenerationConfig,
    BarkSemanticGenerationConfig,
)

from workers.config import DEFAULT_SAMPLE_RATE

GENERATION_CONFIG_FILE = "generation_config.json"
DEFAULT_CODEBOOK_SIZE = 1024


@dataclass(frozen=True)
class BarkSettings:
    semantic: BarkSemanticGenerationConfig = field(default_factory=BarkSemanticGenerationConfig)
    coarse: BarkCoarseGenerationConfig = field(default_factory=BarkCoarseGenerationConfig)
    fine: BarkFineGenerationConfig = field(default_factory=BarkFineGenerationConfig)
    codebook_size: int = DEFAULT_CODEBOOK_SIZE
    sample_rate: int = DEFAULT_SAMPLE_RATE

    @property
    def semantic_vocab_size(self) -> int:
        """Semantic token ids are 0..semantic_vocab_size-1 (10 000)."""
        return self.semantic.semantic_vocab_size

    @property
    def n_coarse_codebooks(self) -> int:
        """EnCodec codebooks the coarse stage makes (2)."""
        return self.coarse.n_coarse_codebooks

    @property
    def n_fine_codebooks(self) -> int:
        """EnCodec codebooks of the audio (8)."""
        return self.fine.n_fine_codebooks

    @property
    def semantic_to_coarse_ratio(self) -> float:
        """Flattened coarse tokens per semantic token (~3.006)."""
        return self.coarse.coarse_rate_hz / self.semantic.semantic_rate_hz * self.coarse.n_coarse_codebooks

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per codec frame (320 at 24 kHz / 75 Hz)."""
        return int(round(self.sample_rate / self.coarse.coarse_rate_hz))

    def coarse_length(self, n_semantic: int) -> int:
        """Flattened coarse tokens that Bark generates for ``n_semantic`` semantic tokens."""
        n_codebooks = self.coarse.n_coarse_codebooks
        frames = int(n_semantic * self.semantic_to_coarse_ratio / n_codebooks)
        return frames * n_codebooks

    def to_dict(self) -> dict:
        """The nested layout of ``suno/bark``'s ``generation_config.json``."""
        return {
            "semantic_config": self.semantic.to_dict(),
            "coarse_acoustics_config": self.coarse.to_dict(),
            "fine_acoustics_config": self.fine.to_dict(),
            "codebook_size": self.codebook_size,
            "sample_rate": self.sample_rate,
        }


def settings_from_dict(raw: dict) -> BarkSettings:
    return BarkSettings(
        semantic=BarkSemanticGenerationConfig(**raw.get("semantic_config", {})),
        coarse=BarkCoarseGenerationConfig(**raw.get("coarse_acoustics_config", {})),
        fine=BarkFineGenerationConfig(**raw.get("fine_acoustics_config", {})),
        codebook_size=int(raw.get("codebook_size", DEFAULT_CODEBOOK_SIZE)),
        sample_rate=int(raw.get("sample_rate", DEFAULT_SAMPLE_RATE)),
    )


def load_settings(checkpoint_dir: Path | None) -> BarkSettings:
    """Settings of a checkpoint directory; upstream Bark's constants when it has none."""
    if checkpoint_dir is not None and (checkpoint_dir / GENERATION_CONFIG_FILE).is_file():
        raw = json.loads((checkpoint_dir / GENERATION_CONFIG_FILE).read_text(encoding="utf-8"))
        return settings_from_dict(raw)
    return BarkSettings()
