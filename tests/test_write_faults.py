"""A storage fault fails its item, not the job; a manifest that cannot be written stops the job.

Real jobs through real Ray actors, writing to a real folder and a real S3
server: ids whose objects collide with another item's (``x`` and ``x.wav/y``),
names too long for the file system or for S3, metadata that cannot be written
as JSON. A full disk under the manifest is the kernel's own ``/dev/full``.
"""

from __future__ import annotations

import json
import os

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.datasets import iter_dataset_items
from pipeline.job import NarrationJob
from pipeline.manifest import Manifest, ManifestEntry, ManifestError
from pipeline.object_store import open_storage
from pipeline.storage import MANIFEST_NAME, item_key
from tests.test_dataset_jobs import GOOD, _job_config, _jsonl

LONG_ID = "/".join(["s" * 200] * 25)  # every segment fits a file name, the path does not
DEEP = {"a": None}
for _ in range(300):
    DEEP = {"a": DEEP}

# Locally the file x.wav and the folder x.wav/ cannot both exist: whichever item of a pair is
# written second fails (items finish in any order). On S3 both are fine.
COLLIDING = [("x", "x.wav/y"), ("z.wav/w", "z")]
COLLISION_REASONS = ("File exists", "Not a directory", "Is a directory")
ROWS = [
    GOOD[0],
    *({"id": item_id, "text": f"Item {item_id}."} for pair in COLLIDING for item_id in pair),
    {"id": LONG_ID, "text": "A very long id."},
    {"id": "deep", "text": "Deep metadata.", "meta": DEEP},
    GOOD[1],
]
# Metadata too deep for JSON fails when it is written, or earlier where the reader checks
# nesting against limits.max_metadata_depth: either way, that row alone.
TOO_DEEP = ("metadata: cannot be written as JSON", "nests deeper than")
FAILS = {
    "local": {LONG_ID: ("File name too long",), "deep": TOO_DEEP},
    "s3": {LONG_ID: ("over S3's 1024",), "deep": TOO_DEEP},
}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_each_bad_row_fails_alone_with_one_line_and_the_job_goes_on(ray_session, tiny_model_dir, tmp_path, capsys, request, where):
    subtitles = {"output": {"format": "wav", "subtitles": True}}
    if where == "s3":
        s3 = request.getfixturevalue("s3_env")
        output = f"s3://{s3.bucket}/faults/{tmp_path.name}"
        config = _job_config(tmp_path, tiny_model_dir, s3={"endpoint_url": s3.endpoint_url}, **subtitles)
    else:
        output = str(tmp_path / "out")
        config = _job_config(tmp_path, tiny_model_dir, **subtitles)
    source = _jsonl(tmp_path / "rows.jsonl", ROWS)

    assert main(["run", "--config", config, "--input", source, "--output", output, "--quiet"]) == 1
    captured = capsys.readouterr()
    store = open_storage(output, load_config(config).s3)
    records = {r["id"]: r for r in map(json.loads, store.get_bytes(MANIFEST_NAME).decode().splitlines())}
    assert set(records) == {r["id"] for r in ROWS}  # one record per row
    failing = dict(FAILS[where])
    if where == "local":
        for pair in COLLIDING:
            [second] = [item_id for item_id in pair if records[item_id]["status"] == "failed"]
            failing[second] = (f"storage: cannot write {item_key(second)}.wav in ",)
    assert f"{len(ROWS) - len(failing)} ok, {len(failing)} failed" in captured.out
    for item_id, record in records.items():
        key = item_key(item_id)
        if item_id not in failing:
            assert record["status"] == "ok", record
            assert store.exists(f"{key}.wav") and store.exists(f"{key}.json")
            continue
        reason = record["error"]
        assert record["status"] == "failed" and any(f in reason for f in failing[item_id]) and "\n" not in reason
        assert "/" not in item_id or item_id == LONG_ID or any(r in reason for r in COLLISION_REASONS)
        assert f"FAILED  {item_id}: {reason}" in captured.err
        assert len(reason) < 400  # the 5,000-character key is shortened in the message
        for suffix in (".wav", ".json", ".srt", ".vtt"):  # nothing half-written under a final name
            assert not store.exists(f"{key}{suffix}")
    if where == "local":
        assert not list((tmp_path / "out").rglob("*.tmp"))


def test_a_manifest_that_cannot_be_written_stops_the_job_and_the_rerun_loses_nothing(ray_session, tiny_model_dir, tmp_path):
    """The disk fills under the manifest (its descriptor now writes to /dev/full, which answers every
    write with ENOSPC): the first record fails, the job stops with one line instead of narrating on.
    The rerun finishes every item, each recorded once."""
    rows = [dict(r, id=f"m{n}") for n, r in enumerate(GOOD[:6])]
    source = _jsonl(tmp_path / "rows.jsonl", rows)
    config = load_config(_job_config(tmp_path, tiny_model_dir))
    out = tmp_path / "out"
    job = NarrationJob(config, str(out), quiet=True)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, job.ledger.manifest._fd)
    os.close(full)
    with pytest.raises(ManifestError) as stopped:
        job.run(iter_dataset_items(source))
    message = str(stopped.value)
    assert message == f"cannot write the manifest {out / MANIFEST_NAME}: No space left on device"
    assert job.progress.summary.ok == 0  # nothing was counted as done without its record
    assert (out / MANIFEST_NAME).read_bytes() == b""

    summary = NarrationJob(config, str(out), quiet=True).run(iter_dataset_items(source))
    assert summary.failed == 0 and summary.ok + summary.skipped == len(rows)
    records = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in rows)


def test_a_failed_manifest_line_leaves_nothing_to_be_written_later(tmp_path):
    manifest = Manifest(tmp_path)
    manifest.append(ManifestEntry(id="a", status="ok"))
    saved = os.dup(manifest._fd)
    full = os.open("/dev/full", os.O_WRONLY)
    os.dup2(full, manifest._fd)
    os.close(full)
    with pytest.raises(ManifestError, match="No space left on device"):
        manifest.append(ManifestEntry(id="b", status="ok"))
    os.dup2(saved, manifest._fd)  # space again: the next line goes after "a", and "b" never appears
    os.close(saved)
    manifest.append(ManifestEntry(id="c", status="ok"))
    manifest.close()
    assert [e.id for e in Manifest.iter_entries(tmp_path)] == ["a", "c"]
