"""Datasets read from S3 go through the outputs' client: the same S3Config (profile, endpoint,
retries, timeouts) and the same one-line, credential-free StorageErrors. Against a real SeaweedFS."""

from __future__ import annotations

import gzip
import json
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ColumnsConfig, S3Config
from pipeline.datasets import iter_dataset_items
from pipeline.object_store import ObjectNotFound, StorageError, open_storage
from s3_server import free_ports

ROWS = [{"id": f"r{n}", "text": f"Row {n}."} for n in range(3)]
PROFILE = "bark-reader"
FAST_FAIL = {"max_attempts": 1, "connect_timeout_s": 1.0, "read_timeout_s": 2.0}
URL_SECRET = "UrlSecret-55"


@pytest.fixture
def inputs(s3_env):
    """A prefix holding the same rows as JSONL, gzipped JSONL and Parquet."""
    store = open_storage(f"s3://{s3_env.bucket}/inputs/{uuid.uuid4().hex[:12]}")
    jsonl = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)
    store.put_bytes("rows.jsonl", jsonl)
    store.put_bytes("rows.jsonl.gz", gzip.compress(jsonl))
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(ROWS), buffer)
    store.put_bytes("rows.parquet", buffer.getvalue().to_pybytes())
    return store


def _ids(uri: str, s3: S3Config) -> list[str]:
    return [item.id for item in iter_dataset_items(uri, ColumnsConfig(), s3=s3)]


def test_a_named_profile_reads_every_format(inputs, s3_env, monkeypatch, tmp_path):
    """The credentials exist only in a named profile of the shared credentials file: without
    ``s3.profile`` nothing can be read (one clear line), with it every format reads."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[{PROFILE}]\naws_access_key_id = {s3_env.access_key}\naws_secret_access_key = {s3_env.secret_key}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    uri = inputs.uri_for("rows.jsonl")
    with pytest.raises(StorageError) as refused:
        _ids(uri, S3Config(endpoint_url=s3_env.endpoint_url, **FAST_FAIL))
    assert "no AWS credentials found" in str(refused.value) and "\n" not in str(refused.value)

    with_profile = S3Config(endpoint_url=s3_env.endpoint_url, profile=PROFILE)
    for name in ("rows.jsonl", "rows.jsonl.gz", "rows.parquet"):
        assert _ids(inputs.uri_for(name), with_profile) == [r["id"] for r in ROWS], name


def test_a_missing_input_object_is_one_line(inputs, s3_env):
    for name in ("missing.jsonl", "missing.parquet"):
        with pytest.raises(ObjectNotFound) as missing:
            _ids(inputs.uri_for(name), S3Config())
        assert "no object" in str(missing.value) and name in str(missing.value)
    with pytest.raises(ObjectNotFound, match="no bucket 'no-such-input-bucket'"):
        _ids("s3://no-such-input-bucket/rows.jsonl", S3Config())


def test_wrong_credentials_are_denied_without_the_secret(inputs, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-input-secret")
    for name in ("rows.jsonl", "rows.parquet"):
        with pytest.raises(StorageError) as denied:
            _ids(inputs.uri_for(name), S3Config(**FAST_FAIL))
        message = str(denied.value)
        assert "\n" not in message and "wrong-input-secret" not in message and s3_env.secret_key not in message
        assert inputs.uri_for(name) in message


def test_an_unreachable_endpoint_fails_fast_and_its_url_credentials_are_never_shown(s3_env, monkeypatch):
    """The outputs' retry and timeout settings apply (one try, 1 s to connect), and a user:password
    in AWS_ENDPOINT_URL is not echoed back (botocore's own message contains the URL)."""
    (closed_port,) = free_ports(1)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://AKIAUSER:{URL_SECRET}@127.0.0.1:{closed_port}")
    started = time.monotonic()
    for name in ("rows.jsonl", "rows.parquet"):
        with pytest.raises(StorageError) as unreachable:
            _ids(f"s3://{s3_env.bucket}/{name}", S3Config(**FAST_FAIL))
        message = str(unreachable.value)
        assert "cannot reach endpoint" in message and f"127.0.0.1:{closed_port}" in message
        assert URL_SECRET not in message and "AKIAUSER" not in message and "\n" not in message
    assert time.monotonic() - started < 10
