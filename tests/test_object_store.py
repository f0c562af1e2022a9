"""Object storage against a real S3 server (SeaweedFS on loopback) and a local folder.

The same interface tests run on both backends; S3-only tests cover multipart,
content types, prefixes, error messages without secrets, and a put that rides
out a server restart on boto3's standard retries.
"""

from __future__ import annotations

import pickle
import threading
import time
import uuid

import pytest

from pipeline.object_store import (
    LocalStore,
    ObjectNotFound,
    S3Config,
    S3Storage,
    Storage,
    StorageError,
    open_storage,
)
from pipeline.storage import item_key
from s3_server import free_ports

MIB = 1024 * 1024
LARGE_BYTES = 40 * MIB
OUTAGE_S = 3.0
# Enough tries that the jittered backoff (0.05 s * 2^n, at most 20 s) outlasts stop + 3 s + restart.
OUTAGE_ATTEMPTS = 20
OUTAGE_THREADS = 8  # a writer's threads, and more
FAST_FAIL = {"max_attempts": 2, "connect_timeout_s": 1.0, "read_timeout_s": 2.0}
WRONG_SECRET = "wrong-secret-that-must-never-be-printed"
HOSTILE_IDS = ["../x", "/abs", "", "a\0b", "x" * 5000, "日本語/😀", "..", "a/../../b", "a//b", "CON", "%2E%2E"]
HOSTILE_KEYS = ["", "/abs", "../x", "a/../b", "a//b", "./a", "a/", "a\0b", "a\nb", "."]


def unique_prefix() -> str:
    return f"tests/{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Storage:
    if request.param == "local":
        return LocalStore(tmp_path / "out")
    request.getfixturevalue("s3_env")
    return open_storage(f"s3://{request.getfixturevalue('s3_server').bucket}/{unique_prefix()}")


# --- the interface, on both backends ---------------------------------------------------------


def test_put_get_exists_size_delete(store):
    assert isinstance(store, Storage)
    uri = store.put_bytes("book/001.wav", b"RIFF-audio")
    assert uri == store.uri_for("book/001.wav")
    assert store.exists("book/001.wav") and store.size("book/001.wav") == len(b"RIFF-audio")
    assert store.get_bytes("book/001.wav") == b"RIFF-audio"
    store.put_bytes("book/001.wav", b"new")  # overwrite is whole
    assert store.get_bytes("book/001.wav") == b"new"
    store.delete("book/001.wav")
    store.delete("book/001.wav")  # idempotent
    assert not store.exists("book/001.wav") and store.size("book/001.wav") is None
    with pytest.raises(ObjectNotFound):
        store.get_bytes("book/001.wav")


def test_put_file_and_listing(store, tmp_path):
    source = tmp_path / "source.flac"
    source.write_bytes(b"fLaC" * 1000)
    store.put_file("a/1.flac", source)
    store.put_bytes("a/2.json", b"{}")
    store.put_bytes("b/3.srt", b"1\n")
    store.put_bytes("ab.vtt", b"WEBVTT\n")
    assert list(store.list_keys()) == ["a/1.flac", "a/2.json", "ab.vtt", "b/3.srt"]
    assert list(store.list_keys("a/")) == ["a/1.flac", "a/2.json"]
    assert list(store.list_keys("a")) == ["a/1.flac", "a/2.json", "ab.vtt"]
    assert list(store.list_keys("zzz")) == []
    assert store.get_bytes("a/1.flac") == source.read_bytes()


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_are_refused(store, key):
    with pytest.raises(StorageError):
        store.put_bytes(key, b"x")
    with pytest.raises(StorageError):
        store.uri_for(key)


def test_item_keys_stay_under_the_prefix(store):
    keys = {item_id: item_key(item_id) + ".wav" for item_id in HOSTILE_IDS}
    assert len(set(keys.values())) == len(keys)
    for item_id, key in keys.items():
        store.put_bytes(key, item_id.encode("utf-8", "surrogatepass"))
    assert sorted(store.list_keys()) == sorted(keys.values())
    for item_id, key in keys.items():
        assert store.get_bytes(key) == item_id.encode("utf-8", "surrogatepass")


def test_local_writes_are_atomic_files(tmp_path):
    store = open_storage(str(tmp_path / "out"))
    assert isinstance(store, LocalStore)
    store.put_bytes("x/y.wav", b"data")
    assert (tmp_path / "out" / "x" / "y.wav").read_bytes() == b"data"
    assert [p.name for p in (tmp_path / "out" / "x").iterdir()] == ["y.wav"]  # no temp file left
    assert open_storage((tmp_path / "out").as_uri()).get_bytes("x/y.wav") == b"data"
    assert "local directory" in store.describe()


def test_unsupported_scheme_is_refused():
    with pytest.raises(StorageError, match="unsupported output"):
        open_storage("gs://bucket/x")


# --- S3 only ---------------------------------------------------------------------------------


def test_objects_have_prefix_and_content_types(s3_env):
    store = open_storage(f"s3://{s3_env.bucket}//runs/{uuid.uuid4().hex[:8]}/")
    assert isinstance(store, S3Storage) and not store.prefix.startswith("/") and not store.prefix.endswith("/")
    expected = {
        "a.wav": "audio/wav", "a.flac": "audio/flac", "a.json": "application/json",
        "manifest.jsonl": "application/x-ndjson", "a.srt": "application/x-subrip", "a.vtt": "text/vtt",
        "a.npz": "application/octet-stream", "a.unknown": "application/octet-stream",
    }
    client = s3_env.client()
    for key, content_type in expected.items():
        assert store.put_bytes(key, b"x") == f"s3://{s3_env.bucket}/{store.prefix}/{key}"
        head = client.head_object(Bucket=s3_env.bucket, Key=f"{store.prefix}/{key}")
        assert head["ContentType"] == content_type
    store.put_bytes("custom.bin", b"x", content_type="text/plain")
    assert client.head_object(Bucket=s3_env.bucket, Key=f"{store.prefix}/custom.bin")["ContentType"] == "text/plain"


def test_bad_prefixes_and_buckets_are_refused(s3_env):
    for output in ("s3://", "s3://b", f"s3://{s3_env.bucket}/a/../b", f"s3://{s3_env.bucket}/./a", "s3://bad!bucket/x"):
        with pytest.raises(StorageError):
            open_storage(output)
    with pytest.raises(ValueError, match="credentials"):
        S3Config(endpoint_url="http://key:secret@127.0.0.1:1")
    with pytest.raises(ValueError):
        S3Config(access_key="x")  # credentials are never config fields


def test_large_file_goes_multipart_and_reads_back(s3_env, tmp_path):
    store = S3Storage(s3_env.bucket, unique_prefix(), S3Config())
    data = bytes(range(256)) * (LARGE_BYTES // 256)
    source = tmp_path / "long.wav"
    source.write_bytes(data)
    store.put_file("long.wav", source)
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=store.object_key("long.wav"), PartNumber=1)
    assert head.get("PartsCount", 0) > 1 or "-" in head["ETag"]
    assert head["ContentType"] == "audio/wav"
    assert store.size("long.wav") == LARGE_BYTES
    assert store.get_bytes("long.wav") == data
    store.put_bytes("long2.wav", data)  # bytes above the threshold go multipart too
    assert store.get_bytes("long2.wav") == data


def test_store_pickles_by_settings(s3_env):
    store = S3Storage(s3_env.bucket, unique_prefix(), S3Config())
    store.put_bytes("p.json", b"{}")
    assert pickle.loads(pickle.dumps(store)).get_bytes("p.json") == b"{}"


def assert_one_line_without_secrets(text: str, *secrets: str) -> None:
    assert "\n" not in text
    for secret in secrets:
        assert secret not in text


def test_missing_bucket_is_one_clear_line(s3_env):
    store = S3Storage("no-such-bucket-here", "x", S3Config(**FAST_FAIL))
    with pytest.raises(StorageError) as caught:
        store.check_reachable()
    message = str(caught.value)
    assert "no-such-bucket-here" in message and "does not exist" in message
    assert_one_line_without_secrets(message, s3_env.secret_key)
    with pytest.raises(StorageError) as caught:
        store.put_bytes("a.wav", b"x")
    assert_one_line_without_secrets(str(caught.value), s3_env.secret_key)
    assert_one_line_without_secrets(store.describe() + repr(store), s3_env.secret_key)


def test_unreachable_endpoint_fails_fast(s3_env):
    (closed_port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{closed_port}"
    store = S3Storage(s3_env.bucket, "x", S3Config(endpoint_url=endpoint, **FAST_FAIL))
    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        store.check_reachable()
    assert endpoint in str(caught.value) and "cannot reach" in str(caught.value)
    with pytest.raises(StorageError) as caught:
        store.put_bytes("a.wav", b"x")
    assert endpoint in str(caught.value)
    assert_one_line_without_secrets(str(caught.value), s3_env.secret_key)
    assert time.monotonic() - started < 10


def test_wrong_secret_is_denied_and_never_shown(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    store = S3Storage(s3_env.bucket, unique_prefix(), S3Config(**FAST_FAIL))
    with pytest.raises(StorageError) as caught:
        store.check_reachable()
    assert "denied" in str(caught.value)
    messages = [str(caught.value), store.describe(), repr(store), repr(store.config)]
    for operation in (lambda: store.put_bytes("a.wav", b"x"), lambda: store.get_bytes("a.wav"),
                      lambda: list(store.list_keys()), lambda: store.size("a.wav")):
        with pytest.raises(StorageError) as caught:
            operation()
        messages.append(str(caught.value))
    for message in messages:
        assert_one_line_without_secrets(message, WRONG_SECRET, s3_env.secret_key)


def test_endpoint_and_credentials_come_from_the_environment(s3_env):
    store = open_storage(f"s3://{s3_env.bucket}/env")
    store.check_reachable()
    assert s3_env.endpoint_url in store.describe()
    assert_one_line_without_secrets(store.describe(), s3_env.secret_key)


def test_puts_from_many_threads_ride_out_a_server_restart(s3_env):
    """Last in the file: the shared server goes down for a few seconds while a writer's threads
    put at once (botocore keeps one retry quota per client: shared, it runs dry within a second)."""
    store = S3Storage(s3_env.bucket, unique_prefix(), S3Config(max_attempts=OUTAGE_ATTEMPTS, connect_timeout_s=1.0))
    store.put_bytes("first.wav", b"before")
    s3_env.stop()
    errors: list[Exception] = []

    def put(n: int) -> None:
        try:
            store.put_bytes(f"during-{n}.wav", b"during %d" % n)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    writers = [threading.Thread(target=put, args=(n,)) for n in range(OUTAGE_THREADS)]
    for writer in writers:
        writer.start()
    time.sleep(OUTAGE_S)
    assert all(writer.is_alive() for writer in writers) and not errors, "the puts should still be retrying during the outage"
    s3_env.start()
    for writer in writers:
        writer.join(timeout=60)
    assert not any(writer.is_alive() for writer in writers) and not errors, errors
    assert [store.get_bytes(f"during-{n}.wav") for n in range(OUTAGE_THREADS)] == [b"during %d" % n for n in range(OUTAGE_THREADS)]
    assert store.get_bytes("first.wav") == b"before"


# --- faults on one key, and conditional writes ----------------------------------------------

LONG_KEY = "/".join(["k" * 200] * 25) + ".wav"


def test_local_faults_on_one_key_are_one_line_storage_errors(tmp_path):
    store = LocalStore(tmp_path / "out")
    store.put_bytes("x.wav", b"audio")
    with pytest.raises(StorageError, match=r"^cannot write x\.wav/y\.wav in .*: File exists$"):
        store.put_bytes("x.wav/y.wav", b"other")
    store.put_bytes("z.wav/w.wav", b"audio")
    with pytest.raises(StorageError, match=r"^cannot write z\.wav in .*: Is a directory$"):
        store.put_bytes("z.wav", b"other")
    with pytest.raises(StorageError, match="File name too long") as long:
        store.put_bytes(LONG_KEY, b"x")
    assert len(str(long.value)) < 300 and "\n" not in str(long.value)
    # Names that cannot exist here are simply absent: a resume asks about them too.
    for key in (LONG_KEY, "x.wav/y.wav", "z.wav"):
        assert not store.exists(key) and store.size(key) is None
        with pytest.raises(ObjectNotFound):
            store.get_bytes(key)
    store.delete(LONG_KEY)
    assert store.get_bytes("x.wav") == b"audio" and not list(tmp_path.rglob("*.tmp"))


def test_a_key_over_the_s3_limit_fails_alone_and_is_never_found(s3_env):
    store = open_storage(f"s3://{s3_env.bucket}/{unique_prefix()}")
    with pytest.raises(StorageError, match="over S3's 1024") as too_long:
        store.put_bytes(LONG_KEY, b"x")
    assert len(str(too_long.value)) < 300 and "\n" not in str(too_long.value)
    assert not store.exists(LONG_KEY) and store.size(LONG_KEY) is None
    with pytest.raises(ObjectNotFound):
        store.get_bytes(LONG_KEY)
    store.put_bytes("short.wav", b"fine")  # the store goes on
    assert store.get_bytes("short.wav") == b"fine"


def test_conditional_writes_are_enforced_by_the_server(s3_env):
    """If-None-Match: * and If-Match: <etag>, as the lease uses them (SeaweedFS 4.48 enforces both)."""
    from pipeline.object_store import PreconditionFailed

    store = open_storage(f"s3://{s3_env.bucket}/{unique_prefix()}")
    etag = store.create("lock", b"one")
    with pytest.raises(PreconditionFailed):
        store.create("lock", b"two")
    with pytest.raises(PreconditionFailed):
        store.replace("lock", b"three", '"0123456789abcdef0123456789abcdef"')
    tagged = store.read_tagged("lock")
    assert (tagged.data, tagged.etag) == (b"one", etag) and 0 <= tagged.age_s < 30
    newer = store.replace("lock", b"four", etag)
    with pytest.raises(PreconditionFailed):
        store.delete_tagged("lock", etag)  # the old tag no longer deletes it
    assert store.get_bytes("lock") == b"four"
    store.delete_tagged("lock", newer)
    assert not store.exists("lock")
    with pytest.raises(PreconditionFailed):
        store.replace("lock", b"five", newer)  # If-Match on a missing object fails too
