"""Dataset-scale jobs through real Ray actors: S3 in and out (a real SeaweedFS server),
hostile rows, resume verified against the objects, stops, killed actors."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import ray
import soundfile as sf
import yaml

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.datasets import iter_dataset_items
from pipeline.job import NarrationJob
from pipeline.manifest import PARTS_PREFIX
from pipeline.object_store import open_storage
from pipeline.storage import item_key
from tests.conftest import REPO

GOOD = [{"id": f"row-{n:03d}", "text": f"Row number {n} says hello. Then it stops."} for n in range(12)]
HOSTILE_LINES = [
    b'{"id": "no-text"}',
    b'{"id": "empty", "text": ""}',
    b'{"id": "blank", "text": "   \\n\\t "}',
    b'{"id": "broken", "text": "unterminated',
    b'{"id": "latin1", "text": "caf\xe9"}',
    b'{"id": "bad-voice", "text": "Fine text.", "voice": "v9/nobody"}',
    b'{"id": "controls", "text": "\\u0000\\u0001\\u0002"}',
]


def _job_config(tmp_path, tiny_model_dir, **overrides) -> str:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw["sampling"]["semantic"]["max_new_tokens"] = 12
    raw["output"]["subtitles"] = False
    raw.update(overrides)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _jsonl(path, rows, extra_lines=()) -> str:
    lines = [json.dumps(r).encode() for r in rows] + list(extra_lines)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def _manifest_lines(store) -> list[dict]:
    return [json.loads(line) for line in store.get_bytes("manifest.jsonl").decode().splitlines()]


def test_jsonl_to_s3_with_hostile_rows_then_resume_from_the_objects(ray_session, s3_env, tiny_model_dir, tmp_path, capsys):
    rows = [dict(r, speaker="narrator") for r in GOOD[:6]]
    source = _jsonl(tmp_path / "rows.jsonl", rows, HOSTILE_LINES)
    output = f"s3://{s3_env.bucket}/jobs/{tmp_path.name}"
    config = _job_config(tmp_path, tiny_model_dir, s3={"endpoint_url": s3_env.endpoint_url})

    assert main(["run", "--config", config, "--input", source, "--output", output, "--quiet"]) == 1
    err = capsys.readouterr().err
    store = open_storage(output, load_config(config).s3)
    entries = {e["id"]: e for e in _manifest_lines(store)}
    bad = {e["id"]: e["error"] for e in entries.values() if e["status"] == "failed"}
    assert set(bad) == {"no-text", "empty", "blank", "line 10", "latin1", "bad-voice", "controls"}
    for item_id, reason in bad.items():
        assert "\n" not in reason and f"FAILED  {item_id}: {reason}" in err
    assert bad["bad-voice"].startswith("voice:") and bad["no-text"].startswith("text")
    for row in rows:
        entry = entries[row["id"]]
        assert entry["status"] == "ok" and entry["uri"] == f"{output}/{row['id']}.wav"
        audio, rate = sf.read(io.BytesIO(store.get_bytes(f"{row['id']}.wav")))
        assert rate == 24_000 and len(audio) / rate == pytest.approx(entry["duration_s"], abs=1e-3)
        meta = json.loads(store.get_bytes(f"{row['id']}.json"))
        assert meta["extra"] == {"speaker": "narrator"} and meta["audio_bytes"] == entry["bytes"]
    assert not list(store.list_keys(PARTS_PREFIX))  # merged into manifest.jsonl

    # A rerun narrates nothing, and exits 1: the hostile rows are still failed in the output.
    assert main(["run", "--config", config, "--input", source, "--output", output, "--quiet"]) == 1
    assert "0 ok, 7 failed, 6 skipped, 0 changed" in capsys.readouterr().out
    # An item whose audio object is gone is redone, and only that one.
    store.delete("row-002.wav")
    assert main(["run", "--config", config, "--input", source, "--output", output, "--quiet"]) == 1
    assert "1 ok, 7 failed, 5 skipped, 0 changed" in capsys.readouterr().out
    assert store.exists("row-002.wav")
    # --retry-failed tries the failed rows again (and they fail again).
    assert main(["run", "--config", config, "--input", source, "--output", output, "--quiet", "--retry-failed"]) == 1
    assert "0 ok, 7 failed, 6 skipped, 0 changed" in capsys.readouterr().out


def _run_in_thread(job: NarrationJob, items):
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", job.run(items)))
    thread.start()
    return thread, result


def _wait_for(condition, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_stopped_job_is_resumed_and_every_item_is_done_exactly_once(ray_session, tiny_model_dir, tmp_path):
    source = _jsonl(tmp_path / "rows.jsonl", GOOD)
    # Two chunks in flight: the stop comes with items still to send, however fast the writers are.
    config = load_config(_job_config(tmp_path, tiny_model_dir, scheduler={"max_chunks_in_flight": 2}))
    out = tmp_path / "out"
    first = NarrationJob(config, str(out), quiet=True)
    thread, result = _run_in_thread(first, iter_dataset_items(source))
    _wait_for(lambda: first.progress.summary.ok >= 2)
    first.request_stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and result["summary"].stopped
    done_first = result["summary"].ok
    assert done_first < len(GOOD)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # nothing partial under a final name

    second = NarrationJob(config, str(out), quiet=True).run(iter_dataset_items(source))
    # Skipped: the items the first run recorded, and any a writer finished as the stop came (found
    # done by their metadata objects and recorded now); each item is narrated by one run only.
    assert second.failed == 0 and second.ok + second.skipped == len(GOOD) and second.skipped >= done_first
    ok_lines = Counter(e["id"] for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()) if e["status"] == "ok")
    assert ok_lines == Counter({r["id"]: 1 for r in GOOD})
    assert all((out / f"{item_key(r['id'])}.wav").is_file() for r in GOOD)


def test_job_survives_a_killed_stage_actor(ray_session, tiny_model_dir, tmp_path):
    source = _jsonl(tmp_path / "rows.jsonl", GOOD[:8])
    config = load_config(_job_config(tmp_path, tiny_model_dir))
    out = tmp_path / "out"
    job = NarrationJob(config, str(out), quiet=True)
    thread, result = _run_in_thread(job, iter_dataset_items(source))
    _wait_for(lambda: job.progress.summary.ok >= 1)
    ray.kill(job.pipeline.replicas["coarse"][0], no_restart=False)
    thread.join(timeout=300)
    summary = result["summary"]
    assert (summary.ok, summary.failed) == (8, 0)
    ids = Counter(e["id"] for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()))
    assert ids == Counter({r["id"]: 1 for r in GOOD[:8]})


def test_sigterm_stops_the_command_cleanly_and_the_rerun_finishes(tiny_model_dir, tmp_path):
    source = _jsonl(tmp_path / "rows.jsonl", [dict(r, id=f"s{n}") for n, r in enumerate(GOOD * 3)])
    config = _job_config(tmp_path, tiny_model_dir, ray={"num_cpus": 2})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", "run", "--config", config, "--input", source, "--output", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before = []
    for line in process.stdout:
        before.append(line)
        if line.startswith("ok "):
            break
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    output, _ = process.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert process.returncode == 1 and "stopped:" in output, "".join(before) + output
    recorded = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert 1 <= len(recorded) < 36
    rerun = subprocess.run(command + ["--quiet"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "skipped" in rerun.stdout
    ids = Counter(e["id"] for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()))
    assert ids == Counter({f"s{n}": 1 for n in range(36)})


@pytest.mark.parametrize(
    "output_for, message",
    [
        (lambda s3: "s3://no-such-bucket/x", "no-such-bucket"),
        (lambda s3: f"s3://{s3.bucket}/x", "cannot reach"),
    ],
)
def test_unusable_s3_output_exits_2_before_any_work(s3_env, tiny_model_dir, tmp_path, output_for, message):
    source = _jsonl(tmp_path / "rows.jsonl", GOOD[:1])
    endpoint = s3_env.endpoint_url if "no-such" in output_for(s3_env) else "http://127.0.0.1:9"
    config = _job_config(tmp_path, tiny_model_dir, s3={"endpoint_url": endpoint, "max_attempts": 2, "connect_timeout_s": 1})
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", config, "--input", source, "--output", output_for(s3_env)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert os.environ.get("AWS_SECRET_ACCESS_KEY", "unset") not in result.stderr


def test_s3_input_and_an_s3_outage_mid_job_lose_nothing(ray_session, s3_env, tiny_model_dir, tmp_path):
    """The input is read from S3; the server is down for a few seconds while items are being written."""
    config = load_config(_job_config(tmp_path, tiny_model_dir, s3={"endpoint_url": s3_env.endpoint_url}))
    store = open_storage(f"s3://{s3_env.bucket}/inputs/{tmp_path.name}", config.s3)
    store.put_bytes("rows.jsonl", b"".join(json.dumps(r).encode() + b"\n" for r in GOOD))
    source = store.uri_for("rows.jsonl")
    output = f"s3://{s3_env.bucket}/outage/{tmp_path.name}"
    job = NarrationJob(config, output, quiet=True)
    thread, result = _run_in_thread(job, iter_dataset_items(source, s3=config.s3))
    _wait_for(lambda: job.progress.summary.ok >= 1)
    s3_env.stop()
    time.sleep(3)
    s3_env.start()
    thread.join(timeout=300)
    summary = result["summary"]
    assert (summary.ok, summary.failed) == (len(GOOD), 0)
    out = open_storage(output, config.s3)
    assert Counter(e["id"] for e in _manifest_lines(out)) == Counter({r["id"]: 1 for r in GOOD})
    assert all(out.exists(f"{r['id']}.wav") and out.exists(f"{r['id']}.json") for r in GOOD)


def test_killed_at_random_points_then_rerun_until_done_counts_every_item_once(tiny_model_dir, tmp_path):
    """SIGKILL (no chance to clean up) at seeded random moments; reruns finish exactly the rest."""
    import random

    rows = [dict(r, id=f"k{n}") for n, r in enumerate(GOOD * 2)]
    source = _jsonl(tmp_path / "rows.jsonl", rows)
    config = _job_config(tmp_path, tiny_model_dir, ray={"num_cpus": 2})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pipeline", "run", "--config", config, "--input", source, "--output", str(out), "--quiet"]
    chance = random.Random(1234)
    for _ in range(2):
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: (out / "manifest.jsonl").exists() and len((out / "manifest.jsonl").read_text().splitlines()) >= 1)
        time.sleep(chance.uniform(0.0, 3.0))
        process.kill()
        process.wait()
    final = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    ok = Counter(e["id"] for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines()) if e["status"] == "ok")
    assert ok == Counter({r["id"]: 1 for r in rows})
    for row in rows:  # every final name holds a whole object (a kill can only leave hidden temp files)
        assert sf.read(out / f"{row['id']}.wav")[1] == 24_000
        assert json.loads((out / f"{row['id']}.json").read_text())["id"] == row["id"]


def test_a_saved_hugging_face_dataset_with_a_repeated_id_then_a_resume(ray_session, tiny_model_dir, tmp_path, capsys):
    """A ``save_to_disk`` folder as --input; the repeated id fails in one line and leaves the record of
    the first alone; the rerun skips everything and still exits 1 (the input still repeats the id)."""
    hf = pytest.importorskip("datasets")
    folder = tmp_path / "hf-rows"
    rows = {"id": ["h1", "h2", "h1"], "text": [GOOD[0]["text"], GOOD[1]["text"], "Again."], "speaker": ["ann", "bob", "cy"]}
    hf.Dataset.from_dict(rows).save_to_disk(str(folder))
    config = _job_config(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    command = ["run", "--config", config, "--input", str(folder), "--output", str(out), "--quiet"]

    assert main(command) == 1
    assert "FAILED  h1: id: duplicate item id in the input" in capsys.readouterr().err
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted((e["id"], e["status"], e["error"]) for e in lines) == [("h1", "ok", None), ("h2", "ok", None)]
    assert json.loads((out / "h1.json").read_text())["extra"] == {"speaker": "ann"}  # the first h1 was narrated

    assert main(command) == 1
    assert "0 ok, 1 failed, 2 skipped, 0 changed" in capsys.readouterr().out


def test_a_row_whose_sampling_would_overflow_fails_alone_and_its_batch_mates_are_narrated(ray_session, tiny_model_dir, tmp_path, capsys):
    """``temperature: 1e-300`` once passed validation, gave NaN probabilities and failed the three
    rows batched with it. Now the row fails alone with its field named, before any stage sees it;
    a row whose numbers go bad inside a stage fails alone there too (tests/test_engines.py)."""
    poisoned = {"id": "too-cold", "text": "This row asks for an impossible temperature.",
                "params": {"sampling": {"semantic": {"temperature": 1e-300}}}}
    source = _jsonl(tmp_path / "rows.jsonl", [GOOD[0], poisoned, GOOD[1], GOOD[2]])
    config = _job_config(tmp_path, tiny_model_dir, stages={s: {"batch_size": 4} for s in ("semantic", "coarse", "fine", "codec")})
    out = tmp_path / "out"

    assert main(["run", "--config", config, "--input", source, "--output", str(out), "--quiet"]) == 1
    entries = {e["id"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert entries["too-cold"]["status"] == "failed"
    assert entries["too-cold"]["error"].startswith("params.semantic.temperature: "), entries["too-cold"]["error"]
    assert "\n" not in entries["too-cold"]["error"] and "FAILED  too-cold: " in capsys.readouterr().err
    assert [entries[r["id"]]["status"] for r in GOOD[:3]] == ["ok", "ok", "ok"]
    assert all((out / f"{r['id']}.wav").is_file() for r in GOOD[:3])
