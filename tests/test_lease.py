"""One writer per output: the lease, locally (flock) and on a real S3 server (conditional puts).

The unit tests take leases directly, from threads and from separate processes;
the job tests run two jobs with overlapping inputs on one output, through real
Ray actors, and count every id's records.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest

from pipeline.config import LeaseConfig, load_config
from pipeline.datasets import iter_dataset_items
from pipeline.job import NarrationJob
from pipeline.lease import LEASE_KEY, LeaseHeld, LeaseRecord, take_lease
from pipeline.manifest import new_run_id
from pipeline.object_store import LocalStore, open_storage
from pipeline.storage import MANIFEST_NAME, item_key
from tests.conftest import REPO
from tests.lease_taker import HOLD_S, take_in_process
from tests.test_dataset_jobs import GOOD, _job_config, _jsonl, _run_in_thread

SHORT = LeaseConfig(expiry_s=0.4)  # renewed every 0.1 s
TAKERS = 6


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "out")
    s3 = request.getfixturevalue("s3_env")
    return open_storage(f"s3://{s3.bucket}/leases/{uuid.uuid4().hex[:12]}")


def _record_of(store) -> LeaseRecord:
    return LeaseRecord.model_validate_json(store.get_bytes(LEASE_KEY))


def test_a_second_taker_is_refused_with_the_holder_named_until_release(store):
    first = take_lease(store, new_run_id(), LeaseConfig())
    record = _record_of(store)
    assert (record.host, record.pid, record.run_id) == (socket.gethostname(), os.getpid(), first.record.run_id)
    with pytest.raises(LeaseHeld) as refused:
        take_lease(store, new_run_id(), LeaseConfig())
    message = str(refused.value)
    assert "\n" not in message and "in use by another job" in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}, since {record.started:%Y-%m-%d %H:%M:%S} UTC" in message
    first.release()
    first.release()  # idempotent
    again = take_lease(store, new_run_id(), LeaseConfig())
    again.release()


def test_the_holder_renews_its_record(store):
    lease = take_lease(store, new_run_id(), SHORT)
    try:
        before = _record_of(store).renewed
        time.sleep(4 * SHORT.expiry_s)
        after = _record_of(store)
        assert after.renewed > before and after.started == lease.record.started and lease.held
    finally:
        lease.release()


def test_of_many_simultaneous_takers_exactly_one_wins(store):
    barrier = threading.Barrier(TAKERS)
    outcomes: list[str] = []

    def take():
        barrier.wait()
        try:
            lease = take_lease(store, new_run_id(), LeaseConfig())
        except LeaseHeld:
            outcomes.append("refused")
            return
        outcomes.append("won")
        time.sleep(HOLD_S)  # hold it while the others try
        lease.release()

    threads = [threading.Thread(target=take) for _ in range(TAKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(outcomes) == Counter({"won": 1, "refused": TAKERS - 1})


# --- a holder that is gone -----------------------------------------------------------------------

HOLDER_SCRIPT = """
import sys, time
from pipeline.config import LeaseConfig, S3Config
from pipeline.lease import take_lease
from pipeline.manifest import new_run_id
from pipeline.object_store import open_storage
take_lease(open_storage(sys.argv[1], S3Config()), new_run_id(), LeaseConfig(expiry_s=600))
print("held", flush=True)
time.sleep(600)
"""


def _output_of(store) -> str:
    return str(store.root) if isinstance(store, LocalStore) else f"s3://{store.bucket}/{store.prefix}"


def test_a_killed_holder_is_refused_while_alive_and_taken_over_once_dead(store, caplog):
    """A separate process holds the lease (expiry 10 minutes) and is SIGKILLed: nothing released it,
    yet the next job takes over at once (locally the kernel dropped the lock; on S3 the holder's
    process is gone from this host), with one warning naming it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, _output_of(store)], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=f"pid {holder.pid},"):
            take_lease(store, new_run_id(), LeaseConfig())
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING, logger="pipeline.lease"):
        lease = take_lease(store, new_run_id(), LeaseConfig())
    lease.release()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "taking over the lease" in warnings[0] and f"pid {holder.pid}" in warnings[0]


def test_an_expired_lease_from_another_host_is_taken_over(store, caplog):
    """A holder elsewhere that stopped renewing: refused until its expiry has passed, then taken over."""
    stale = LeaseRecord(
        host="elsewhere.example", pid=1, run_id=new_run_id(), started=_utc_now(), renewed=_utc_now(), expiry_s=1.5
    )
    _plant(store, stale)
    with pytest.raises(LeaseHeld, match="host elsewhere.example, pid 1"):
        take_lease(store, new_run_id(), LeaseConfig())
    time.sleep(2.5)
    with caplog.at_level(logging.WARNING, logger="pipeline.lease"):
        lease = take_lease(store, new_run_id(), LeaseConfig())
    assert _record_of(store).run_id == lease.record.run_id
    lease.release()
    assert any("elsewhere.example" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def _plant(store, record: LeaseRecord) -> None:
    """Writes a lease record as a job on another host would have left it."""
    data = record.model_dump_json().encode()
    if isinstance(store, LocalStore):
        path = store.root / LEASE_KEY
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        store.create(LEASE_KEY, data)


def _utc_now():
    import datetime

    return datetime.datetime.now(datetime.timezone.utc)


def test_a_holder_whose_lease_is_taken_stops(s3_env):
    """On S3 a slow holder can be presumed dead and taken over: its next renewal finds out and it stops,
    and its release leaves the new holder's lease alone."""
    store = open_storage(f"s3://{s3_env.bucket}/leases/{uuid.uuid4().hex[:12]}")
    lost = threading.Event()
    reasons: list[str] = []
    lease = take_lease(store, new_run_id(), SHORT, on_lost=lambda why: (reasons.append(why), lost.set()))
    thief = LeaseRecord(host="thief.example", pid=7, run_id=new_run_id(), started=_utc_now(), renewed=_utc_now(), expiry_s=60)
    current = store.read_tagged(LEASE_KEY)
    store.replace(LEASE_KEY, thief.model_dump_json().encode(), current.etag)
    assert lost.wait(timeout=10) and not lease.held
    assert "taken over by host thief.example, pid 7" in reasons[0]
    lease.release()
    assert _record_of(store).host == "thief.example"


def test_a_local_lease_whose_file_is_removed_is_lost(tmp_path):
    store = LocalStore(tmp_path / "out")
    lost = threading.Event()
    lease = take_lease(store, new_run_id(), SHORT, on_lost=lambda why: lost.set())
    (store.root / LEASE_KEY).unlink()
    assert lost.wait(timeout=10) and not lease.held
    lease.release()


def test_of_many_processes_exactly_one_takes_a_local_lease(tmp_path):
    """flock, not a per-process lock: separate processes, started together, one winner."""
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(TAKERS + 1), context.Queue()
    takers = [context.Process(target=take_in_process, args=(str(tmp_path / "out"), start, results)) for _ in range(TAKERS)]
    for process in takers:
        process.start()
    start.wait(timeout=120)
    outcomes = Counter(results.get(timeout=120) for _ in takers)
    for process in takers:
        process.join(timeout=60)
    assert outcomes == Counter({"won": 1, "refused": TAKERS - 1})


# --- stale temp files ---------------------------------------------------------------------------

def test_a_job_removes_the_temp_files_of_killed_runs_and_only_those(tiny_model_dir, tmp_path):
    """Taking the lease proves no other writer is at work, so every atomic-write temp file is stale."""
    out = tmp_path / "out"
    stale = [out / ".a.wav.0123456789abcdef0123456789abcdef.tmp", out / "book" / ".001.json.fedcba9876543210fedcba9876543210.tmp"]
    kept = [out / "notes.tmp", out / ".hidden", out / ".a.wav.tmp", out / "book" / "001.wav"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    config = load_config(_job_config(tmp_path, tiny_model_dir))
    job = NarrationJob(config, str(out), quiet=True)
    try:
        assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
        with pytest.raises(LeaseHeld):  # a second job on the same output, while this one holds it
            NarrationJob(config, str(out), quiet=True)
    finally:
        job.close()
    NarrationJob(config, str(out), quiet=True).close()  # released: the next job starts


# --- two jobs, one output ------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_jobs_with_overlapping_inputs_narrate_and_record_every_id_once(ray_session, quick_model_dir, tmp_path, request, where):
    """Job B starts while job A is running on the same output, with 8 ids in common: B is refused with
    A named; run again once A is done, B narrates only its own ids. Every id is recorded once."""
    if where == "s3":
        s3 = request.getfixturevalue("s3_env")
        output = f"s3://{s3.bucket}/two-jobs/{tmp_path.name}"
        config = load_config(_job_config(tmp_path, quick_model_dir, s3={"endpoint_url": s3.endpoint_url}))
    else:
        output = str(tmp_path / "out")
        config = load_config(_job_config(tmp_path, quick_model_dir))
    rows = [dict(r, id=f"t{n:02d}") for n, r in enumerate(GOOD + GOOD[:4])]
    rows_a, rows_b = rows[:12], rows[4:]  # 8 in common
    source_a, source_b = _jsonl(tmp_path / "a.jsonl", rows_a), _jsonl(tmp_path / "b.jsonl", rows_b)

    job_a = NarrationJob(config, output, quiet=True)
    thread, result = _run_in_thread(job_a, iter_dataset_items(source_a))
    with pytest.raises(LeaseHeld, match=f"host {socket.gethostname()}, pid {os.getpid()}, since"):
        NarrationJob(config, output, quiet=True)
    thread.join(timeout=300)
    assert (result["summary"].ok, result["summary"].failed) == (12, 0)

    summary_b = NarrationJob(config, output, quiet=True).run(iter_dataset_items(source_b))
    assert (summary_b.ok, summary_b.skipped, summary_b.failed) == (4, 8, 0)
    store = open_storage(output, config.s3)
    records = [json.loads(line) for line in store.get_bytes(MANIFEST_NAME).decode().splitlines()]
    assert Counter(r["id"] for r in records) == Counter({r["id"]: 1 for r in rows})
    assert all(r["status"] == "ok" for r in records)
    assert all(store.exists(f"{item_key(r['id'])}.wav") for r in rows)
    assert not store.exists(LEASE_KEY) or not store.get_bytes(LEASE_KEY)  # released at the end
