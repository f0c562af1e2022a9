"""The test session's Ray, started the same way wherever a test (re)starts it.

Its metrics agent serves Prometheus text on a port of its own (tests/test_metrics.py
reads it), and workers report every second instead of every 10 s. A module of its
own, so that conftest and the tests that restart Ray share one record of the port.
"""

from __future__ import annotations

import socket

import ray

METRICS_REPORT_INTERVAL_MS = 1000
_state: dict[str, int | None] = {"metrics_port": None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_test_ray() -> int:
    """Starts the session's Ray (four logical GPUs on CPU: placement and CUDA_VISIBLE_DEVICES
    are exercised without CUDA); returns its metrics port. ``address="local"``: a Ray of its
    own even where a `ray start` cluster runs on this machine."""
    port = _free_port()
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=4,
        include_dashboard=False,  # the metrics agent runs without the dashboard's web UI
        log_to_driver=False,
        _metrics_export_port=port,
        _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
    )
    _state["metrics_port"] = port
    return port


def metrics_port() -> int | None:
    """The metrics port of the Ray that :func:`start_test_ray` started last."""
    return _state["metrics_port"]
