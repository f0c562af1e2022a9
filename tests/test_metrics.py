"""Stage and job metrics, read back from the Prometheus endpoint of a real local Ray.

Ray's metrics agent serves ``http://127.0.0.1:<port>/metrics`` once Ray is started
with a metrics export port. Workers report to it periodically (every 10 s by
default; 1 s here), so each check polls until the numbers arrive. A gauge
is dropped from the endpoint when its process stops reporting it (a dead actor's
queue depth ages out), so only live processes' gauges are checked.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request

import pytest
import ray
import yaml
from session_ray import worker_runtime_env

from pipeline.config import load_config
from pipeline.job import NarrationJob
from pipeline.metrics import JobMetrics
from pipeline.sources import Item
from tests.conftest import REPO
from workers.metrics import StageMetrics

POLL_TIMEOUT_S = 60
STAGES = ("semantic", "coarse", "fine", "codec")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def metrics_port():
    """A Ray of its own whose metrics agent serves Prometheus text on a known port.

    Ray cannot be given an export port once started, so a Ray that an earlier
    test started (conftest's ``ray_session``) is shut down and replaced by one with
    the same resources; that one is left running for the tests after this module,
    which would otherwise find Ray gone under a fixture that believes it started it.
    """
    was_running = ray.is_initialized()
    resources = ray.cluster_resources() if was_running else {}
    ray.shutdown()
    port = _free_port()
    ray.init(
        address="local",  # a new Ray, even if a `ray start` head runs on this machine
        num_cpus=int(resources.get("CPU", 2)),
        num_gpus=int(resources.get("GPU", 4)),
        include_dashboard=False,  # the metrics agent runs without the dashboard's web UI
        log_to_driver=False,
        _metrics_export_port=port,
        runtime_env=worker_runtime_env(),  # the session's S3 identity for the writers of later tests
        _system_config={"metrics_report_interval_ms": 1000},  # workers report every second, not every 10 s
    )
    yield port
    if not was_running:
        ray.shutdown()


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """The endpoint's samples as (name, labels, value); comments and blank lines skipped."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#") or not (match := _SAMPLE.match(line)):
            continue
        name, labels, value = match.groups()
        samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def total(samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` with these labels (one series per worker process)."""
    return sum(v for n, tags, v in samples if n == name and all(tags.get(k) == x for k, x in labels.items()))


def series(samples, name: str, **labels: str) -> list[float]:
    """Each matching series' value: for a gauge, one per live process that sets it."""
    return [v for n, tags, v in samples if n == name and all(tags.get(k) == x for k, x in labels.items())]


def poll(port: int, check, timeout_s: float = POLL_TIMEOUT_S):
    """Runs ``check(samples)`` until it passes; on timeout, raises its last failure."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return check(scrape(port))
        except (AssertionError, OSError) as exc:  # OSError: the agent not serving yet, a timeout
            if time.monotonic() > deadline:
                raise AssertionError(f"metrics not as expected after {timeout_s} s: {exc}") from exc
        time.sleep(0.5)


def test_stage_metrics_from_a_real_actor_reach_the_prometheus_endpoint(metrics_port):
    # The actor is a StageMetrics itself: each remote call is one of the methods the
    # stage actors call, run in order in the actor's own process.
    actor = ray.remote(num_cpus=0)(StageMetrics).remote("probe", 3)
    calls = [actor.chunk_received.remote() for _ in range(4)]
    calls += [
        actor.batch.remote(3, 0.5, steps=7),
        actor.batch.remote(1, 0.25),
        actor.chunks_done.remote(2, [0.02, 3.0]),
        actor.failure.remote(),
        actor.audio_seconds.remote(1.5),
        actor.restarted.remote(),
    ]
    other = ray.remote(num_cpus=0)(StageMetrics).remote("probe", 4)
    calls.append(other.queue_depth.remote(9))
    ray.get(calls)

    tags = {"stage": "probe", "replica": "3"}

    def check(samples):
        assert total(samples, "ray_bark_stage_chunks_received_total", **tags) == 4
        assert total(samples, "ray_bark_stage_chunks_done_total", **tags) == 2
        assert total(samples, "ray_bark_stage_chunks_failed_total", **tags) == 1
        assert total(samples, "ray_bark_stage_busy_seconds_total", **tags) == pytest.approx(0.75)
        assert total(samples, "ray_bark_stage_decode_steps_total", **tags) == 8
        assert total(samples, "ray_bark_stage_audio_seconds_total", **tags) == pytest.approx(1.5)
        assert total(samples, "ray_bark_stage_restarts_total", **tags) == 1
        # 4 arrived, 2 done, 1 failed: one still waits; the other replica set its depth itself
        assert series(samples, "ray_bark_stage_queue_depth", **tags) == [1]
        assert series(samples, "ray_bark_stage_queue_depth", stage="probe", replica="4") == [9]
        # Ray rebuilds a histogram from its bucket counts, each observation at its bucket's
        # midpoint: the buckets and counts are exact, the _sum only approximate.
        assert total(samples, "ray_bark_stage_batch_size_count", **tags) == 2
        assert total(samples, "ray_bark_stage_batch_size_bucket", le="1.0", **tags) == 1
        assert total(samples, "ray_bark_stage_batch_size_bucket", le="2.0", **tags) == 1
        assert total(samples, "ray_bark_stage_batch_size_bucket", le="4.0", **tags) == 2
        assert total(samples, "ray_bark_stage_chunk_latency_seconds_count", **tags) == 2
        assert total(samples, "ray_bark_stage_chunk_latency_seconds_bucket", le="0.025", **tags) == 1
        assert total(samples, "ray_bark_stage_chunk_latency_seconds_bucket", le="2.5", **tags) == 1
        assert total(samples, "ray_bark_stage_chunk_latency_seconds_bucket", le="5.0", **tags) == 2
        assert total(samples, "ray_bark_stage_chunk_latency_seconds_bucket", le="+Inf", **tags) == 2

    poll(metrics_port, check)


def test_job_metrics_from_the_driver_reach_the_prometheus_endpoint(metrics_port):
    metrics = JobMetrics()
    metrics.item_done("ok", audio_seconds=2.5, latency_s=4.0)
    metrics.item_done("ok", audio_seconds=1.0, latency_s=0.3)
    metrics.item_done("failed", latency_s=0.2)
    metrics.item_done("skipped")
    metrics.chunks_in_flight(12)
    metrics.chunks_in_flight(5)
    with pytest.raises(ValueError, match="status"):
        metrics.item_done("done")

    def check(samples):
        assert total(samples, "ray_bark_job_items_total", status="ok") == 2
        assert total(samples, "ray_bark_job_items_total", status="failed") == 1
        assert total(samples, "ray_bark_job_items_total", status="skipped") == 1
        assert total(samples, "ray_bark_job_audio_seconds_total") == pytest.approx(3.5)
        assert series(samples, "ray_bark_job_chunks_in_flight") == [5]
        assert total(samples, "ray_bark_job_item_latency_seconds_count") == 3
        assert total(samples, "ray_bark_job_item_latency_seconds_bucket", le="0.5") == 2

    poll(metrics_port, check)


def test_a_job_reports_every_chunk_of_every_stage(metrics_port, tiny_model_dir, tmp_path):
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw.setdefault("sampling", {}).setdefault("semantic", {})["max_new_tokens"] = 32
    config_path = tmp_path / "job.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    items = [
        Item(id="two", text="The clocks were striking thirteen in the town. " * 3 + "Nobody seemed to mind it at all. " * 3),
        Item(id="one", text="Hello there."),
    ]
    out = tmp_path / "out"
    before = poll(metrics_port, lambda samples: samples)  # the driver's job counters go on from the test above
    ok_before = total(before, "ray_bark_job_items_total", status="ok")
    audio_before = total(before, "ray_bark_job_audio_seconds_total")
    summary = NarrationJob(load_config(config_path), str(out), quiet=True).run(iter(items))
    assert (summary.ok, summary.failed) == (2, 0)
    chunks = sum(len(json.loads((out / f"{item.id}.json").read_text())["chunks"]) for item in items)
    assert chunks >= 3  # "two" is longer than one chunk
    # This module's Ray is its own and the first test used stage "probe": the stage
    # series come from this job's actors alone.

    def check(samples):
        done = {stage: total(samples, "ray_bark_stage_chunks_done_total", stage=stage) for stage in STAGES}
        assert done == dict.fromkeys(STAGES, chunks), "chunks done per stage"
        for stage in STAGES:
            assert total(samples, "ray_bark_stage_chunk_latency_seconds_count", stage=stage) == chunks, stage
            assert total(samples, "ray_bark_stage_batch_size_count", stage=stage) >= 1, stage
            assert total(samples, "ray_bark_stage_busy_seconds_total", stage=stage) > 0, stage
            assert total(samples, "ray_bark_stage_chunks_failed_total", stage=stage) == 0, stage
        assert total(samples, "ray_bark_stage_audio_seconds_total", stage="codec") > 0
        assert total(samples, "ray_bark_job_items_total", status="ok") - ok_before == 2
        assert total(samples, "ray_bark_job_audio_seconds_total") - audio_before > 0
        assert series(samples, "ray_bark_job_chunks_in_flight") == [0]  # a finished job has nothing inside

    poll(metrics_port, check)
