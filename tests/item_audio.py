"""Test helpers for item audio: one item of one chunk for the writer, and a file's samples read back
with PyAV (FFmpeg), the library that reads every format the writer makes."""

from __future__ import annotations

import io

import av
import numpy as np

from pipeline.retakes import TakeOrder
from pipeline.writer import ChunkOrder, ItemOrder
from speech_like import RATE
from workers.records import AudioOutput


def decode(data: bytes) -> tuple[np.ndarray, int, av.audio.stream.AudioStream]:
    """Every sample of a file's audio stream (float, mono), its rate and the stream."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().reshape(-1) for frame in container.decode(stream)]
        return np.concatenate(frames).astype(np.float64), stream.codec_context.sample_rate, stream


def one_chunk_item(item_id: str, audio: np.ndarray) -> tuple[ItemOrder, AudioOutput, TakeOrder]:
    """An item of one chunk, its audio, and its first take, whose text is as long as the audio."""
    order = ItemOrder(
        item_id=item_id, title=None, extra={}, voice=None, voice_mode="fixed", language="en", seed=0, model="tiny",
        fingerprint="fp1:" + "cd" * 16, fingerprint_parts={}, parts_id="fp1:" + "cd" * 16,
        chunks=[ChunkOrder(index=0, text="Speech.", n_tokens=2, seed=0, voice=None, break_after="end")],
        started=0.0,
    )
    take = TakeOrder(seed=0, expected_s=len(audio) / RATE)
    return order, AudioOutput(key=f"{item_id}#0", audio=audio, sample_rate=RATE, timings={}), take
