"""``bark-pipeline plan``: the command as a user runs it (a separate process), checked against the
job's own planner: the same items, chunks and failure reasons, with no model loaded and no Ray."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.datasets import iter_dataset_items
from pipeline.fingerprint import Fingerprinter
from pipeline.idset import DUPLICATE_ID_REASON
from pipeline.plan import speech_seconds
from pipeline.speech_time import estimate_speech_seconds
from pipeline.planner import ItemRejected, Planner, text_encoder
from pipeline.rates import RATES_FILE, load_rates
from pipeline.sources import iter_file_items
from tests.conftest import REPO
from workers.checkpoints import load_settings_for, load_tokenizer

CHUNK_LINE = re.compile(r"^(?P<id>.+) #(?P<index>\d+) +(?P<tokens>\d+) tok +(?P<seconds>\d+\.\d) s  (?P<text>.*)$")
STORY = (
    "The lighthouse keeper climbed the stairs again, counting each step out loud. Rain had followed them "
    "all the way from the station to the harbour, and nobody minded. Nobody in the village could remember "
    "who had planted the old pear tree by the gate.\n\nShe folded the map twice, then a third time, until "
    "it fit inside her coat. At noon the bells rang, and the market emptied as quickly as it had filled."
)
MARKDOWN = (
    "---\ntitle: Harbour\nauthor: Someone\n---\n# One\n\nThe ferry was late, so they waited on the pier and "
    "watched the gulls argue about nothing at all for most of the afternoon.\n\n## Two\n\nThe clock in the hall "
    "had stopped at seven, and no one had the heart to wind it. They crossed the river on stepping stones."
)
# A probe in a fresh interpreter: runs the command in process, then reports what it had loaded.
PROBE = """
import gc, json, sys
from pipeline.cli import main
code = main(sys.argv[2:])
modules = [m for m in ("ray", "torch", "transformers") if m in sys.modules]
weights = 0
if "torch" in sys.modules:
    import torch
    weights = sum(1 for o in gc.get_objects() if isinstance(o, torch.nn.Module) and any(True for _ in o.parameters()))
with open(sys.argv[1], "w") as report:
    json.dump({"code": code, "modules": modules, "modules_with_weights": weights}, report)
"""


def _config(tmp_path: Path, model_source: Path, **overrides) -> Path:
    """configs/tiny.yaml on ``model_source`` (made if missing, by a run: never by a plan)."""
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(model_source)
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _plan(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "plan", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def _planner(config_path: Path, tiny_model_dir: Path) -> Planner:
    """The job's planner as ``NarrationJob`` builds it, on the session's tiny checkpoint."""
    config = load_config(config_path)
    model = config.model.model_copy(update={"source": str(tiny_model_dir)})
    tokenizer = load_tokenizer(model)
    return Planner(config, load_settings_for(model), text_encoder(tokenizer), Fingerprinter(config, tiny_model_dir))


def _expected(planner: Planner, items) -> tuple[list[tuple[str, int, int, str]], list[tuple[str, str]]]:
    """Every chunk (id, index, tokens, text) and every failure (id, reason) the job would make."""
    chunks, failures, seen = [], [], set()
    for item in items:
        if item.id in seen:
            failures.append((item.id, DUPLICATE_ID_REASON))
            continue
        seen.add(item.id)
        try:
            plan = planner.plan(planner.spec(item))
        except ItemRejected as exc:
            failures.append((item.id, exc.reason))
            continue
        chunks += [(item.id, c.index, c.n_tokens, c.text) for c in plan.chunks]
    return chunks, failures


def _chunk_lines(stdout: str) -> list[tuple[str, int, int, str]]:
    found = []
    for line in stdout.split("\n\nplan: ")[0].splitlines():
        match = CHUNK_LINE.match(line)
        assert match, line
        found.append((match["id"], int(match["index"]), int(match["tokens"]), match["text"]))
        # Each chunk's estimated seconds, in the language the item was planned in (English here).
        assert match["seconds"] == f"{estimate_speech_seconds(match['text'], 'en'):.1f}", line
    return found


def _no_space(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_a_text_file_is_planned_as_the_job_plans_it_with_no_model_there(tmp_path, tiny_model_dir):
    """The checkpoint does not exist (tiny.yaml would make it on a run): the plan needs no model, makes
    none, and its chunks are exactly those the job's planner makes with the real checkpoint's tokenizer."""
    missing = tmp_path / "no-model-here"
    config = _config(tmp_path, missing)
    story = tmp_path / "story.txt"
    story.write_text(STORY * 3, encoding="utf-8")

    result = _plan("--config", str(config), "--input", str(story), "--json", "--chunks")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    chunks, failures = _expected(_planner(config, tiny_model_dir), iter_file_items(story))
    assert [(c["item_id"], c["index"], c["tokens"], c["text"]) for c in report["chunk_list"]] == chunks
    assert (report["items_read"], report["planned"], report["chunks"], failures) == (1, 1, len(chunks), [])
    assert report["items"][0]["chunks"] == len(chunks) > 1
    assert report["longest_chunk"]["tokens"] == max(c[2] for c in chunks)
    language = report["items"][0]["language"]
    estimates = [estimate_speech_seconds(c[3], language) for c in chunks]
    assert [c["speech_s"] for c in report["chunk_list"]] == pytest.approx(estimates)
    assert report["speech_s"] == pytest.approx(sum(estimates), abs=0.01)
    assert report["speech_pace"][language]["items"] == 1
    assert report["audio_s"] > report["speech_s"]  # the pauses between chunks
    assert not missing.exists()


def test_a_folder_prints_every_chunk_exactly(tmp_path, tiny_model_dir):
    folder = tmp_path / "book"
    (folder / "part").mkdir(parents=True)
    (folder / "intro.md").write_text(MARKDOWN, encoding="utf-8")
    (folder / "part" / "story.txt").write_text(STORY, encoding="utf-8")
    config = _config(tmp_path, tiny_model_dir)

    result = _plan("--config", str(config), "--input", str(folder), "--chunks")

    assert result.returncode == 0, result.stderr
    items = list(iter_file_items(folder))
    chunks, _ = _expected(_planner(config, tiny_model_dir), items)
    printed = _chunk_lines(result.stdout)
    assert printed == chunks
    for item in items:  # the chunks joined give back the item's text, but for whitespace
        assert _no_space("".join(text for i, _, _, text in printed if i == item.id)) == _no_space(item.text)
    assert "plan: 2 items read: 2 to narrate in" in result.stdout
    assert re.search(rf"^  total +{len(chunks)} +\d+ tok", result.stdout, re.M), result.stdout
    assert "speech estimated at narration pace per language: en 3.7 syllables/s" in result.stdout


def test_a_dataset_lists_the_rows_that_would_fail_with_the_jobs_reasons(tmp_path, tiny_model_dir):
    rows = [
        {"id": "good", "text": STORY},
        {"id": "no-text"},
        {"id": "too-long", "text": "word " * 100},
        {"id": "good", "text": "The same id again."},
        {"id": "bad-params", "text": "Hello.", "params": {"voice_mode": "sideways"}},
        {"id": "short", "text": "A few words."},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = _config(tmp_path, tiny_model_dir, limits={"max_item_chars": 400})

    result = _plan("--config", str(config), "--input", str(data))

    assert result.returncode == 1, result.stderr  # some items would fail
    job = load_config(config)
    chunks, failures = _expected(_planner(config, tiny_model_dir), iter_dataset_items(str(data), job.input.columns, limits=job.limits))
    assert [f[0] for f in failures] == ["no-text", "too-long", "good", "bad-params"]
    assert "over limits.max_item_chars (400)" in dict(failures)["too-long"]
    listed = result.stdout.split("would fail (4):\n")[1].split("\n\n")[0].splitlines()
    assert [line.split(maxsplit=1) for line in listed] == [[i, reason] for i, reason in failures]
    assert f"plan: 6 items read: 2 to narrate in {len(chunks)} chunks, 4 would fail" in result.stdout


def _probe(tmp_path: Path, *args: str) -> dict:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(report), "plan", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(report.read_text())


def test_nothing_heavy_runs_no_ray_no_model_weights(tmp_path):
    missing = tmp_path / "no-model-here"
    config = _config(tmp_path, missing)
    (tmp_path / "a.txt").write_text(STORY, encoding="utf-8")

    probe = _probe(tmp_path, "--config", str(config), "--input", str(tmp_path / "a.txt"))

    assert probe["code"] == 0 and "ray" not in probe["modules"]
    assert probe["modules_with_weights"] == 0  # transformers' activation functions are modules, without weights
    assert not missing.exists()


def test_a_bad_config_is_reported_before_torch_or_transformers_is_imported(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {source: x}\nstages: {coarse: {batch_sise: 4}}\n")
    (tmp_path / "a.txt").write_text("Hello.")

    probe = _probe(tmp_path, "--config", str(tmp_path / "bad.yaml"), "--input", str(tmp_path / "a.txt"))

    assert probe == {"code": 2, "modules": [], "modules_with_weights": 0}


def test_the_wall_time_comes_from_the_recorded_rates_or_is_not_given(tmp_path, tiny_model_dir):
    config = _config(
        tmp_path, tiny_model_dir,
        stages={"semantic": {"replicas": 1, "batch_size": 16}, "coarse": {"replicas": 4, "batch_size": 16},
                "fine": {"replicas": 1, "batch_size": 16}, "codec": {"replicas": 1, "batch_size": 16}},
    )  # fmt: skip
    (tmp_path / "a.txt").write_text(STORY, encoding="utf-8")

    cpu = json.loads(_plan("--config", str(config), "--input", str(tmp_path / "a.txt"), "--json", "--device", "cpu").stdout)
    (tiny,) = [r for r in load_rates(RATES_FILE) if r.model == "tiny" and r.device == "cpu"]
    at_16 = {stage: next(r.audio_s_per_s for r in rows if r.batch == 16) for stage, rows in tiny.stages.items()}
    per_stage = {**at_16, "coarse": at_16["coarse"] * 4}
    slowest = min(per_stage, key=per_stage.get)
    assert cpu["wall_time"]["bottleneck"] == slowest
    assert cpu["wall_time"]["seconds"] == pytest.approx(cpu["speech_s"] / per_stage[slowest], abs=0.1)
    assert cpu["wall_time"]["stages"]["coarse"]["replicas"] == 4

    gpu = _plan("--config", str(config), "--input", str(tmp_path / "a.txt"), "--device", "cuda")
    assert gpu.returncode == 0, gpu.stderr
    (line,) = [line for line in gpu.stdout.splitlines() if line.startswith("wall time:")]
    assert line.startswith("wall time: no estimate: no recorded rate for the semantic stage") and "cuda" in line


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda tmp: (tmp / "bad.yaml", tmp / "a.txt"), "config {tmp}/bad.yaml: stages.coarse.batch_sise:"),
        (lambda tmp: (tmp / "job.yaml", tmp / "missing.txt"), "--input: {tmp}/missing.txt does not exist"),
        (lambda tmp: (tmp / "job.yaml", tmp / "cols.jsonl"), "column"),
    ],
    ids=["bad-config", "missing-input", "dataset-without-text-column"],
)
def test_errors_are_one_line_on_stderr_with_exit_2(tmp_path, tiny_model_dir, setup, message):
    _config(tmp_path, tiny_model_dir)
    (tmp_path / "bad.yaml").write_text(f"model: {{source: {tiny_model_dir}}}\nstages: {{coarse: {{batch_sise: 4}}}}\n")
    (tmp_path / "a.txt").write_text("Hello.")
    (tmp_path / "cols.jsonl").write_text('{"id": "a", "body": "Hello."}\n')
    config, source = setup(tmp_path)

    result = _plan("--config", str(config), "--input", str(source))

    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("bark-pipeline: ") and message.format(tmp=tmp_path) in line, line


def test_speech_is_estimated_per_language_and_capped_by_the_semantic_budget():
    sentence = "The keeper climbed the stairs."
    for text, language in ((sentence, "en"), ("灯塔看守人爬上楼梯。", "zh")):
        expected = estimate_speech_seconds(text, language)
        assert speech_seconds(text, language, max_semantic_tokens=768, semantic_rate_hz=49.9) == pytest.approx(expected)
    assert speech_seconds(sentence * 100, "en", max_semantic_tokens=499, semantic_rate_hz=49.9) == pytest.approx(10.0)


def test_the_engine_benchmark_writes_the_record_the_plan_reads(tmp_path, tiny_model_dir):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        from engines import _save_rates
    finally:
        sys.path.remove(str(REPO / "bench"))
    results = {
        "size": "tiny", "date": "2026-12-01", "semantic_tokens": 64,
        "machine": {"device": "cpu", "device_name": "CPU, 2 cores", "dtype": "float32", "platform": "Linux",
                    "torch": "2", "transformers": "5", "torch_threads": 1, "attention": "sdpa", "decode_compile": "off"},
        "stages": {stage: [{"batch": 1, "audio_s_per_s": 2.0}, {"batch": 4, "error": "out of memory"}]
                   for stage in ("semantic", "coarse", "fine", "codec")},
    }  # fmt: skip
    path = tmp_path / "rates.json"

    _save_rates(results, tiny_model_dir, ["--size", "tiny"], path)
    _save_rates({**results, "date": "2026-12-02"}, tiny_model_dir, ["--size", "tiny"], path)

    (record,) = load_rates(path)  # the same shape, device, dtype and machine: replaced
    assert (record.model, record.date, record.shape.hidden_size) == ("tiny", "2026-12-02", 32)
    assert [(r.batch, r.audio_s_per_s) for r in record.stages["coarse"]] == [(1, 2.0)]


def test_many_items_show_totals_and_the_items_with_most_chunks(tmp_path, tiny_model_dir):
    sentence = "The ferry was late again, so they waited on the pier and watched the gulls. "
    rows = [{"id": f"row{i:02d}", "text": sentence * (1 + i % 9)} for i in range(30)]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = _config(tmp_path, tiny_model_dir)

    result = _plan("--config", str(config), "--input", str(data))

    assert result.returncode == 0, result.stderr
    job = load_config(config)
    chunks, _ = _expected(_planner(config, tiny_model_dir), iter_dataset_items(str(data), job.input.columns, limits=job.limits))
    per_item = {row["id"]: sum(1 for c in chunks if c[0] == row["id"]) for row in rows}
    most = sorted(per_item, key=lambda i: (-per_item[i], i))[:5]  # most first, input order among equals
    table = result.stdout.split("items with most chunks (5 of 30):\n")[1].split("\nlongest chunk")[0].splitlines()
    assert [line.split()[0] for line in table[1:-1]] == most
    assert [int(line.split()[1]) for line in table[1:-1]] == [per_item[i] for i in most]
    assert table[-1].split()[:2] == ["total", str(len(chunks))]


def test_a_mostly_unknown_row_is_listed_with_the_jobs_reason_and_urls_are_planned_as_spoken(tmp_path, tiny_model_dir):
    """The [UNK] check and the spoken form come from the job's own planner: the plan shows both."""
    rows = [
        {"id": "link", "text": "The licence is at <https://www.gnu.org/licenses/>."},
        {"id": "emoji", "text": "😀🎉👍"},
        {"id": "fine", "text": "Thanks a lot 😀!"},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = _config(tmp_path, tiny_model_dir)

    result = _plan("--config", str(config), "--input", str(data), "--chunks")

    assert result.returncode == 1, result.stderr
    job = load_config(config)
    chunks, failures = _expected(_planner(config, tiny_model_dir), iter_dataset_items(str(data), job.input.columns, limits=job.limits))
    assert failures == [("emoji", "text: 3 of its 3 characters are unknown to the tokenizer ([UNK]: emoji, symbols), "
                                  "over text.max_unknown_share (0.5)")]
    listed = result.stdout.split("would fail (1):\n")[1].split("\n\n")[0].splitlines()
    assert [line.split(maxsplit=1) for line in listed] == [list(failures[0])]
    assert _chunk_lines(result.stdout) == chunks
    assert [c[3] for c in chunks] == ["The licence is at gnu dot org slash licenses.", "Thanks a lot!"]
