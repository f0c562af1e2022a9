"""Saved chunk tokens: a voice-preset .npz that the voice loader accepts and reads back equal."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from workers.records import VoicePrompt
from pipeline.tokens import save_voice_npz, voice_from_tokens
from pipeline.voices import load_voice


def chunk_tokens(frames: int = 75, dtype=np.int64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tokens shaped like one chunk's stage outputs: semantic (T,), coarse (2, T'), fine (8, T')."""
    rng = np.random.default_rng(1)
    fine = rng.integers(0, 1024, size=(8, frames)).astype(dtype)
    return rng.integers(0, 10_000, size=frames * 2 // 3).astype(dtype), fine[:2].copy(), fine


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16])
def test_saved_tokens_load_back_as_a_voice(tmp_path, dtype):
    semantic, coarse, fine = chunk_tokens(dtype=dtype)
    path = tmp_path / "item.tokens" / "0003.npz"
    save_voice_npz(path, semantic, coarse, fine)
    voice = load_voice(str(path))  # the preset validator: shapes, dtypes, vocabulary ranges
    assert isinstance(voice, VoicePrompt) and voice.name == str(path)
    for loaded, saved in [(voice.semantic_prompt, semantic), (voice.coarse_prompt, coarse), (voice.fine_prompt, fine)]:
        assert loaded.dtype == np.int64
        np.testing.assert_array_equal(loaded, saved)
    assert os.listdir(path.parent) == [path.name]  # no temp file left behind


def test_file_has_the_preset_layout_without_pickles(tmp_path):
    path = tmp_path / "voice.npz"
    save_voice_npz(path, *chunk_tokens(frames=12))
    with np.load(path, allow_pickle=False) as loaded:
        assert sorted(loaded.files) == ["coarse_prompt", "fine_prompt", "semantic_prompt"]
        assert {loaded[name].dtype for name in loaded.files} == {np.dtype(np.int64)}
        assert loaded["coarse_prompt"].shape == (2, 12) and loaded["fine_prompt"].shape == (8, 12)
    assert zipfile.is_zipfile(path)


def test_saving_again_replaces_the_file(tmp_path):
    path = tmp_path / "voice.npz"
    save_voice_npz(path, *chunk_tokens(frames=12))
    semantic, coarse, fine = chunk_tokens(frames=30)
    save_voice_npz(path, semantic, coarse, fine)
    np.testing.assert_array_equal(load_voice(str(path)).fine_prompt, fine)


def test_voice_from_tokens_in_memory():
    semantic, coarse, fine = chunk_tokens(dtype=np.uint16)
    voice = voice_from_tokens("chunk 3", semantic, coarse, fine)
    assert voice.name == "chunk 3" and voice.semantic_prompt.dtype == np.int64
    np.testing.assert_array_equal(voice.fine_prompt, fine)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"semantic": np.zeros((2, 3), np.int64)}, "semantic: expected shape"),
        ({"coarse": np.zeros((8, 75), np.int64)}, r"coarse: expected shape \(2, frames\)"),
        ({"fine": np.zeros((8, 74), np.int64)}, "frames"),
        ({"fine": np.zeros((8, 75), np.float32)}, "fine: dtype float32"),
        ({"semantic": np.zeros(0, np.int64)}, "semantic: is empty"),
    ],
)
def test_tokens_that_cannot_be_a_voice_are_refused(tmp_path, change, message):
    tokens = dict(zip(("semantic", "coarse", "fine"), chunk_tokens())) | change
    with pytest.raises(ValueError, match=message):
        save_voice_npz(tmp_path / "bad.npz", **tokens)
    assert not list(tmp_path.iterdir())
