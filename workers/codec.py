"""Codec stage: eight EnCodec codebooks -> 24 kHz waveform.

Each chunk is decoded on its own: EnCodec's decoder holds LSTMs, so padding a
short chunk to a long one's length would change its audio (transformers'
``BarkModel.codec_decode`` breaks batching for the same reason).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from workers.engine import Admission, BatchEngine, Finished


@torch.inference_mode()
def decode_audio(codec, fine_tokens: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Waveform per chunk, float32, ``frames * samples_per_frame`` samples long."""
    device = next(codec.parameters()).device
    audios = []
    for codes in fine_tokens:
        if codes.shape[-1] == 0:  # the semantic stage ended at once: no audio, and no decoder call
            audios.append(np.zeros(0, dtype=np.float32))
            continue
        codes = torch.tensor(codes, dtype=torch.long, device=device)[None]  # copies: object-store arrays are read-only
        audios.append(codec.decode(codes)[0].float().cpu().numpy())
    return audios


class CodecEngine(BatchEngine):
    """Up to ``batch_size`` chunks decoded one after another in one step."""

    def __init__(self, codec, batch_size: int) -> None:
        super().__init__(batch_size)
        self.codec = codec

    def compute(self, batch: list[Admission]) -> list[Finished]:
        started = time.perf_counter()
        audios = decode_audio(self.codec, [np.asarray(a.upstream) for a in batch])
        seconds = (time.perf_counter() - started) / len(batch)
        return [Finished(a.handle, audio, seconds) for a, audio in zip(batch, audios)]
