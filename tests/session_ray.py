"""The test session's Ray, started the same way wherever a test (re)starts it.

A module of its own (not conftest) so that the tests that replace the session's
Ray for a while (a simulated cluster, a metrics port) put back the same one.
"""

from __future__ import annotations

import ray


_worker_env: dict[str, str] = {}


def start_test_ray(worker_env: dict[str, str] | None = None) -> None:
    """Four logical GPUs on CPU: placement and CUDA_VISIBLE_DEVICES are exercised without CUDA.
    ``address="local"``: a Ray of its own even where a `ray start` cluster runs on this machine.

    ``worker_env``: variables every worker gets (the test S3 server's identity: the item writers
    write there from their own processes, as on a cluster); a restart reuses the last one given."""
    if worker_env is not None:
        _worker_env.clear()
        _worker_env.update(worker_env)
    ray.init(
        address="local", num_cpus=2, num_gpus=4, include_dashboard=False, log_to_driver=False,
        runtime_env=worker_runtime_env(),
    )


def worker_runtime_env() -> dict | None:
    """The session's worker variables as a ``runtime_env``, for a test that starts a Ray of its own
    and leaves it to the tests after it."""
    return {"env_vars": dict(_worker_env)} if _worker_env else None
