"""On-disk id sets and maps: exact answers, bounded memory, nothing left behind; the manifest index built on them."""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.idset import DiskIdMap, DiskIdSet
from pipeline.manifest import (
    MANIFEST_NAME,
    PARTS_PREFIX,
    Manifest,
    ManifestEntry,
    ManifestParts,
    index_manifest,
    new_run_id,
    read_manifest,
)
from pipeline.object_store import LocalStore


def sqlite_temp_files() -> list[str]:
    """SQLite temporary files this process holds open (Linux): already deleted, so found by descriptor."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # the descriptor of the listing itself
            pass
    return [link for link in links if "etilqs_" in os.path.basename(link)]  # SQLite's temp file prefix


# --- DiskIdSet --------------------------------------------------------------------


def test_set_adds_finds_and_rejects_duplicates_across_write_batches():
    with DiskIdSet(batch=3) as seen:
        assert [seen.add(i) for i in ["a", "b", "c", "d", "a", "e", "d"]] == [True] * 4 + [False, True, False]
        assert "a" in seen and "e" in seen and "z" not in seen
        assert len(seen) == 5 and bool(seen)
        assert 5 not in seen and None not in seen  # ids are strings: nothing else is ever in the set


def test_set_holds_any_string_exactly():
    odd = ["", " ", "日本/章 1", "caf\udce9", "a\x00b", "line\nbreak", "A", "a", "1", "01"]
    with DiskIdSet(batch=2) as seen:
        assert all(seen.add(i) for i in odd)
        assert all(i in seen for i in odd)
        assert not any(seen.add(i) for i in odd)
        assert "caf\xe9" not in seen and "a\x00" not in seen and "b" not in seen


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=6), max_size=60), st.lists(st.text(max_size=6), max_size=20))
def test_set_answers_exactly_like_a_python_set(ids, probes):
    model: set[str] = set()
    with DiskIdSet(batch=4) as seen:
        for item_id in ids:
            assert seen.add(item_id) == (item_id not in model)
            model.add(item_id)
        assert all((p in seen) == (p in model) for p in probes + ids)
        assert len(seen) == len(model)


def test_an_empty_set_is_false():
    with DiskIdSet() as seen:
        assert not seen and len(seen) == 0 and "a" not in seen


def test_close_is_idempotent_and_a_closed_set_refuses_use():
    seen = DiskIdSet()
    seen.add("a")
    seen.close()
    seen.close()
    assert seen.closed
    with pytest.raises(ValueError, match="closed"):
        seen.add("b")
    with pytest.raises(ValueError, match="closed"):
        "a" in seen  # noqa: B015


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_a_set_beyond_its_cache_spills_to_a_file_already_deleted_that_close_releases():
    """The spill file is unlinked when opened: even a SIGKILLed job leaves nothing in the temp folder."""
    before = sqlite_temp_files()
    seen = DiskIdSet(cache_kib=64)
    for n in range(20_000):
        seen.add(f"row-{n:07d}")
    assert len(seen) == 20_000
    spilled = [f for f in sqlite_temp_files() if f not in before]
    assert len(spilled) == 1 and spilled[0].endswith("(deleted)")
    assert all(seen.add(f"row-{n:07d}") is False for n in range(0, 20_000, 97))
    seen.close()
    assert sqlite_temp_files() == before

    forgotten = DiskIdSet(cache_kib=64)  # never closed: garbage collection releases it
    for n in range(20_000):
        forgotten.add(f"row-{n:07d}")
    del forgotten
    gc.collect()
    assert sqlite_temp_files() == before


def test_memory_stays_flat_while_the_set_grows():
    """50 000 ids: a Python set of them takes ~4.5 MB; the disk set keeps only its write batch in Python memory.

    SQLite's own page cache (``CACHE_KIB``) is allocated outside Python's allocator
    and is bounded by its own setting.
    """
    with DiskIdSet() as seen:
        tracemalloc.start()
        try:
            for n in range(50_000):
                seen.add(f"row-{n:07d}")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1536 << 10
        assert len(seen) == 50_000 and "row-0049999" in seen and "row-0050000" not in seen


# --- DiskIdMap --------------------------------------------------------------------


def test_map_last_value_wins_and_keeps_the_first_place():
    with DiskIdMap(batch=2) as entries:
        for key, value in [("b", "1"), ("a", "2"), ("c", "3"), ("b", "4"), ("d", "5"), ("a", "6")]:
            entries[key] = value
        assert entries.get("b") == "4" and entries["a"] == "6" and entries.get("z") is None
        assert entries.get("z", "none") == "none" and "c" in entries and "z" not in entries
        assert list(entries.items()) == [("b", "4"), ("a", "6"), ("c", "3"), ("d", "5")]
        assert len(entries) == 4
        entries["e"] = "é \udcff"
        assert len(entries) == 5 and entries["e"] == "é \udcff"
        with pytest.raises(KeyError):
            entries["nope"]


# --- the manifest index -----------------------------------------------------------

OK = ManifestEntry(id="a", status="ok", uri="file:///out/a.wav", duration_s=12.5, bytes=100)
FAILED = ManifestEntry(id="b", status="failed", error="voice: bad voice")


def test_manifest_index_holds_what_read_returns(tmp_path):
    with Manifest(tmp_path) as manifest:
        for entry in (OK, FAILED, ManifestEntry(id="b", status="ok", bytes=7), ManifestEntry(id="日本/章 1", status="ok")):
            manifest.append(entry)
    with open(tmp_path / MANIFEST_NAME, "a", encoding="utf-8") as file:
        file.write('{"id": "c", "status": "o')  # the torn last line of a killed run
    with Manifest.index(tmp_path) as index:
        read = Manifest.read(tmp_path)
        assert len(index) == len(read) == 3 and "c" not in index
        assert all(index.get(item_id) == entry for item_id, entry in read.items())
        assert index.get("b").status == "ok" and index.get("missing") is None
        assert [e.id for e in index.entries()] == ["a", "b", "日本/章 1"]


def test_manifest_index_of_no_manifest_is_empty(tmp_path):
    with Manifest.index(tmp_path / "nowhere") as index:
        assert not index and index.get("a") is None


def test_a_corrupt_manifest_raises(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(OK.model_dump_json() + "\nnot json\n")
    with pytest.raises(ValueError, match=f"{MANIFEST_NAME}:2"):
        Manifest.index(tmp_path)


def test_object_store_manifest_merge_streams_through_the_index(tmp_path):
    """Parts of two runs merge into one line per id, first-seen order, last line winning."""
    store = LocalStore(tmp_path / "out")
    first = ManifestParts(store, run_id=new_run_id())
    for n in range(5):
        first.append(ManifestEntry(id=f"item-{n}", status="failed", error="oom"))
    first.close()
    second = ManifestParts(store, run_id=new_run_id())
    second.append(ManifestEntry(id="item-3", status="ok", bytes=3))
    second.append(ManifestEntry(id="new", status="ok"))
    second.close()
    lines = store.get_bytes(MANIFEST_NAME).decode().splitlines()
    merged = [ManifestEntry.model_validate_json(line) for line in lines]
    assert [e.id for e in merged] == ["item-0", "item-1", "item-2", "item-3", "item-4", "new"]
    assert merged[3].status == "ok" and merged[3].bytes == 3
    assert list(store.list_keys(PARTS_PREFIX)) == []
    with index_manifest(store) as index:
        assert {e.id: e for e in index.entries()} == read_manifest(store)


def test_object_store_manifest_is_read_line_by_line_where_the_store_can_stream(tmp_path):
    class StreamingStore(LocalStore):
        streamed: list[str] = []

        def get_bytes(self, key):
            raise AssertionError("read whole")

        def iter_lines(self, key):
            self.streamed.append(key)
            with open(self._path(key), "rb") as file:
                yield from file

    store = StreamingStore(tmp_path)
    store.put_bytes(MANIFEST_NAME, (OK.model_dump_json() + "\n").encode())
    part = f"{PARTS_PREFIX}20240501T120000-1a2b3c4d-000000.jsonl"
    store.put_bytes(part, (FAILED.model_dump_json() + "\n").encode())
    with index_manifest(store) as index:
        assert index.get("a") == OK and index.get("b") == FAILED
    assert store.streamed == [MANIFEST_NAME, part]
