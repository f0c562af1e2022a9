"""Voice prompts: Suno's real presets load; every malformed or hostile file is refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from workers.records import VoicePrompt
from pipeline.voices import VoiceError, list_voices, load_voice
from transformers.models.bark.generation_configuration_bark import BarkSemanticGenerationConfig
from workers.settings import BarkSettings

N_PRESETS = 271  # the .npz files shipped in bark==0.1.5


def good_arrays(frames: int = 10, dtype=np.int64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "semantic_prompt": rng.integers(0, 10_000, size=frames * 2 // 3).astype(dtype),
        "coarse_prompt": rng.integers(0, 1024, size=(2, frames)).astype(dtype),
        "fine_prompt": rng.integers(0, 1024, size=(8, frames)).astype(dtype),
    }


def save(tmp_path, name="voice.npz", **arrays) -> str:
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_all_presets_are_listed_and_load():
    names = list_voices()
    assert len(names) == N_PRESETS
    assert names == sorted(names)
    assert {"announcer", "en_speaker_0", "de_speaker_3", "v2/en_speaker_6", "v2/zh_speaker_9"} <= set(names)
    for name in names:
        voice = load_voice(name)
        assert isinstance(voice, VoicePrompt) and voice.name == name
        for array in (voice.semantic_prompt, voice.coarse_prompt, voice.fine_prompt):
            assert array.dtype == np.int64 and array.size > 0


def test_preset_arrays_have_bark_shapes():
    voice = load_voice("v2/en_speaker_6")
    assert voice.semantic_prompt.ndim == 1
    assert voice.coarse_prompt.shape[0] == 2 and voice.fine_prompt.shape[0] == 8
    assert voice.coarse_prompt.shape[1] == voice.fine_prompt.shape[1]
    assert np.array_equal(voice.coarse_prompt, voice.fine_prompt[:2])


def test_listing_does_not_import_bark():
    code = "import sys; from pipeline.voices import list_voices, load_voice; " \
           "load_voice(list_voices()[0]); print('bark' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_npz_path_with_uint16_is_cast(tmp_path):
    path = save(tmp_path, **good_arrays(dtype=np.uint16))
    voice = load_voice(path)
    assert voice.name == path and voice.fine_prompt.dtype == np.int64


def test_unknown_preset_suggests_close_names():
    with pytest.raises(VoiceError, match=r"v2/en_speaker_66.*did you mean v2/en_speaker_6"):
        load_voice("v2/en_speaker_66")


@pytest.mark.parametrize("spec", ["../../../etc/passwd", "/etc/passwd", "v2/../announcer", ""])
def test_preset_names_cannot_be_paths(spec):
    with pytest.raises(VoiceError, match="unknown preset"):
        load_voice(spec)


def bad(field, value):
    arrays = good_arrays()
    if value is None:
        del arrays[field]
    else:
        arrays[field] = value
    return arrays


@pytest.mark.parametrize(
    ("arrays", "field", "message"),
    [
        (bad("semantic_prompt", None), "semantic_prompt", "missing"),
        (bad("fine_prompt", None), "fine_prompt", "missing"),
        (bad("semantic_prompt", np.zeros((2, 3), np.int64)), "semantic_prompt", "1-D"),
        (bad("coarse_prompt", np.zeros((3, 10), np.int64)), "coarse_prompt", r"shape \(2, frames\)"),
        (bad("fine_prompt", np.zeros(80, np.int64)), "fine_prompt", r"shape \(8, frames\)"),
        (bad("fine_prompt", np.zeros((8, 9), np.int64)), "fine_prompt", "9 frames"),
        (bad("semantic_prompt", np.zeros(0, np.int64)), "semantic_prompt", "empty"),
        (bad("coarse_prompt", np.zeros((2, 0), np.int64)), "coarse_prompt", "empty"),
        (bad("semantic_prompt", np.array([1, 10_000])), "semantic_prompt", "10000 is out of range"),
        (bad("coarse_prompt", np.full((2, 10), 1024)), "coarse_prompt", "out of range"),
        (bad("fine_prompt", np.full((8, 10), -1)), "fine_prompt", "negative"),
        (bad("semantic_prompt", np.array([1.0, 2.0])), "semantic_prompt", "float64 is not an integer"),
        (bad("coarse_prompt", np.ones((2, 10), bool)), "coarse_prompt", "not an integer"),
        (bad("semantic_prompt", np.array([2**63], np.uint64)), "semantic_prompt", "out of range"),
    ],
)
def test_malformed_voices_name_voice_and_field(tmp_path, arrays, field, message):
    path = save(tmp_path, **arrays)
    with pytest.raises(VoiceError, match=message) as caught:
        load_voice(path)
    text = str(caught.value)
    assert "\n" not in text and repr(path) in text and field in text


def test_vocab_limits_come_from_the_checkpoint_settings(tmp_path):
    path = save(tmp_path, **good_arrays())
    small_semantic = BarkSettings(semantic=BarkSemanticGenerationConfig(semantic_vocab_size=10))
    with pytest.raises(VoiceError, match="semantic_prompt"):
        load_voice(path, small_semantic)
    with pytest.raises(VoiceError, match="coarse_prompt"):
        load_voice(path, BarkSettings(codebook_size=2))


class _Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_object_arrays_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"
    arrays = good_arrays()
    arrays["semantic_prompt"] = np.array([_Payload(str(marker))], dtype=object)
    path = save(tmp_path, **arrays)
    with pytest.raises(VoiceError, match="semantic_prompt: unreadable"):
        load_voice(path)
    assert not marker.exists()


def test_files_that_are_not_npz_archives(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00not a zip at all")
    with pytest.raises(VoiceError, match="file: .* not an .npz archive"):
        load_voice(str(garbage))
    single = tmp_path / "single.npz"
    with open(single, "wb") as file:
        np.save(file, np.zeros(3))
    with pytest.raises(VoiceError, match="one array"):
        load_voice(str(single))
    with pytest.raises(VoiceError, match="cannot read"):
        load_voice(str(tmp_path / "missing.npz"))
