"""One job split across drivers by input shard (``--shard I/N``).

Unit level: the hash is stable and spreads ids evenly; bad values are one-line errors.
Storage level, locally and on a real S3 server: leases of one output per shard (same
shard excluded, different shards together, overlapping ones refused) and the shards'
manifest parts merged into one manifest. Job level, through real Ray actors: three
shard jobs make the very objects of one unsharded job, a rerun of a shard redoes
nothing, and two shard drivers (separate command processes) share an output at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest

from pipeline.config import LeaseConfig, load_config
from pipeline.datasets import iter_dataset_items
from pipeline.job import NarrationJob
from pipeline.scheduler import StagePipeline
from pipeline.lease import LEASE_KEY, LeaseHeld, lease_key, take_lease
from pipeline.manifest import (
    MANIFEST_NAME, PARTS_PREFIX, Manifest, ManifestEntry, ManifestParts, index_manifest, new_run_id, part_key, part_keys,
    read_manifest,
)
from pipeline.object_store import LocalStore, open_storage
from pipeline.shards import Shard, ShardError, stable_hash
from pipeline.storage import SHARED_TEMP_STALE_S, item_key
from tests.conftest import REPO
from tests.test_cli import _env, _lines, _probe
from tests.test_dataset_jobs import _job_config, _jsonl

# --- the shard model ------------------------------------------------------------------------------


def test_the_hash_is_the_first_8_bytes_of_sha256_of_the_utf8_id():
    for item_id in ("row-000", "café", "book/001", ""):
        assert stable_hash(item_id) == int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big")
    assert stable_hash("row-000") == 0xad869a7b691c1830  # fixed for good: changing it would move items between shards


def test_the_hash_is_the_same_in_another_process_whatever_its_hash_seed():
    ids = [f"id-{n}" for n in range(50)] + ["é/ü", "manifest.jsonl"]
    script = "import json,sys; from pipeline.shards import stable_hash; print(json.dumps([stable_hash(i) for i in json.load(sys.stdin)]))"
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(ids), capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}, check=True,
    )
    assert json.loads(result.stdout) == [stable_hash(i) for i in ids]


@pytest.mark.parametrize("count", [2, 3, 8])
def test_every_id_is_in_exactly_one_shard_and_the_shards_are_even(count):
    ids = [f"row-{n:06d}" for n in range(12_000)]
    shards = [Shard(i, count) for i in range(count)]
    holders = Counter(sum(s.holds(i) for s in shards) for i in ids)
    assert holders == Counter({1: len(ids)})
    sizes = [sum(s.holds(i) for i in ids) for s in shards]
    assert all(abs(size - len(ids) / count) < 0.06 * len(ids) / count for size in sizes), sizes


@pytest.mark.parametrize("text, shard", [("0/1", Shard(0, 1)), ("2/3", Shard(2, 3)), (" 7/8 ", Shard(7, 8))])
def test_shard_values_parse(text, shard):
    assert Shard.parse(text) == shard and str(shard) == text.strip()


@pytest.mark.parametrize("text", ["3/3", "x", "0/0", "-1/2", "1/", "/2", "1/2/3", "01/2", "1.0/2", "", "1 / 2"])
def test_bad_shard_values_are_one_line_naming_the_option(text):
    with pytest.raises(ShardError) as refused:
        Shard.parse(text)
    message = str(refused.value)
    assert message.startswith("--shard: ") and "\n" not in message


@pytest.mark.parametrize("value", ["3/3", "x", "0/0"])
def test_a_bad_shard_exits_2_with_one_line_before_anything_heavy(tmp_path, value):
    source = _jsonl(tmp_path / "rows.jsonl", [{"id": "a", "text": "Hello."}])
    result, report = _probe(
        tmp_path, "run", "--config", str(REPO / "configs" / "tiny.yaml"), "--input", source,
        "--output", str(tmp_path / "o"), "--shard", value,
    )
    assert result.returncode == 2 and result.stdout == ""
    [line] = _lines(result.stderr)
    assert line.startswith("bark-pipeline: --shard: ")
    assert report == {"heavy": [], "ray_started": False}
    assert not (tmp_path / "o").exists()


# --- leases and manifest parts, locally and on S3 ----------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "out")
    s3 = request.getfixturevalue("s3_env")
    return open_storage(f"s3://{s3.bucket}/shards/{uuid.uuid4().hex[:12]}")


def _take(store, shard):
    return take_lease(store, new_run_id(), LeaseConfig(), shard=shard)


def test_one_driver_per_shard_and_the_shards_together(store):
    first, second = _take(store, Shard(0, 3)), _take(store, Shard(1, 3))  # different shards share the output
    try:
        assert first.key == lease_key(Shard(0, 3)) != second.key
        with pytest.raises(LeaseHeld, match=r"in use by another job \(.*shard 0/3"):
            _take(store, Shard(0, 3))
        with pytest.raises(LeaseHeld, match="shard [01]/3"):  # an unsharded job writes every item
            _take(store, None)
        with pytest.raises(LeaseHeld, match="shard [01]/3"):  # shard 0/2 holds ids of 0/3 and 1/3
            _take(store, Shard(0, 2))
        third = _take(store, Shard(2, 3))
        third.release()
    finally:
        first.release()
        second.release()
    whole = _take(store, None)  # every shard released: the output is free again
    try:
        with pytest.raises(LeaseHeld, match="since"):  # and an unsharded holder keeps every shard out
            _take(store, Shard(1, 3))
    finally:
        whole.release()
    again = _take(store, Shard(1, 3))
    again.release()
    assert not store.exists(LEASE_KEY) or not store.get_bytes(LEASE_KEY)


def _writer(store, shard, lease):
    run_id = new_run_id()
    if isinstance(store, LocalStore):
        return Manifest(store.root, run_id=run_id, shard=shard)
    return ManifestParts(store, run_id=run_id, sole_writer=lambda: lease.held, shard=shard)


def _ok(item_id: str) -> ManifestEntry:
    return ManifestEntry(id=item_id, status="ok", uri=f"file:///{item_id}.wav", duration_s=1.0)


def test_each_shard_records_in_its_own_part_and_the_merge_keeps_every_record(store):
    """A killed unsharded run left a part (a and b failed). Shards 0/2 and 1/2 run together: each reads
    every record, writes its own part; the first to end merges all, deletes its own part and the dead
    run's, and keeps the other live shard's; the last leaves one manifest, one line per id."""
    stale = part_key("20200101T000000-00000000", None, 0)
    store.put_bytes(stale, b"".join(
        (ManifestEntry(id=i, status="failed", error="killed").model_dump_json() + "\n").encode() for i in ("a", "b")
    ))
    leases = {i: _take(store, Shard(i, 2)) for i in (0, 1)}
    try:
        with index_manifest(store, shard=Shard(1, 2)) as index:
            assert index.get("b").status == "failed"
        writers = {i: _writer(store, Shard(i, 2), leases[i]) for i in (0, 1)}
        writers[0].append(_ok("a"))
        writers[1].append(_ok("b"))
        if isinstance(writers[1], ManifestParts):
            writers[1].flush()
        writers[0].close()
        remaining = list(part_keys(store))
        assert len(remaining) == 1 and ".1-of-2-" in remaining[0]  # the live shard's part stays
        assert {i: e.status for i, e in read_manifest(store).items()} == {"a": "ok", "b": "ok"}
        writers[1].append(_ok("c"))
        writers[1].close()
    finally:
        for lease in leases.values():
            lease.release()
    assert list(part_keys(store)) == []
    lines = [json.loads(line) for line in store.get_bytes(MANIFEST_NAME).decode().splitlines()]
    assert sorted(line["id"] for line in lines) == ["a", "b", "c"] and all(line["status"] == "ok" for line in lines)
    if isinstance(store, LocalStore):
        assert set(Manifest.read(store.root)) == {"a", "b", "c"}


def test_an_unsharded_local_job_folds_the_shards_parts_in_before_it_appends(tmp_path):
    root = tmp_path / "out"
    lease = take_lease(LocalStore(root), new_run_id(), LeaseConfig(), shard=Shard(0, 2))
    shard_writer = Manifest(root, run_id=new_run_id(), shard=Shard(0, 2))
    shard_writer.append(ManifestEntry(id="a", status="failed", error="oom"))
    shard_writer._fd and os.close(shard_writer._fd)  # killed: no merge
    shard_writer._fd = None
    lease.release()
    with Manifest(root) as manifest:  # folds the killed shard's part in, then appends after it
        assert list(part_keys(LocalStore(root))) == []
        manifest.append(_ok("a"))
    assert Manifest.read(root)["a"].status == "ok"


# --- temp files ----------------------------------------------------------------------------------


def test_a_shard_driver_removes_only_stale_temp_files(tiny_model_dir, tmp_path):
    """Another shard's driver may be writing: its fresh temp files stay, an hour-old one is a killed run's."""
    out = tmp_path / "out"
    live = out / ".a.wav.0123456789abcdef0123456789abcdef.tmp"
    stale = out / "book" / ".001.json.fedcba9876543210fedcba9876543210.tmp"
    for path in (live, stale):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    old = time.time() - SHARED_TEMP_STALE_S - 60
    os.utime(stale, (old, old))
    config = load_config(_job_config(tmp_path, tiny_model_dir))
    NarrationJob(config, str(out), quiet=True, shard=Shard(0, 2)).close()
    assert live.exists() and not stale.exists()
    NarrationJob(config, str(out), quiet=True).close()  # unsharded: the only writer, every temp file goes
    assert not live.exists()


def test_unreadable_rows_of_other_shards_are_not_failed_counted_or_recorded(tiny_model_dir, tmp_path):
    """Rows without text are ItemErrors with ids: only the driver's own shard records them (as failed)."""
    ids = [f"bad-{n}" for n in range(12)]
    mine = [i for i in ids if Shard(0, 2).holds(i)]
    assert 0 < len(mine) < len(ids)
    source = _jsonl(tmp_path / "rows.jsonl", [{"id": i} for i in ids])
    config = load_config(_job_config(tmp_path, tiny_model_dir))
    out = tmp_path / "out"

    def no_ray():
        raise AssertionError("nothing needed narrating: Ray must not start")

    job = NarrationJob(config, str(out), quiet=True, shard=Shard(0, 2), start_ray=no_ray)
    summary = job.run(iter_dataset_items(source))
    assert (summary.ok, summary.failed, summary.skipped) == (0, len(mine), 0)
    assert sorted(Manifest.read(out)) == sorted(mine)
    assert all(e.status == "failed" for e in Manifest.read(out).values())


# --- real jobs -----------------------------------------------------------------------------------

COUNT = 3


def _rows_per_shard(per_shard: int, count: int) -> list[dict]:
    """Short rows, ``per_shard`` in each shard, interleaved."""
    picked: dict[int, list[str]] = {i: [] for i in range(count)}
    n = 0
    while any(len(ids) < per_shard for ids in picked.values()):
        item_id = f"row-{n:03d}"
        ids = picked[stable_hash(item_id) % count]
        if len(ids) < per_shard:
            ids.append(item_id)
        n += 1
    ordered = sorted(sum(picked.values(), []))
    return [{"id": item_id, "text": f"Number {n} is here."} for n, item_id in enumerate(ordered)]


def _digests(root, ids) -> dict[str, str]:
    return {i: hashlib.sha256((root / f"{item_key(i)}.wav").read_bytes()).hexdigest() for i in ids}


def _stamps(root) -> dict[str, tuple[int, int]]:
    return {
        str(path.relative_to(root)): ((s := path.stat()).st_ino, s.st_mtime_ns)
        for path in root.rglob("*") if path.is_file() and ".bark" not in path.parts
    }


def test_three_shards_make_the_objects_of_one_job_and_a_rerun_redoes_nothing(ray_session, tiny_model_dir, tmp_path):
    rows = _rows_per_shard(2, COUNT)
    ids = [r["id"] for r in rows]
    source = _jsonl(tmp_path / "rows.jsonl", rows)
    config = load_config(_job_config(tmp_path, tiny_model_dir))
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"

    pipeline = StagePipeline(config)  # the stage actors, loaded once for the four jobs
    try:
        summary = NarrationJob(config, str(whole), quiet=True, pipeline=pipeline).run(iter_dataset_items(source))
        assert (summary.ok, summary.failed) == (len(rows), 0)
        for index in range(COUNT):  # one after another, in this process: the same seeds, the same Ray
            shard = Shard(index, COUNT)
            job = NarrationJob(config, str(sharded), quiet=True, shard=shard, pipeline=pipeline)
            summary = job.run(iter_dataset_items(source))
            assert (summary.ok, summary.failed, summary.skipped) == (2, 0, 0)  # the others' items: not even counted
    finally:
        pipeline.shutdown()

    records = [json.loads(line) for line in (sharded / MANIFEST_NAME).read_text().splitlines()]
    assert Counter(r["id"] for r in records) == Counter(ids) and all(r["status"] == "ok" for r in records)
    assert not (sharded / PARTS_PREFIX).exists() or not any((sharded / PARTS_PREFIX).iterdir())
    assert _digests(sharded, ids) == _digests(whole, ids)  # the very same audio, byte for byte
    whole_records = {r["id"]: r for r in map(json.loads, (whole / MANIFEST_NAME).read_text().splitlines())}
    assert {r["id"]: (r["checksum"], r["fingerprint"]) for r in records} == {
        i: (r["checksum"], r["fingerprint"]) for i, r in whole_records.items()
    }

    before = _stamps(sharded)
    rerun = NarrationJob(config, str(sharded), quiet=True, shard=Shard(1, COUNT)).run(iter_dataset_items(source))
    assert (rerun.ok, rerun.failed, rerun.skipped, rerun.changed) == (0, 0, 2, 0)
    after = _stamps(sharded)
    assert {k: v for k, v in after.items() if k != MANIFEST_NAME} == {k: v for k, v in before.items() if k != MANIFEST_NAME}
    assert sorted(json.loads(line)["id"] for line in (sharded / MANIFEST_NAME).read_text().splitlines()) == sorted(ids)


def test_two_shard_commands_share_one_output_at_the_same_time(quick_model_dir, tmp_path):
    """Two separate driver processes, shards 0/2 and 1/2, started together on one output: both hold
    their leases at once, and the output ends with every id narrated and recorded once."""
    rows = _rows_per_shard(1, 2)
    source = _jsonl(tmp_path / "rows.jsonl", rows)
    config = _job_config(tmp_path, quick_model_dir)
    out = tmp_path / "out"
    drivers = [
        subprocess.Popen(
            [sys.executable, "-m", "pipeline", "run", "--config", config, "--input", source, "--output", str(out),
             "--shard", f"{index}/2", "--quiet"],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for index in range(2)
    ]
    leases = [out / lease_key(Shard(index, 2)) for index in range(2)]
    together = False
    try:
        while any(d.poll() is None for d in drivers):
            together = together or all(p.exists() and p.stat().st_size > 0 for p in leases)
            time.sleep(0.05)
        results = [d.communicate(timeout=30) for d in drivers]
    finally:
        for driver in drivers:
            driver.kill()
    for driver, (stdout, stderr) in zip(drivers, results):
        assert driver.returncode == 0, stderr
        assert stdout.startswith("done: 1 ok, 0 failed, 0 skipped"), stdout
    assert together, "the two drivers never held their leases at the same time"
    records = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert Counter(r["id"] for r in records) == Counter(r["id"] for r in rows)
    assert all((out / f"{item_key(r['id'])}.wav").is_file() for r in rows)
    assert list(part_keys(LocalStore(out))) == []
    assert not [p for p in out.rglob("*.tmp")]
