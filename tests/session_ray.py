"""The test session's Ray, started the same way wherever a test (re)starts it.

A module of its own (not conftest) so that the tests that replace the session's
Ray for a while (a simulated cluster, a metrics port) put back the same one.
"""

from __future__ import annotations

import ray


def start_test_ray() -> None:
    """Four logical GPUs on CPU: placement and CUDA_VISIBLE_DEVICES are exercised without CUDA.
    ``address="local"``: a Ray of its own even where a `ray start` cluster runs on this machine."""
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False)
