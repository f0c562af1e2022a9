"""Smoke test of the throughput benchmark: the tiny size, a few chunks, end to end.

Runs ``bench/throughput.py`` as a user would (its own process and its own Ray
instance) and checks what it reports, never how fast anything was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("semantic", "coarse", "fine", "codec")


@pytest.fixture(scope="module")
def bench_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable,
        str(REPO / "bench" / "throughput.py"),
        "--model", str(tiny_model_dir),
        "--chunks", "3",
        "--semantic-tokens", "12",
        "--batch", "2",
        "--in-flight", "1", "3",
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


def test_reports_three_throughputs_and_both_ratios(bench_run):
    out, stdout = bench_run
    (json_path,) = out.glob("throughput-*.json")
    results = json.loads(json_path.read_text())
    assert set(results["throughput"]) == {"a", "b", "c"}
    assert all(value > 0 for value in results["throughput"].values())
    assert set(results["ratios"]) == {"c/a", "c/b"}
    assert results["ratios"]["c/a"] == pytest.approx(results["throughput"]["c"] / results["throughput"]["a"], rel=1e-2)
    # Same texts, same fixed lengths: every way made the same amount of audio.
    runs = [results["baselines"]["sequential"], results["baselines"]["batched"], *results["pipeline"]["runs"]]
    assert {r["chunks"] for r in runs} == {3}
    assert len({round(r["audio_s"], 2) for r in runs}) == 1 and runs[0]["audio_s"] > 0
    assert [r["in_flight"] for r in results["pipeline"]["runs"]] == [1, 3]
    for stage in STAGES:
        figures = results["pipeline"]["headline"]["stages"][stage]
        assert figures["busy_s"] > 0 and figures["mean_batch"] >= 1 and figures["max_queue"] >= 0
    assert results["machine"]["device_name"]
    for text in ("(a) transformers", "(b) transformers", "(c) pipeline", "c/a =", "c/b =", "busy", "mean queue"):
        assert text in stdout


def test_writes_a_readable_plot(bench_run):
    import matplotlib.image

    out, _ = bench_run
    (png,) = out.glob("throughput-*.png")
    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_engine_benchmark_reports_every_stage_against_transformers(tiny_model_dir, tmp_path):
    """bench/engines.py runs without Ray: each stage's rate, ops and syncs per step, and the
    pipeline estimates with their ratios to transformers measured in the same run."""
    command = [
        sys.executable, str(REPO / "bench" / "engines.py"),
        "--model", str(tiny_model_dir),
        "--batch-sizes", "1", "4",
        "--semantic-tokens", "12",
        "--baseline-chunks", "2", "--baseline-batch", "2",
        "--out", str(tmp_path),
        "--rates", str(tmp_path / "rates.json"),  # not the repository's bench/rates.json
    ]  # fmt: skip
    code = "import runpy, sys; sys.modules['ray'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code, *command[1:]], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = tmp_path.glob("engines-*.json")
    results = json.loads(path.read_text())
    assert (tmp_path / "rates.json").is_file()  # the record `bark-pipeline plan` reads (tests/test_plan.py)
    for stage in STAGES:
        rows = results["stages"][stage]
        assert [r["batch"] for r in rows] == [1, 4] and all(r["audio_s_per_s"] > 0 for r in rows)
    for stage in ("semantic", "coarse", "fine"):
        one, four = results["stages"][stage]
        assert one["syncing_ops_per_step"] == four["syncing_ops_per_step"] == 0
        assert one["transfers_per_step"] == four["transfers_per_step"] == 1
        assert four["ops_per_step"] <= 1.2 * one["ops_per_step"]
    assert set(results["transformers"]) == {"one_at_a_time", "batched_2"}
    for name in ("one_device", "4_devices", "8_devices"):
        estimate = results["estimates"][name]
        assert estimate["rtf_per_device"] > 0
        ratio = estimate["rtf_per_device"] / results["transformers"]["one_at_a_time"]["audio_s_per_wall_s"]
        assert estimate["ratio_to_one_at_a_time"] == pytest.approx(ratio, rel=0.02)
    assert "whole pipeline, real time factor per device" in done.stdout


def test_driver_ceiling_counts_every_item_once(tmp_path):
    """bench/driver.py at its smallest: one replica per stage, one node, 40 rows, no long item
    (each job costs a start-up). Counted things only: every row written and recorded once."""
    out = tmp_path / "driver.json"
    command = [
        sys.executable, str(REPO / "bench" / "driver.py"),
        "--replicas", "1", "--nodes", "1", "--items", "40", "--long-chunks", "0", "--floor-chunks", "20",
        "--json", str(out),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    (layout,) = results["layouts"]
    assert (layout["replicas"], layout["actors"], layout["items"]) == (1, 5, 40)
    assert layout["ok"] == layout["files"] == layout["manifest_ok"] == layout["chunks"] == 40 and layout["failed"] == 0
    assert layout["chunks_per_s"] > 0 and layout["cpu_ms_per_chunk"] > 0 and layout["gpus_fed"] >= 0
    assert results["items"] == []
    assert results["ray_floor"]["chunks"] == 20 and results["ray_floor"]["cpu_ms_per_chunk"] > 0
    assert results["machine"]["nproc"] >= 1 and results["machine"]["cpu_model"]
    for text in ("driver ceiling", "replicas/stage", "driver CPU ms/chunk", "GPUs fed", "Ray alone"):
        assert text in done.stdout
