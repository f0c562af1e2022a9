"""Shared fixtures: one tiny checkpoint and one Ray instance per test session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import ray
import torch
from hypothesis import settings

from s3_server import seaweed_fixture  # noqa: F401 - registers the session's s3_server fixture
from session_ray import start_test_ray
from workers.settings import GENERATION_CONFIG_FILE
from workers.tiny_model import make_tiny_model

REPO = Path(__file__).resolve().parents[1]

# CI runs the property tests on a fixed series of examples, so a red CI is always
# reproducible; a developer's run draws new examples and keeps exploring.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


# The tiny model's tensors are small: one thread runs them fastest, and many times
# faster than several threads contending for this 2-core machine with Ray's workers.
torch.set_num_threads(1)

# Ray's C++ logging, in every Ray process these tests start: errors only. Ray 2.60 leaks
# a driver's OpenTelemetry metric reader once a process has run a second Ray session
# (test_placement's simulated cluster): the leaked reader keeps exporting to that
# session's dead metrics agent and logs a warning each time, and a warning logged while
# the interpreter exits reaches Ray's logger after its static state is torn down: a
# SIGSEGV after every test has passed (gdb: OpenTelemetryMetricExporter::Export ->
# RayLog::~RayLog -> spdlog registry, the main thread in the exit handlers). The command
# runs one session per process and is not exposed; here (test_placement and test_metrics
# each replace the session's Ray for a while) the leaked readers must not log.
os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


QUICK_FINE_WINDOW = 64


@pytest.fixture(scope="session")
def quick_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The session's tiny checkpoint with the fine stage's window shrunk, in its own generation
    config, from Bark's 1024 frames (hop 512) to 64 (hop 32): for jobs of many chunks whose point is
    not the fine window. The weights, vocabularies and every other constant are the tiny model's,
    and the fine stage runs the same code (a voice's history, one window or several), but a
    chunk of a few frames costs it milliseconds instead of most of a second on a CPU."""
    directory = tmp_path_factory.mktemp("models") / "quick"
    shutil.copytree(tiny_model_dir, directory)
    path = directory / GENERATION_CONFIG_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw["fine_acoustics_config"].update(
        max_fine_input_length=QUICK_FINE_WINDOW, max_fine_history_length=QUICK_FINE_WINDOW // 2
    )
    path.write_text(json.dumps(raw, indent=2, sort_keys=True), encoding="utf-8")
    return directory


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One Ray for the whole test session (see :func:`start_test_ray`); its workers reach the
    session's S3 server with the test identity, as a cluster's nodes reach S3 with theirs."""
    if not ray.is_initialized():
        start_test_ray({**s3_server.aws_env(), "AWS_EC2_METADATA_DISABLED": "true"})
    yield ray
    ray.shutdown()


@pytest.fixture
def s3_env(s3_server, monkeypatch, tmp_path):
    """Only the standard AWS variables for this server: no host profile, no instance-metadata lookups."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name, value in s3_server.aws_env().items():
        monkeypatch.setenv(name, value)
    return s3_server
