"""Books, not just rows: the in-flight bound holds inside one item, and a long item resumes from
its last finished chunk with exactly the audio an uninterrupted run gives.

Real jobs on the tiny model through real Ray actors and writers; the interrupted runs are the
command in its own process, stopped by SIGINT and by SIGKILL.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import ray
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.job import NarrationJob
from pipeline.scheduler import StagePipeline
from pipeline.sources import Item
from pipeline.writer import PARTS_DIR
from tests.conftest import REPO

N_CHUNKS = 300
WORDS = "the keeper watched a storm roll over grey harbour water while gulls cried above the lamp".split()


def _config(tmp_path: Path, model_dir: Path, **overrides) -> Path:
    """configs/tiny.yaml with chunks of one short sentence and four semantic tokens each."""
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"source": str(model_dir), "format": "hf"}
    raw["sampling"]["semantic"]["max_new_tokens"] = 4
    raw["text"] = {"max_chars": 24, "max_tokens": 20}
    raw.update(overrides)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sentences(n: int) -> str:
    return " ".join(f"Line {i} is here." for i in range(n))


def _parts(out: Path) -> int:
    folder = out / PARTS_DIR
    return sum(1 for _ in folder.rglob("*.npz")) if folder.exists() else 0


def _wait_for(condition, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_long_item_stopped_twice_resumes_from_its_last_finished_chunk_byte_identical(ray_session, quick_model_dir, tmp_path, capsys):
    """Chained voices (back to the item's voice every 4 chunks, so chains run side by side): a resumed
    chunk whose predecessor an earlier run finished continues from the tokens kept in its part.
    The tiny model with a short fine window (conftest.quick_model_dir): 300 chunks, each made
    twice or more, at a few milliseconds of fine-stage work each rather than most of a second.
    The two stopped runs are the command in its own process (and its own Ray); the run that
    finishes the item is the same command in this process, on the session's Ray, sparing a
    third start of Ray and of the stage models in a new process."""
    config = _config(
        tmp_path, quick_model_dir, voice_mode="chained", voice_reset_every=4, scheduler={"max_chunks_in_flight": 32},
        ray={"address": "local"},  # the commands start a Ray of their own, whatever else runs on this machine
    )
    book = tmp_path / "book.txt"
    book.write_text(_sentences(N_CHUNKS))
    reference = tmp_path / "reference"
    summary = NarrationJob(load_config(config), str(reference), quiet=True).run(iter([Item("book", book.read_text())]))
    assert summary.ok == 1
    assert len(json.loads((reference / "book.json").read_text())["chunks"]) == N_CHUNKS

    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input", str(book), "--output", str(out)]
    kept = []  # parts on disk after each stop
    for stop, at in ((signal.SIGINT, 60), (signal.SIGKILL, 150)):
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: _parts(out) >= at or process.poll() is not None)
        assert process.poll() is None, process.communicate()
        process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=120)
        assert not (out / "book.wav").exists()
        if stop == signal.SIGINT:
            assert stdout.startswith("stopped: 0 ok, 0 failed"), (stdout, stderr)
        else:  # the second run went on from where the first stopped
            assert f"resumed book: {kept[0]} of {N_CHUNKS} chunks were done by an earlier run" in stderr, stderr
        kept.append(_parts(out))
        assert kept[-1] >= at, (stdout, stderr)

    capsys.readouterr()
    code = main(command[3:])
    final = capsys.readouterr()
    assert code == 0, final.err
    resumed = [line for line in final.err.splitlines() if line.startswith("resumed book: ")]
    assert resumed == [f"resumed book: {kept[1]} of {N_CHUNKS} chunks were done by an earlier run"]  # none made again
    assert (out / "book.wav").read_bytes() == (reference / "book.wav").read_bytes()
    ours, theirs = (json.loads((d / "book.json").read_text()) for d in (out, reference))
    assert [c["seed"] for c in ours["chunks"]] == [c["seed"] for c in theirs["chunks"]]
    assert ours["audio_checksum"] == theirs["audio_checksum"]
    assert _parts(out) == 0 and not (out / PARTS_DIR / "book").exists()  # the parts went once the item was written
    assert [json.loads(line)["id"] for line in (out / "manifest.jsonl").read_text().splitlines()] == ["book"]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _run_until(config, pipeline: StagePipeline, out: Path, text: str, chunks_done: int) -> dict:
    """Runs one item until ``chunks_done`` parts are written, then stops the job. Returns the most chunks
    the driver had in flight, the most any stage replica held (queued + in its batch, as the replica
    itself recorded), and the peak memory of the driver and of every stage replica."""
    job = NarrationJob(config, str(out), quiet=True, pipeline=pipeline)
    seen = {"in_flight": 0, "held": 0, "driver_mb": 0.0, "actor_mb": {}}
    running = threading.Event()
    running.set()

    def watch() -> None:
        while running.is_set():
            seen["in_flight"] = max(seen["in_flight"], len(job._in_flight))
            seen["driver_mb"] = max(seen["driver_mb"], _rss_mb(os.getpid()))
            if job.writers is not None and _parts(out) < chunks_done:
                for pid in seen.setdefault("pids", _replica_pids(pipeline)):
                    seen["actor_mb"][pid] = max(seen["actor_mb"].get(pid, 0.0), _rss_mb(pid))
                spans = job.pipeline.stats(0.0)  # the replicas' own records of what they held
                seen["held"] = max([seen["held"], *(span.queued + span.size for span in spans)])
            elif _parts(out) >= chunks_done:
                job.request_stop()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    summary = job.run(iter([Item("book", text)]))
    running.clear()
    watcher.join()
    assert summary.stopped
    # The stopped job's chunks no longer count against the shared replicas, nor hold its voice.
    assert pipeline.outstanding == {stage: [0] * len(counts) for stage, counts in pipeline.outstanding.items()}
    assert len(pipeline.voices) == 0
    return seen


def _replica_pids(pipeline: StagePipeline) -> list[int]:
    placements = ray.get([a.placement.remote() for actors in pipeline.replicas.values() for a in actors])
    return [p["pid"] for p in placements]


def test_the_bound_holds_inside_one_two_megabyte_item_and_memory_stays_flat(ray_session, tiny_model_dir, tmp_path):
    """A 2 MB book is one item of ~10,000 chunks: at most max_chunks_in_flight of them are ever in the
    pipeline, and the driver and stage replicas use no more memory for it than for a 20 KB item."""
    limit = 8
    config = load_config(_config(
        tmp_path, tiny_model_dir, scheduler={"max_chunks_in_flight": limit},
        text={"max_chars": 220, "max_tokens": 200}, limits={"max_item_chars": 2_100_000},
    ))
    rng = random.Random(0)
    sentences = []
    while sum(map(len, sentences)) < 2_000_000:
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))).capitalize() + ".")
    book = " ".join(sentences)
    short = book[: 20_000].rsplit(".", 1)[0] + "."

    pipeline = StagePipeline(config)  # one set of replicas for both items: their memory is compared in place
    try:
        small = _run_until(config, pipeline, tmp_path / "small", short, chunks_done=24)
        large = _run_until(config, pipeline, tmp_path / "large", book, chunks_done=24)
    finally:
        pipeline.shutdown()
    for run in (small, large):
        assert 0 < run["in_flight"] <= limit
        assert 0 < run["held"] <= limit  # no replica ever held more than the bound
    assert large["driver_mb"] - small["driver_mb"] < 150, (small["driver_mb"], large["driver_mb"])
    for pid in small["pids"]:
        assert large["actor_mb"][pid] - small["actor_mb"][pid] < 100, (small["actor_mb"], large["actor_mb"])
