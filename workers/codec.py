"""Codec stage: eight EnCodec codebooks -> 24 kHz waveform.

Each chunk is decoded on its own: EnCodec's decoder holds LSTMs, so padding a
short chunk to a long one's length would change its audio (transformers'
``BarkModel.codec_decode`` breaks batching for the same reason).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


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
