"""Object names that cannot escape the output folder or collide; atomic local writes."""

from __future__ import annotations

import os
import random
import string

import pytest

from pipeline.storage import MAX_KEY_CHARS, LocalStorage, atomic_write_bytes, safe_key

NASTY_IDS = [
    "", ".", "..", "../x", "../../etc/passwd", "/abs/path", "a/b", "a\\b", "nul\0byte",
    "x" * 1000, "é", "e\u0301", "日本語", "😀", "%41", "A", "a b", "a~b", ".hidden",
    "-dash", "CON", "\ud800",
]


def test_safe_ids_are_kept_as_they_are():
    for item_id in ["chapter_01", "book-2.part.3", "A", "x" * MAX_KEY_CHARS]:
        assert safe_key(item_id) == item_id


@pytest.mark.parametrize("item_id", NASTY_IDS)
def test_keys_are_flat_safe_file_names(item_id, tmp_path):
    key = safe_key(item_id)
    assert key and key.isascii() and len(key) <= MAX_KEY_CHARS
    assert "/" not in key and "\\" not in key and "\0" not in key
    assert key not in (".", "..") and not key.startswith(".")
    path = tmp_path / key
    path.write_bytes(b"x")  # the filesystem accepts it, inside tmp_path
    assert path.resolve().parent == tmp_path.resolve()


def test_injective_on_nasty_and_random_ids():
    rng = random.Random(0)
    alphabet = string.ascii_letters + string.digits + "._-~%/ \0é日😀"
    ids = set(NASTY_IDS)
    for _ in range(3000):
        ids.add("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
    for _ in range(200):  # long ids that differ only near the end
        ids.add("y" * 300 + str(rng.randint(0, 10**9)))
    keys = {safe_key(i) for i in ids}
    assert len(keys) == len(ids)


def test_similar_ids_do_not_collide():
    assert len({safe_key(i) for i in ["a/b", "a%2Fb", "a_b", "a b", "a%20b", ".a", "%2Ea"]}) == 7
    assert safe_key("x" * 1000) != safe_key("x" * 1001)


def test_local_storage_round_trip(tmp_path):
    storage = LocalStorage(tmp_path / "out")
    key = f"audio/{safe_key('../evil')}.wav"
    assert not storage.exists(key)
    uri = storage.put_bytes(key, b"RIFF")
    assert storage.exists(key)
    assert storage.path_for(key).read_bytes() == b"RIFF"
    assert uri == storage.uri_for(key) and uri.startswith("file://")
    assert storage.path_for(key).is_relative_to(tmp_path / "out")
    assert [p.name for p in (tmp_path / "out" / "audio").iterdir()] == [f"{safe_key('../evil')}.wav"]


@pytest.mark.parametrize("key", ["", "../x", "a/../../x", "/abs", "a//b", "a/./b", "nul\0"])
def test_local_storage_rejects_escaping_keys(key, tmp_path):
    with pytest.raises(ValueError):
        LocalStorage(tmp_path).path_for(key)


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "deep" / "file.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert os.listdir(path.parent) == ["file.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "file.bin"
    atomic_write_bytes(path, b"old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.bin"]
