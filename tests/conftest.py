"""Shared fixtures: one tiny checkpoint and one Ray instance per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray
import torch
from hypothesis import settings

from s3_server import seaweed_fixture  # noqa: F401 - registers the session's s3_server fixture
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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def ray_session():
    """Four logical GPUs on CPU: placement and CUDA_VISIBLE_DEVICES are exercised without CUDA.

    ``address="local"``: a Ray of its own even where a `ray start` cluster runs on this machine.
    """
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
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
