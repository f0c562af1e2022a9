"""Encoding: an item's float samples to the bytes of its audio file.

wav and flac go through soundfile (libsndfile) as 16-bit PCM. mp3 and opus go
through PyAV, FFmpeg's maintained binding, with the encoders the audio world
uses (libmp3lame, libopus):

- mp3 at a constant bitrate, with the LAME header that records the encoder's
  delay and padding, so a decoder gives back exactly the samples encoded;
- opus in an Ogg container (``.opus``, RFC 7845), constrained VBR, whose
  pre-skip and final granule position do the same. Opus always decodes at
  48 kHz; its header keeps the rate it was made from.

So an item's duration and its chunks' times in the metadata hold for every
format. Which rates and bitrates each codec takes is checked with the config
(:class:`pipeline.config.OutputConfig`); the encoders check again here.
"""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from pipeline.config import DEFAULT_BITRATE_KBPS, AudioFormat
from pipeline.storage import atomic_write_bytes

PCM_SUBTYPE = "PCM_16"
SOUNDFILE_FORMATS = {"wav": "WAV", "flac": "FLAC"}
FFMPEG_FORMATS = {"mp3": ("mp3", "libmp3lame"), "opus": ("ogg", "libopus")}  # container, encoder
# libopus' default VBR can overshoot its target (86 kbps made of 64 asked, on the tests' speech-like
# signal); constrained VBR still spends bits where the speech needs them but holds the average.
ENCODER_OPTIONS = {"mp3": {}, "opus": {"vbr": "constrained"}}
FORMATS = (*SOUNDFILE_FORMATS, *FFMPEG_FORMATS)


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: AudioFormat, bitrate_kbps: int | None = None) -> bytes:
    """The bytes of a mono file in ``fmt``; ``bitrate_kbps`` for mp3 and opus (None: the format's default).

    Samples are clipped to [-1, 1] first: the integer conversion would otherwise
    wrap a loud peak around into a click, and a lossy encoder given samples over
    full scale makes a decoder clip them.
    """
    if fmt not in FORMATS:
        raise ValueError(f"audio format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    samples = np.clip(np.nan_to_num(np.asarray(audio, dtype=np.float32)), -1.0, 1.0)
    if fmt in SOUNDFILE_FORMATS:
        if bitrate_kbps is not None:
            raise ValueError(f"{fmt} is lossless: it takes no bitrate")
        buffer = io.BytesIO()
        sf.write(buffer, samples, sample_rate, format=SOUNDFILE_FORMATS[fmt], subtype=PCM_SUBTYPE)
        return buffer.getvalue()
    return _encode_ffmpeg(samples, sample_rate, fmt, bitrate_kbps or DEFAULT_BITRATE_KBPS[fmt])


def _encode_ffmpeg(samples: np.ndarray, sample_rate: int, fmt: str, bitrate_kbps: int) -> bytes:
    if len(samples) == 0:
        raise ValueError(f"{fmt} cannot hold audio of no samples: a file of no frames does not decode")
    container_format, encoder = FFMPEG_FORMATS[fmt]
    rates = av.codec.Codec(encoder, "w").audio_rates
    if rates and sample_rate not in rates:
        raise ValueError(f"{fmt} cannot encode {sample_rate} Hz audio; it takes {', '.join(map(str, sorted(rates)))} Hz")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=sample_rate, layout="mono", options=ENCODER_OPTIONS[fmt])
        stream.bit_rate = bitrate_kbps * 1000
        # One frame for the whole item: PyAV cuts it into the encoder's frame size.
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, 0, Fraction(1, sample_rate)
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def write_audio(path: Path, audio: np.ndarray, sample_rate: int, fmt: AudioFormat, bitrate_kbps: int | None = None) -> None:
    atomic_write_bytes(Path(path), encode_audio(audio, sample_rate, fmt, bitrate_kbps))
