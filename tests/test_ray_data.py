"""Ray Data (pipeline.ray_data) in a real Ray Data pipeline on the tiny model: read_parquet ->
narrate -> write_parquet, read back: outcome columns per row, bad rows failing alone with the
field named, audio files as the rows say, the actors gone at the end, and a second run over
the same output narrating nothing again."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import ray.data as ray_data
import soundfile
import yaml

from pipeline.idset import DUPLICATE_ID_REASON
from pipeline.manifest import Manifest
from pipeline.ray_data import OUTPUT_COLUMNS, build_narration_processor
from tests.conftest import REPO

ROWS = [
    {"id": "a", "text": "A short line.", "params": None, "genre": "one"},
    {"id": "b", "text": "Another one, with a seed.", "params": json.dumps({"seed": 7}), "genre": "two"},
    {"id": "empty", "text": "   ", "params": None, "genre": "three"},
    {"id": "bad", "text": "Some words.", "params": json.dumps({"seed": -1}), "genre": "four"},
    {"id": None, "text": "No id here.", "params": None, "genre": "five"},
    {"id": "a", "text": "The same id again.", "params": None, "genre": "six"},
    {"id": "c/d", "text": "In a folder.", "params": None, "genre": "seven"},
]
NARRATED = ["a", "b", "c/d"]


def _config(tiny_model_dir) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw["sampling"]["semantic"]["max_new_tokens"] = 24
    return raw


def _run(config: dict, source: Path, out: Path, results: Path, **options) -> list[dict]:
    """read_parquet -> narrate -> write_parquet, and the written rows read back in input order."""
    processor = build_narration_processor(config, out, batch_size=4, **options)
    processor(ray_data.read_parquet(str(source))).write_parquet(str(results))
    rows = pq.read_table(results).to_pylist()
    order = {row["genre"]: n for n, row in enumerate(ROWS)}  # genre is unique per input row
    return sorted(rows, key=lambda row: order[row["genre"]])


def _wait_for_gpus(total: float) -> float:
    """The fake GPUs free again (the stage actors ended); a bound, not a timing assertion."""
    deadline = time.monotonic() + 60
    while ray.available_resources().get("GPU", 0) < total and time.monotonic() < deadline:
        time.sleep(0.2)
    return ray.available_resources().get("GPU", 0)


def _watch_gpus(stop: threading.Event, seen: list[float]) -> None:
    while not stop.is_set():
        seen.append(ray.available_resources().get("GPU", 0))
        stop.wait(0.05)


def test_read_narrate_write_then_rerun_skips(ray_session, tiny_model_dir, tmp_path):
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), source)
    out = tmp_path / "audio"
    config = _config(tiny_model_dir)
    gpus = ray.cluster_resources().get("GPU", 0)

    rows = _run(config, source, out, tmp_path / "results1", include_audio=True)
    assert [row["genre"] for row in rows] == [row["genre"] for row in ROWS]  # every row, its columns kept
    assert set(rows[0]) == {"id", "text", "params", "genre", *OUTPUT_COLUMNS}
    by_genre = {row["genre"]: row for row in rows}
    statuses = [(row["id"], row["status"]) for row in rows]
    assert statuses == [
        ("a", "ok"), ("b", "ok"), ("empty", "failed"), ("bad", "failed"), (None, "failed"), ("a", "failed"), ("c/d", "ok"),
    ]
    assert by_genre["three"]["error"].startswith("text: ")
    assert by_genre["four"]["error"].startswith("params.seed")
    assert by_genre["five"]["error"].startswith("id: ")
    assert by_genre["six"]["error"] == DUPLICATE_ID_REASON
    for row in rows:
        if row["status"] == "failed":
            assert "\n" not in row["error"]
            assert row["audio_uri"] is None and row["duration_s"] is None and row["audio"] is None
            continue
        assert row["error"] is None
        path = Path(unquote(urlparse(row["audio_uri"]).path))
        assert path == out / f"{row['id']}.wav"
        info = soundfile.info(path)
        assert info.frames / info.samplerate == pytest.approx(row["duration_s"], abs=1e-3)
        assert row["audio"] == path.read_bytes()
        assert json.loads((out / f"{row['id']}.json").read_text())["extra"]["genre"] == row["genre"]
    assert _wait_for_gpus(gpus) == gpus  # the stage actors ended with the execution

    written = {name: (out / f"{name}.wav").stat().st_mtime_ns for name in NARRATED}
    lines = (out / "manifest.jsonl").read_text().count("\n")
    lowest = []  # the fewest free GPUs seen while the rerun runs: no stage actor starts for it
    watching = threading.Event()
    watcher = threading.Thread(target=_watch_gpus, args=(watching, lowest))
    watcher.start()
    try:
        again = _run(config, source, out, tmp_path / "results2")
    finally:
        watching.set()
        watcher.join()
    assert min(lowest) == gpus
    assert [(row["id"], row["status"]) for row in again] == [
        ("a", "skipped"), ("b", "skipped"), ("empty", "failed"), ("bad", "failed"),
        (None, "failed"), ("a", "failed"), ("c/d", "skipped"),
    ]
    assert "audio" not in again[0]
    for first, second in zip(rows, again):
        assert (first["error"], first["duration_s"], first["audio_uri"]) == (
            second["error"], second["duration_s"], second["audio_uri"]
        )
    assert {name: (out / f"{name}.wav").stat().st_mtime_ns for name in NARRATED} == written  # not narrated again
    assert (out / "manifest.jsonl").read_text().count("\n") == lines  # nothing recorded twice
    assert {e.id: e.status for e in Manifest.read(out).values()} == {
        "a": "ok", "b": "ok", "c/d": "ok", "empty": "failed", "bad": "failed"
    }
    assert _wait_for_gpus(gpus) == gpus


def test_a_column_the_output_would_overwrite_fails_the_run(ray_session, tiny_model_dir, tmp_path):
    ds = ray_data.from_items([{"id": "x", "text": "Hello.", "status": "draft"}])
    processor = build_narration_processor(_config(tiny_model_dir), tmp_path / "audio")
    with pytest.raises(Exception, match="already has column.*'status'"):
        processor(ds).take_all()
