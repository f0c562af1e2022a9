"""Shared fixtures: one tiny checkpoint and one Ray instance per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from workers.tiny_model import make_tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def ray_session():
    """Four logical GPUs on CPU: placement and CUDA_VISIBLE_DEVICES are exercised without CUDA."""
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
