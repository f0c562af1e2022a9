"""Where a job's objects go: a local folder or an S3 bucket, behind one small interface.

``--output`` names either a directory (files written atomically, see
:mod:`pipeline.storage`) or ``s3://bucket/prefix``. For S3 the endpoint, region
and credentials come from boto3's own sources (environment, shared profile,
instance role), so no secret ever passes through our config, logs or errors.
The client is set up for S3-compatible servers too: checksums only where the
API requires them (botocore >= 1.36 otherwise sends CRC headers several servers
reject), path-style addressing off AWS, standard retries, multipart for large
files.

Both backends speak one error family: every failure is a one-line, credential-free
:class:`StorageError` naming the object, whether it comes from the file system or
from S3, for outputs and for inputs read from S3 (:meth:`S3Storage.open_reader`).
The lease (:mod:`pipeline.lease`) uses S3's conditional writes (``If-None-Match:
*`` to create, ``If-Match: <etag>`` to renew or delete), which AWS and SeaweedFS
(checked with 4.48) both enforce atomically.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

import boto3
import botocore.config
import botocore.exceptions
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig

from pipeline.config import S3Config
from pipeline.storage import LocalStorage, atomic_copy_file, is_temp_file
from workers.errors import UserError

S3_SCHEME = "s3://"
FILE_SCHEME = "file://"
MIB = 1024 * 1024
# S3's limit on a key, in UTF-8 bytes.
MAX_S3_KEY_BYTES = 1024
# Parallel part uploads per file; a job already uploads several files at once.
UPLOAD_THREADS = 4
# check_reachable() runs before any work: fail fast there instead of backing off.
PROBE_ATTEMPTS = 2
AWS_HOST_SUFFIXES = (".amazonaws.com", ".amazonaws.com.cn")

DEFAULT_CONTENT_TYPE = "application/octet-stream"
CONTENT_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".mp3": "audio/mpeg",
    ".opus": "audio/ogg",  # Ogg Opus: the type RFC 7845 gives it
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".srt": "application/x-subrip",
    ".vtt": "text/vtt",
    ".npz": "application/octet-stream",
}

NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
# A conditional write lost (412), or raced another one on the same key (AWS: 409).
PRECONDITION_CODES = frozenset({"412", "PreconditionFailed", "409", "ConditionalRequestConflict"})
# Local paths that cannot name an existing file: a lookup finds nothing rather than failing.
NO_SUCH_PATH_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})
# Object names in messages are cut to this many characters: a message stays one readable line.
KEY_CHARS_IN_MESSAGES = 120
DENIED_CODES = frozenset({
    "403", "AccessDenied", "AllAccessDisabled", "SignatureDoesNotMatch",
    "InvalidAccessKeyId", "InvalidToken", "ExpiredToken", "InvalidClientTokenId",
})
UNREACHABLE_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)
REDACTED = "[redacted]"


class StorageError(UserError):
    """A storage failure after retries; the message is one line, free of credentials."""


class ObjectNotFound(StorageError):
    """The key has no object."""


class KeyTooLong(StorageError):
    """The key is over S3's limit: it can be neither written nor found."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object is not (or no longer) what the writer expected."""


@dataclass(frozen=True)
class TaggedObject:
    """An object's bytes with its ETag (for a conditional write) and age by the server's clock."""

    data: bytes
    etag: str
    age_s: float


def short_key(key: str) -> str:
    """``key`` cut to fit in a one-line message (ids can make keys thousands of characters long)."""
    if len(key) <= KEY_CHARS_IN_MESSAGES:
        return key
    half = KEY_CHARS_IN_MESSAGES // 2
    return f"{key[:half]}...{key[-half:]}"


@runtime_checkable
class Storage(Protocol):
    """What the pipeline needs from a place to put results; keys are ``/``-separated names."""

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> str: ...
    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> str: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int | None: ...
    def list_keys(self, prefix: str = "") -> Iterator[str]: ...
    def delete(self, key: str) -> None: ...
    def delete_folder(self, prefix: str) -> None: ...
    def uri_for(self, key: str) -> str: ...
    def describe(self) -> str: ...


def content_type_for(key: str) -> str:
    """The Content-Type stored with an object, from its suffix."""
    return CONTENT_TYPES.get(Path(key).suffix.lower(), DEFAULT_CONTENT_TYPE)


def check_key(key: str) -> str:
    """Refuse keys that could leave the prefix or mean different things to different servers."""
    parts = key.split("/")
    if (
        not key
        or any(ord(ch) < 0x20 or ch == "\x7f" for ch in key)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise StorageError(f"invalid storage key {key!r}")
    return key


def check_list_prefix(prefix: str) -> str:
    """A listing prefix is a key's beginning: empty, or a key that may end in ``/``."""
    if prefix:
        check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def check_folder(prefix: str) -> str:
    """A folder to delete whole: a key's beginning ending in ``/``, never the output's root."""
    if not prefix.endswith("/") or not prefix.strip("/"):
        raise ValueError(f"not a folder below the output's root: {prefix!r}")
    return check_list_prefix(prefix)


def normalize_prefix(prefix: str) -> str:
    """``/runs//2024/`` -> ``runs/2024``; ``.`` and ``..`` parts are refused, not resolved."""
    parts = [part for part in prefix.split("/") if part]
    if parts:
        check_key("/".join(parts))
    return "/".join(parts)


class LocalStore:
    """The local-directory backend: :class:`pipeline.storage.LocalStorage` plus reads and listing."""

    def __init__(self, root: str | Path):
        self._files = LocalStorage(root)
        self.root = self._files.root

    def _path(self, key: str) -> Path:
        return self._files.path_for(check_key(key))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Atomic (temp file, then rename); files have no content type, so it is ignored."""
        self._path(key)  # our stricter key check (control characters) first
        with self._errors("write", key):
            return self._files.put_bytes(key, data)

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> str:
        with self._errors("write", key):
            atomic_copy_file(Path(path), self._path(key))
        return self.uri_for(key)

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except IsADirectoryError:
            raise ObjectNotFound(f"no object {short_key(key)} in {self.root}") from None
        except OSError as exc:
            if exc.errno in NO_SUCH_PATH_ERRNOS:
                raise ObjectNotFound(f"no object {short_key(key)} in {self.root}") from None
            raise self._error("read", key, exc) from exc

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """Bytes in the file ``key``; None when there is none (or the name could not exist here)."""
        path = self._path(key)
        try:
            stat = path.stat()
        except OSError as exc:
            if exc.errno in NO_SUCH_PATH_ERRNOS:
                return None
            raise self._error("inspect", key, exc) from exc
        return stat.st_size if path.is_file() else None

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys under ``prefix`` in sorted order, leaving out unfinished atomic-write temp files."""
        folder = check_list_prefix(prefix).rpartition("/")[0]
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        keys = []
        for directory, _, names in os.walk(start):
            for name in names:
                if is_temp_file(name):
                    continue
                key = (Path(directory) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def delete(self, key: str) -> None:
        """Idempotent, like S3: deleting a missing key is not an error."""
        path = self._path(key)
        try:
            path.unlink()
        except OSError as exc:
            if exc.errno not in NO_SUCH_PATH_ERRNOS:
                raise self._error("delete", key, exc) from exc

    def delete_folder(self, prefix: str) -> None:
        """Every key under ``prefix`` (which ends with ``/``), and the folder itself; idempotent."""
        path = self._path(check_folder(prefix).rstrip("/"))
        try:
            shutil.rmtree(path)
        except OSError as exc:
            if exc.errno not in NO_SUCH_PATH_ERRNOS:
                raise self._error("delete", prefix, exc) from exc

    def uri_for(self, key: str) -> str:
        return self._path(key).as_uri()

    def describe(self) -> str:
        return f"local directory {self.root}"

    @contextmanager
    def _errors(self, action: str, key: str):
        try:
            yield
        except OSError as exc:
            raise self._error(action, key, exc) from exc

    def _error(self, action: str, key: str, exc: OSError) -> StorageError:
        """One line naming the object and the system's reason (not the full path: it may be huge)."""
        reason = exc.strerror or type(exc).__name__
        return StorageError(f"cannot {action} {short_key(key)} in {self.root}: {reason}")

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"


class S3Storage:
    """Objects under ``s3://bucket/prefix/`` through boto3; every failure is a one-line StorageError."""

    def __init__(self, bucket: str, prefix: str = "", config: S3Config | None = None):
        self.bucket = _check_bucket(bucket)
        self.prefix = normalize_prefix(prefix)
        self.config = config or S3Config()
        try:
            session = boto3.session.Session(profile_name=self.config.profile, region_name=self.config.region)
            self._clients = _ClientPerThread(session, self.config)
            self._probe_client = self._clients.build(min(PROBE_ATTEMPTS, self.config.max_attempts))
            # Resolved once by the client already (and refreshed in place): only used to redact.
            self._credentials = session.get_credentials()
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"cannot set up S3 for s3://{self.bucket}: {_one_line(str(exc))}") from exc
        self.endpoint = _public_url(self._client.meta.endpoint_url)
        self.region = self._client.meta.region_name
        self._transfer = TransferConfig(
            multipart_threshold=self.config.multipart_threshold_mb * MIB,
            multipart_chunksize=self.config.multipart_chunksize_mb * MIB,
            max_concurrency=UPLOAD_THREADS,
            preferred_transfer_client="classic",  # the CRT client ignores our retry/checksum settings
        )

    def __reduce__(self):
        """Rebuilt from its settings when sent to another process (boto3 clients do not pickle)."""
        return (S3Storage, (self.bucket, self.prefix, self.config))

    @property
    def _client(self):
        return self._clients.get()

    def object_key(self, key: str) -> str:
        """The bucket key of ``key``: the prefix, then ``key``."""
        full = f"{self.prefix}/{check_key(key)}" if self.prefix else check_key(key)
        size = len(full.encode("utf-8", "surrogatepass"))
        if size > MAX_S3_KEY_BYTES:
            raise KeyTooLong(f"key {short_key(key)} is {size} bytes with the prefix, over S3's {MAX_S3_KEY_BYTES}")
        return full

    def uri_for(self, key: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.object_key(key)}"

    def describe(self) -> str:
        where = f"{S3_SCHEME}{self.bucket}/{self.prefix}" if self.prefix else f"{S3_SCHEME}{self.bucket}"
        return f"{where} (endpoint {self.endpoint}, region {self.region})"

    def __repr__(self) -> str:
        return f"S3Storage({self.describe()})"

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Multipart above the threshold; S3 shows an object only once it is complete."""
        return self._upload(key, content_type, lambda args: self._client.upload_fileobj(io.BytesIO(data), **args))

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> str:
        return self._upload(key, content_type, lambda args: self._client.upload_file(str(path), **args))

    def _upload(self, key: str, content_type: str | None, send) -> str:
        args = {
            "Bucket": self.bucket,
            "Key": self.object_key(key),
            "ExtraArgs": {"ContentType": content_type or content_type_for(key)},
            "Config": self._transfer,
        }
        with self._errors("upload", key):
            send(args)
        return self.uri_for(key)

    def get_bytes(self, key: str) -> bytes:
        body = self._get(key)["Body"]
        with self._errors("download", key):
            return body.read()

    def _get(self, key: str) -> dict:
        """GetObject, with a missing object (or one that could not exist) as ObjectNotFound."""
        try:
            object_key = self.object_key(key)
        except KeyTooLong:
            raise ObjectNotFound(f"no object {short_key(key)} (over S3's key length)") from None
        with self._errors("download", key):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=object_key)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in NOT_FOUND_CODES:
                    raise ObjectNotFound(f"no object {S3_SCHEME}{self.bucket}/{short_key(object_key)}") from None
                if _code(exc) in NO_BUCKET_CODES:
                    raise ObjectNotFound(f"no bucket {self.bucket!r} at {self.endpoint}") from None
                raise

    def open_reader(self, key: str) -> io.BufferedReader:
        """The object as a buffered binary stream, read as it downloads; failures mid-read
        are StorageErrors too (inputs read from S3 use this, with the outputs' settings)."""
        body = self._get(key)["Body"]
        return io.BufferedReader(_S3Body(body, self, key), buffer_size=READ_BUFFER_BYTES)

    def download_file(self, key: str, path: str | Path) -> None:
        """The object into a local file (multipart-parallel for large ones)."""
        with self._errors("download", key):
            try:
                self._client.download_file(self.bucket, self.object_key(key), str(path), Config=self._transfer)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in NOT_FOUND_CODES | NO_BUCKET_CODES:
                    raise ObjectNotFound(f"no object {self.uri_for(key)}") from None
                raise

    # Conditional writes: what the lease is built on.

    def create(self, key: str, data: bytes) -> str:
        """Writes ``key`` only if no object is there (``If-None-Match: *``); returns the new ETag.
        PreconditionFailed when there is one: of two racing writers exactly one wins."""
        return self._put_conditionally(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, etag: str) -> str:
        """Overwrites ``key`` only if it is still the object with ``etag`` (``If-Match``)."""
        return self._put_conditionally(key, data, IfMatch=etag)

    def delete_tagged(self, key: str, etag: str) -> None:
        """Deletes ``key`` only if it is still the object with ``etag``; PreconditionFailed if not."""
        with self._errors("delete", key), _precondition(self, key):
            self._client.delete_object(Bucket=self.bucket, Key=self.object_key(key), IfMatch=etag)

    def read_tagged(self, key: str) -> TaggedObject:
        """The object, its ETag, and its age from the server's own clock (no clock skew between hosts)."""
        response = self._get(key)
        with self._errors("download", key):
            data = response["Body"].read()
        server_now = _server_time(response)
        age = max(0.0, server_now - response["LastModified"].timestamp())
        return TaggedObject(data=data, etag=response["ETag"], age_s=age)

    def _put_conditionally(self, key: str, data: bytes, **condition: str) -> str:
        with self._errors("upload", key), _precondition(self, key):
            response = self._client.put_object(
                Bucket=self.bucket, Key=self.object_key(key), Body=data, ContentType=content_type_for(key), **condition
            )
        return response["ETag"]

    def iter_lines(self, key: str) -> Iterator[bytes]:
        """The object's lines (ends kept), streamed: a manifest of millions of lines is never held whole."""
        with self._errors("download", key):
            try:
                body = self._client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in NOT_FOUND_CODES:
                    raise ObjectNotFound(f"no object {self.uri_for(key)}") from None
                raise
            try:
                yield from body.iter_lines(chunk_size=1 << 20, keepends=True)
            finally:
                body.close()

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        """Bytes stored under ``key``; None when there is no object (HEAD cannot tell a missing bucket apart)."""
        try:
            object_key = self.object_key(key)
        except KeyTooLong:
            return None  # it could never have been written
        with self._errors("inspect", key):
            try:
                head = self._client.head_object(Bucket=self.bucket, Key=object_key)
            except botocore.exceptions.ClientError as exc:
                if _code(exc) in NOT_FOUND_CODES:
                    return None
                raise
            return int(head["ContentLength"])

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Keys (without our prefix) starting with ``prefix``, in S3's (sorted) order."""
        return self._iter_keys(check_list_prefix(prefix))

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
        with self._errors("list", prefix):
            for page in pages:
                for entry in page.get("Contents", []):
                    yield entry["Key"][len(base):]

    def delete(self, key: str) -> None:
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def delete_folder(self, prefix: str) -> None:
        """Every key under ``prefix`` (which ends with ``/``); idempotent."""
        for key in list(self.list_keys(check_folder(prefix))):
            self.delete(key)

    def check_reachable(self) -> None:
        """HeadBucket once, before any work: a wrong bucket, endpoint or key fails the job at the start."""
        where = f"S3 bucket {self.bucket!r} at {self.endpoint}"
        try:
            self._probe_client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            code = _code(exc)
            if code in NOT_FOUND_CODES | NO_BUCKET_CODES:
                raise StorageError(f"{where} does not exist") from exc
            if code in DENIED_CODES:
                raise StorageError(
                    f"access to {where} denied ({code}); check the AWS credentials "
                    "(environment, profile or instance role)"
                ) from exc
            raise StorageError(self._redact(f"{where} is not usable: {_reason(exc)}")) from exc
        except UNREACHABLE_ERRORS as exc:
            raise StorageError(f"cannot reach S3 endpoint {self.endpoint} for bucket {self.bucket!r}") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(self._redact(f"{where}: {_reason(exc)}")) from exc

    @contextmanager
    def _errors(self, action: str, key: str):
        """Turn what boto3 raises after its retries into one line naming the object, never a secret."""
        try:
            yield
        except StorageError:
            raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, S3UploadFailedError) as exc:
            cause = exc.__context__ if isinstance(exc, S3UploadFailedError) and exc.__context__ else exc
            target = f"{S3_SCHEME}{self.bucket}/{self.prefix + '/' if self.prefix else ''}{short_key(key)}"
            if isinstance(cause, UNREACHABLE_ERRORS):
                message = f"S3 {action} of {target} failed: cannot reach endpoint {self.endpoint}"
            else:
                message = f"S3 {action} of {target} failed: {_reason(cause)}"
            raise StorageError(self._redact(message)) from exc

    def _redact(self, text: str) -> str:
        """Belt and braces: no server message should echo a secret, but none ever gets through.

        That includes a user:password@ part of the endpoint URL (AWS_ENDPOINT_URL may carry one).
        """
        raw_endpoint = self._client.meta.endpoint_url
        if raw_endpoint != self.endpoint:
            text = text.replace(raw_endpoint, self.endpoint)
        userinfo = urlsplit(raw_endpoint).netloc.rpartition("@")[0]
        if userinfo:
            text = text.replace(userinfo, REDACTED)
        if self._credentials is not None:
            for secret in (self._credentials.secret_key, self._credentials.token):
                if secret:
                    text = text.replace(secret, REDACTED)
        return _one_line(text)


READ_BUFFER_BYTES = 1 << 20  # each read of a streamed body is a socket round of Python code


class _S3Body(io.RawIOBase):
    """botocore's streaming body as a raw stream whose read errors are StorageErrors."""

    def __init__(self, body, storage: S3Storage, key: str):
        super().__init__()
        self._body, self._storage, self._key = body, storage, key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        with self._storage._errors("download", self._key):
            chunk = self._body.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


@contextmanager
def _precondition(storage: S3Storage, key: str):
    """A lost conditional write as PreconditionFailed (inside ``_errors``, which keeps it)."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        if _code(exc) in PRECONDITION_CODES:
            raise PreconditionFailed(f"{storage.uri_for(key)} changed under a conditional write") from exc
        raise


def _server_time(response: dict) -> float:
    """The server's clock from the response's Date header (ours if it sent none)."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date).timestamp() if date else time.time()
    except (TypeError, ValueError):
        return time.time()


def open_storage(output: str, s3: S3Config | None = None) -> Storage:
    """``s3://bucket[/prefix]`` -> :class:`S3Storage`; a path or ``file://`` URL -> :class:`LocalStore`."""
    if output.startswith(S3_SCHEME):
        bucket, _, prefix = output[len(S3_SCHEME):].partition("/")
        return S3Storage(bucket, prefix, s3)
    if output.startswith(FILE_SCHEME):
        return LocalStore(unquote(urlsplit(output).path))
    if "://" in output:
        raise StorageError(f"unsupported output {output.split('://')[0]}://...; use a directory or s3://bucket/prefix")
    return LocalStore(output)


class _ClientPerThread:
    """The data client of one storage, one per thread.

    botocore's standard retry mode keeps a retry quota per client (500 units, 14 per
    retried error): threads sharing a client spend it within a second of an outage,
    and every request after that fails at its first error. With a client per thread,
    each request gets the ``max_attempts`` the config promises.
    """

    def __init__(self, session: boto3.session.Session, config: S3Config) -> None:
        self._session = session
        self._config = config
        self._creating = threading.Lock()  # a boto3 session is not thread-safe
        self._local = threading.local()
        self._style = config.addressing_style
        first = self.build(config.max_attempts)
        if self._style == "auto" and not _is_aws(first.meta.endpoint_url):
            # Off AWS, bucket.host names rarely resolve: MinIO, SeaweedFS, Ceph behind one host name.
            self._style = "path"
            first = self.build(config.max_attempts)
        self._local.client = first

    def get(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self.build(self._config.max_attempts)
        return client

    def build(self, max_attempts: int):
        settings = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=self._config.connect_timeout_s,
            read_timeout=self._config.read_timeout_s,
            s3={"addressing_style": self._style},
        )
        with self._creating:
            return self._session.client("s3", endpoint_url=self._config.endpoint_url, config=settings)


def _is_aws(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host.endswith(AWS_HOST_SUFFIXES)


def _check_bucket(bucket: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
    if not 3 <= len(bucket) <= 63 or not set(bucket) <= allowed:
        raise StorageError(f"invalid S3 bucket name {bucket!r}")
    return bucket


def _public_url(url: str) -> str:
    """The endpoint for logs and errors: a user:password@ part shown as ``[redacted]@`` (so the
    reader sees credentials were there), no query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    if parts.username or parts.password:
        netloc = f"{REDACTED}@{netloc}"
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code, message = error.get("Code") or str(status), error.get("Message")
        return f"{code}: {message}" if message else code
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return "no AWS credentials found (environment, profile or instance role)"
    return str(exc) or type(exc).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
