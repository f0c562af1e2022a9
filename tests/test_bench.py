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
