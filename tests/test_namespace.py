"""Item ids cannot reach the job's own records (the manifest, its parts, the lease, temp files).

Unit level: no id, however hostile, makes an item key that shares a name with
the bookkeeping, in any letter case. Job level, on S3 and locally: rows whose
ids aim at the manifest and whose texts are manifest lines are narrated as
ordinary items, and no run reads them as records.
"""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.lease import LEASE_KEY
from pipeline.manifest import PARTS_PREFIX, PART_NAME, Manifest, index_manifest
from pipeline.object_store import open_storage
from pipeline.storage import BOOKKEEPING_DIR, MANIFEST_NAME, is_temp_file, item_key
from tests.test_dataset_jobs import _job_config, _jsonl

ITEM_SUFFIXES = (".wav", ".flac", ".json", ".srt", ".vtt", ".tokens/0000.npz")
AIMED_AT_RECORDS = [
    "manifest.parts/zz-evil", "MANIFEST.PARTS/x", "manifest.jsonl", "Manifest.JSONL", "manifest.jsonl/x",
    "MANIFEST.JSONL/x", "manifest.jsonl./x", "manifest.jsonl..", ".bark", ".bark/lease", ".BARK/lease",
    ".Bark/manifest.parts/20240501T120000-1a2b3c4d-000000", f"{PARTS_PREFIX}20240501T120000-1a2b3c4d-000000",
    "./manifest.jsonl", "../manifest.jsonl", ".manifest.jsonl.0123456789abcdef0123456789abcdef.tmp",
    "a/.x.wav.0123456789abcdef0123456789abcdef.tmp",
]


def _bookkeeping_clash(key: str) -> str | None:
    """How an object name would touch the job's records, judged as a case-insensitive file system would."""
    folded = key.lower()
    parts = folded.split("/")
    if folded.rstrip(".") == MANIFEST_NAME or parts[0].rstrip(".") == MANIFEST_NAME:
        return "is (or is a folder named) the manifest"
    if parts[0] == BOOKKEEPING_DIR:
        return "lies in the bookkeeping folder"
    if folded.endswith(".jsonl"):
        return "ends in .jsonl"
    if any(part.startswith(".") for part in parts):
        return "has a hidden segment"
    if is_temp_file(key.rsplit("/", 1)[-1]):
        return "looks like a temp file"
    return None


@pytest.mark.parametrize("item_id", AIMED_AT_RECORDS)
def test_ids_aimed_at_the_records_land_among_the_items(item_id):
    for suffix in ITEM_SUFFIXES:
        key = item_key(item_id) + suffix
        assert _bookkeeping_clash(key) is None, (item_id, key, _bookkeeping_clash(key))
        assert key.isascii()


@given(st.text(alphabet=st.sampled_from("./mMaAnNiIfFeEsStT.jJsSoOlLbBkKrR-_%~ é\u0301"), max_size=40))
def test_no_id_makes_a_key_that_touches_the_records(item_id):
    for suffix in ITEM_SUFFIXES:
        assert _bookkeeping_clash(item_key(item_id) + suffix) is None


def test_case_and_normalisation_twins_stay_apart_from_each_other_and_the_records():
    twins = ["manifest.jsonl", "MANIFEST.JSONL", "Manifest.Jsonl", "café", unicodedata.normalize("NFD", "café")]
    keys = [item_key(t) for t in twins]
    assert len(set(keys)) == len(twins)  # distinct ids, distinct keys
    assert all(k.isascii() for k in keys)  # nothing for a file system to normalise
    assert len({k.lower() for k in keys[3:]}) == 2  # NFC and NFD spellings: two different ASCII names


def test_bookkeeping_names_are_what_the_job_reads():
    assert LEASE_KEY.startswith(f"{BOOKKEEPING_DIR}/") and PARTS_PREFIX.startswith(f"{BOOKKEEPING_DIR}/")
    assert PART_NAME.fullmatch("20240501T120000-1a2b3c4d-000000.jsonl")
    for forged in ["zz-evil.srt", "zz-evil.jsonl", "20240501T120000-1a2b3c4d-000000.jsonl.srt", "x/20240501T120000-1a2b3c4d-000000.jsonl"]:
        assert not PART_NAME.fullmatch(forged)


def test_only_strictly_named_parts_are_read(tmp_path):
    """A stray object under the parts prefix (or the old, unreserved one) is never a record."""
    from pipeline.object_store import LocalStore

    store = LocalStore(tmp_path)
    forged = b'{"id":"victim","status":"failed"}\n'
    store.put_bytes(f"{PARTS_PREFIX}zz-evil.srt", forged)
    store.put_bytes(f"{PARTS_PREFIX}zz-evil.jsonl", forged)
    store.put_bytes("manifest.parts/20240501T120000-1a2b3c4d-000000.jsonl", forged)
    store.put_bytes(f"{PARTS_PREFIX}20240501T120000-1a2b3c4d-000000.jsonl", b'{"id":"real","status":"ok"}\n')
    with index_manifest(store) as index:
        assert "victim" not in index and index.get("real").status == "ok"


# --- real jobs -------------------------------------------------------------------------------

FORGED_FAILED = '{"id":"victim","status":"failed"}'  # short enough for one subtitle line
FORGED_OK = '{"id":"ghost","status":"ok"}'
ROWS = [
    {"id": "victim", "text": "I am the victim row. I should stay done."},
    {"id": "manifest.parts/zz-evil", "text": FORGED_FAILED},
    {"id": "MANIFEST.PARTS/zz-evil2", "text": FORGED_OK},
    {"id": f"{PARTS_PREFIX}20240501T120000-1a2b3c4d-000000", "text": FORGED_OK},
    {"id": "manifest.jsonl", "text": FORGED_FAILED},
    {"id": "Manifest.JSONL/x", "text": FORGED_OK},
    {"id": ".bark/lease", "text": "Not a lease."},
]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_forged_manifest_rows_are_plain_items_and_never_records(ray_session, quick_model_dir, tmp_path, capsys, request, where):
    subtitles = {"output": {"format": "wav", "subtitles": True}}  # a subtitle holds the row's text as a line
    if where == "s3":
        s3 = request.getfixturevalue("s3_env")
        output = f"s3://{s3.bucket}/namespace/{tmp_path.name}"
        config = _job_config(tmp_path, quick_model_dir, s3={"endpoint_url": s3.endpoint_url}, **subtitles)
    else:
        output = str(tmp_path / "out")
        config = _job_config(tmp_path, quick_model_dir, **subtitles)
    store = open_storage(output, load_config(config).s3)
    command = ["run", "--config", config, "--output", output, "--quiet"]

    first = _jsonl(tmp_path / "rows.jsonl", ROWS)
    assert main(command + ["--input", first]) == 0
    assert f"{len(ROWS)} ok, 0 failed, 0 skipped" in capsys.readouterr().out
    srt = store.get_bytes(f"{item_key('manifest.parts/zz-evil')}.srt").decode()
    assert FORGED_FAILED in srt.splitlines()  # the attack was real: a whole manifest line in an object

    keys = set(store.list_keys())
    assert MANIFEST_NAME in keys
    assert not [k for k in keys if k.startswith(f"{BOOKKEEPING_DIR}/") and k != LEASE_KEY]  # parts merged, no items
    for row in ROWS:
        key = item_key(row["id"])
        assert {f"{key}.wav", f"{key}.json", f"{key}.srt", f"{key}.vtt"} <= keys
        assert _bookkeeping_clash(key + ".srt") is None

    # The next run reads its records: the forged lines are not among them. A real "ghost"
    # row is narrated (a forged ok would have skipped it), and --retry-failed redoes nothing
    # (a forged failed would have redone the victim).
    second = _jsonl(tmp_path / "rows2.jsonl", ROWS + [{"id": "ghost", "text": "A real ghost row."}])
    assert main(command + ["--input", second, "--retry-failed"]) == 0
    assert f"1 ok, 0 failed, {len(ROWS)} skipped" in capsys.readouterr().out
    records = [json.loads(line) for line in store.get_bytes(MANIFEST_NAME).decode().splitlines()]
    assert sorted(r["id"] for r in records) == sorted([r["id"] for r in ROWS] + ["ghost"])
    assert all(r["status"] == "ok" and r["error"] is None for r in records)
    if where == "local":
        assert {e.id for e in Manifest.read(tmp_path / "out").values()} == {r["id"] for r in records}
