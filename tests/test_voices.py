"""Voice prompts: Suno's real presets load; every malformed or hostile file is refused."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from pipeline.config import LimitsConfig
from workers.records import VoicePrompt
from pipeline.voices import VoiceError, list_voices, load_item_voice, load_voice
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


# --- bounds: sizes are checked before anything is inflated or allocated ------------


def npy_header(shape, dtype="<i8") -> bytes:
    """The bytes of a .npy header describing ``shape``, as np.save writes it."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def zip_members(path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> str:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_a_header_claiming_terabytes_fails_in_one_line_without_allocating(tmp_path):
    """The 928-byte file of the issue: its semantic_prompt header claims a 7 TiB array."""
    arrays = {f"{name}.npy": npy_bytes(value) for name, value in good_arrays().items()}
    arrays["semantic_prompt.npy"] = npy_header(((7 << 40) // 8,)) + b"\0" * 64
    path = zip_members(tmp_path / "claims.npz", arrays)
    assert (tmp_path / "claims.npz").stat().st_size < 2000
    tracemalloc.start()
    try:
        with pytest.raises(VoiceError) as caught:
            load_voice(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "\n" not in message and "semantic_prompt: unreadable" in message and "holds 64" in message
    assert peak < 1 << 20


def test_a_small_file_that_inflates_past_the_limit_is_refused_before_inflating(tmp_path):
    """A well-formed 60 MB array of zeros deflates to ~60 KB; it is refused on its declared size."""
    frames = 60 * (1 << 20) // (8 * 8)
    zeros = np.zeros((8, frames), np.int64)
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("semantic_prompt.npy", npy_bytes(np.zeros(frames, np.int64)))
        archive.writestr("coarse_prompt.npy", npy_bytes(zeros[:2]))
        archive.writestr("fine_prompt.npy", npy_bytes(zeros))
    del zeros
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(VoiceError, match=r"file: inflates to more than limits\.max_voice_bytes \(8388608 bytes\)"):
            load_voice(str(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # A job that means it can raise the limit, with units.
    voice = load_voice(str(path), limits=LimitsConfig(max_voice_bytes="200MiB", max_compression_ratio=10_000))
    assert voice.fine_prompt.shape == (8, frames)


def test_a_member_compressed_far_beyond_text_is_refused_by_ratio(tmp_path):
    frames = 2 * (1 << 20) // (8 * 8)
    arrays = {"semantic_prompt": np.zeros(frames, np.int64), "coarse_prompt": np.zeros((2, frames), np.int64),
              "fine_prompt": np.zeros((8, frames), np.int64)}
    path = zip_members(tmp_path / "zeros.npz", {f"{k}.npy": npy_bytes(v) for k, v in arrays.items()})
    with pytest.raises(VoiceError, match=r"fine_prompt\.npy is compressed \d+:1, over limits\.max_compression_ratio \(100:1\)"):
        load_voice(path)


def test_members_that_inflate_in_one_unbounded_step_are_refused(tmp_path):
    members = {f"{k}.npy": npy_bytes(v) for k, v in good_arrays().items()}
    path = zip_members(tmp_path / "bz2.npz", members, compression=zipfile.ZIP_BZIP2)
    with pytest.raises(VoiceError, match="compression method 12; only stored and deflated"):
        load_voice(path)


def test_a_member_whose_data_is_cut_short_or_longer_than_its_header(tmp_path):
    members = {f"{k}.npy": npy_bytes(v) for k, v in good_arrays().items()}
    short = dict(members, **{"coarse_prompt.npy": members["coarse_prompt.npy"][:-8]})
    with pytest.raises(VoiceError, match="coarse_prompt: unreadable.*describes 160 bytes of data, the file holds 152"):
        load_voice(zip_members(tmp_path / "short.npz", short))
    long = dict(members, **{"coarse_prompt.npy": members["coarse_prompt.npy"] + b"\0" * 8})
    with pytest.raises(VoiceError, match="coarse_prompt: unreadable"):
        load_voice(zip_members(tmp_path / "long.npz", long))


def test_compressed_and_fortran_ordered_voices_load_like_np_load(tmp_path):
    arrays = good_arrays()
    arrays["fine_prompt"] = np.asfortranarray(arrays["fine_prompt"]).astype(">u2")
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, **arrays)
    voice = load_voice(str(path))
    for name, value in arrays.items():
        np.testing.assert_array_equal(getattr(voice, name), value)


# --- an item's own voice: presets and voices_dir only, unless the job allows paths ---


@pytest.fixture
def voice_folders(tmp_path):
    """A voices_dir with one good voice and a symlink out of it, and files beside it."""
    voices = tmp_path / "voices"
    (voices / "cast").mkdir(parents=True)
    save(voices / "cast", "narrator.npz", **good_arrays())
    outside = tmp_path / "private"
    outside.mkdir()
    save(outside, "secret.npz", **good_arrays())
    (outside / "notes.npz").write_text("not a zip: private notes")
    (voices / "escape.npz").symlink_to(outside / "secret.npz")
    return voices, outside


def test_an_item_voice_is_a_preset_or_a_file_inside_voices_dir(voice_folders):
    voices, _ = voice_folders
    assert load_item_voice("v2/en_speaker_6", voices_dir=voices).name == "v2/en_speaker_6"
    assert load_item_voice("v2/en_speaker_6").name == "v2/en_speaker_6"  # presets need no voices_dir
    voice = load_item_voice("cast/narrator.npz", voices_dir=voices)
    assert voice.name == "cast/narrator.npz" and voice.fine_prompt.shape == (8, 10)
    with pytest.raises(VoiceError, match=r"'cast/nobody\.npz': no such file in voices_dir$"):
        load_item_voice("cast/nobody.npz", voices_dir=voices)


@pytest.mark.parametrize(
    "spec",
    ["../private/secret.npz", "../private/notes.npz", "../private/missing.npz", "cast/../../private/secret.npz",
     "escape.npz", "ABSOLUTE/private/secret.npz", "ABSOLUTE/private/notes.npz", "~/secret.npz", "nul\0.npz"],
)
def test_an_item_voice_outside_voices_dir_is_refused_without_describing_it(voice_folders, spec):
    voices, outside = voice_folders
    spec = spec.replace("ABSOLUTE", str(outside.parent))
    with pytest.raises(VoiceError) as caught:
        load_item_voice(spec, voices_dir=voices)
    # The same words whether the file is there, is a voice, or is something else.
    assert str(caught.value) == f"voice {spec!r}: not allowed: an item's voice file must be a relative path inside voices_dir"


def test_without_voices_dir_an_item_names_presets_only_unless_paths_are_allowed(voice_folders):
    _, outside = voice_folders
    secret, notes = str(outside / "secret.npz"), str(outside / "notes.npz")
    for spec in (secret, notes, "relative.npz"):
        with pytest.raises(VoiceError) as caught:
            load_item_voice(spec)
        assert str(caught.value) == (
            f"voice {spec!r}: an item's voice must be a preset name; "
            "set voices_dir (or allow_voice_paths) to let items name .npz files"
        )
    assert load_item_voice(secret, allow_paths=True).name == secret
    with pytest.raises(VoiceError, match="is not an .npz archive"):  # the job allowed it: details help
        load_item_voice(notes, allow_paths=True)
    assert load_voice(secret).name == secret  # the job's own voice may be any file the user names
