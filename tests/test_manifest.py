"""Manifest: durable appends, last line per id wins, torn lines from a crash are harmless."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pipeline.manifest import MANIFEST_NAME, Manifest, ManifestEntry

OK = ManifestEntry(id="a", status="ok", uri="file:///out/a.wav", duration_s=12.5)
FAILED = ManifestEntry(id="b", status="failed", error="VoiceError: bad voice")


def test_append_and_read(tmp_path):
    with Manifest(tmp_path) as manifest:
        manifest.append(OK)
        manifest.append(FAILED)
    lines = (tmp_path / MANIFEST_NAME).read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert Manifest.read(tmp_path) == {"a": OK, "b": FAILED}


def test_lines_are_on_disk_before_close(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.append(OK)
    assert Manifest.read(tmp_path) == {"a": OK}
    manifest.close()


def test_last_line_for_an_id_wins_across_runs(tmp_path):
    with Manifest(tmp_path) as manifest:
        manifest.append(ManifestEntry(id="b", status="failed", error="oom"))
    with Manifest(tmp_path) as manifest:  # a rerun retries b
        manifest.append(ManifestEntry(id="b", status="ok", uri="file:///b.wav", duration_s=1.0))
    assert Manifest.read(tmp_path)["b"].status == "ok"


def test_missing_manifest_reads_empty(tmp_path):
    assert Manifest.read(tmp_path / "nowhere") == {}


def test_torn_last_line_is_ignored_then_cut_before_appending(tmp_path):
    with Manifest(tmp_path) as manifest:
        manifest.append(OK)
    path = tmp_path / MANIFEST_NAME
    with open(path, "a", encoding="utf-8") as file:
        file.write('{"id": "b", "status": "o')  # killed mid-write
    assert Manifest.read(tmp_path) == {"a": OK}
    with Manifest(tmp_path) as manifest:
        manifest.append(FAILED)
    assert Manifest.read(tmp_path) == {"a": OK, "b": FAILED}
    assert path.read_text(encoding="utf-8").count("\n") == 2


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / MANIFEST_NAME
    path.write_text(OK.model_dump_json(), encoding="utf-8")
    assert Manifest.read(tmp_path) == {"a": OK}
    with Manifest(tmp_path) as manifest:
        manifest.append(FAILED)
    assert Manifest.read(tmp_path) == {"a": OK, "b": FAILED}


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / MANIFEST_NAME
    path.write_text(OK.model_dump_json() + "\nnot json\n" + FAILED.model_dump_json() + "\n")
    with pytest.raises(ValueError, match=f"{MANIFEST_NAME}:2"):
        Manifest.read(tmp_path)


def test_non_ascii_ids_and_errors(tmp_path):
    entry = ManifestEntry(id="日本/章 1", status="failed", error="line one\nline two")
    with Manifest(tmp_path) as manifest:
        manifest.append(entry)
    assert Manifest.read(tmp_path) == {entry.id: entry}


def test_entries_are_validated():
    with pytest.raises(ValidationError):
        ManifestEntry(id="a", status="done")
    with pytest.raises(ValidationError):
        ManifestEntry(id="a", status="ok", extra=1)


def _append_many(directory: str, writer: int, count: int) -> None:
    with Manifest(directory) as manifest:
        for n in range(count):
            manifest.append(ManifestEntry(id=f"w{writer}-{n}", status="ok", uri=f"file:///x/{writer}/{n}", duration_s=float(n)))


def test_concurrent_writer_processes_never_tear_or_lose_lines(tmp_path):
    """Several jobs appending to one local manifest at once: every line intact, none lost."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(tmp_path), w, 300)) for w in range(4)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=120)
        assert process.exitcode == 0
    entries = Manifest.read(tmp_path)
    assert len(entries) == 4 * 300
    assert all(entries[f"w{w}-{n}"].duration_s == n for w in range(4) for n in range(300))


def test_manifest_parts_of_concurrent_runs_on_object_storage_all_survive(tmp_path):
    """On object storage each run writes its own part objects; merging keeps every run's lines."""
    from pipeline.manifest import ManifestParts, new_run_id, read_manifest
    from pipeline.object_store import LocalStore

    store = LocalStore(tmp_path)
    runs = [ManifestParts(store, run_id=new_run_id()) for r in range(3)]
    for n in range(450):  # interleaved, and more than one part object per run
        runs[n % 3].append(ManifestEntry(id=f"item-{n}", status="ok"))
    runs[0].close()  # one run finishes while the others still write
    crashed = runs[2]
    crashed.flush()  # this run's process dies after a flush: its parts stay behind
    runs[1].append(ManifestEntry(id="late", status="failed", error="text: empty"))
    runs[1].close()
    merged = read_manifest(store)
    assert set(merged) == {f"item-{n}" for n in range(450)} | {"late"}
    assert merged["late"].status == "failed"
    assert store.exists("manifest.jsonl")
