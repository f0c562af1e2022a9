"""The command as a user runs it: a separate process, its exit code, and stdout and stderr read
through pipes. Mistakes that need no model are found before torch, transformers or Ray is
imported; the console carries our lines only, safe to print; stops end with one line."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import REPO

HEAVY = ("torch", "transformers", "ray")
SECRET = "UrlSecret-55"
SECRET_URL = f"http://AKIAUSER:{SECRET}@127.0.0.1:9"
SUMMARY = re.compile(r"^(done|stopped|aborted): (\d+) ok, (\d+) failed, (\d+) skipped, (\d+) changed; .* -> (.+)$")
# Every line of ours on stderr starts like one of these (no --quiet, no terminal: no progress bar).
OUR_LINES = re.compile(r"^(ok      |FAILED  |resumed |stage \w+ on node |bark-pipeline: |stopping: |\d+ items? failed in an earlier run)")
# Runs main() in a fresh interpreter, then writes which heavy modules it had imported and
# whether Ray was started in it to the file named by $CLI_REPORT.
PROBE = """
import json, os, sys
from pipeline.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in %r if m in sys.modules)
started = "ray" in sys.modules and sys.modules["ray"].is_initialized()
with open(os.environ["CLI_REPORT"], "w") as report:
    json.dump({"heavy": heavy, "ray_started": started}, report)
sys.exit(code)
""" % (HEAVY,)


def _env(**extra: str) -> dict[str, str]:
    """The command's environment as a user's shell gives it: no Ray address, no AWS settings,
    and Ray's own log level (conftest lowers it for the test process only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_BACKEND_LOG_LEVEL", "AWS_"))}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def _probe(tmp_path: Path, *args: str, timeout: float = 120, **env: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "cli-report.json"
    report.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=REPO, env=_env(CLI_REPORT=str(report), **env),
        capture_output=True, text=True, timeout=timeout,
    )
    return result, json.loads(report.read_text())


def _config(tmp_path: Path, model_dir: Path, name: str = "job.yaml", **overrides) -> Path:
    """configs/tiny.yaml on the session's tiny checkpoint, with short semantic runs."""
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"source": str(model_dir), "format": "hf"}
    raw["sampling"]["semantic"]["max_new_tokens"] = 12
    raw["output"]["subtitles"] = False
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------- before anything heavy


def test_every_config_error_is_listed_before_torch_transformers_or_ray_is_imported(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(
        "model: {source: x}\nstages: {coarse: {batch_sise: 4}}\noutput: {format: aac}\nseed: -1\n"
        f"s3: {{endpoint_url: '{SECRET_URL}'}}\n"
    )
    (tmp_path / "a.txt").write_text("Hello.")
    result, report = _probe(tmp_path, "run", "--config", str(config), "--input", str(tmp_path / "a.txt"), "--output", str(tmp_path / "o"))

    assert result.returncode == 2 and result.stdout == ""
    lines = _lines(result.stderr)
    assert len(lines) == 4, result.stderr
    for field in ("stages.coarse.batch_sise", "output.format", "seed", "s3.endpoint_url"):
        assert sum(f"bark-pipeline: config {config}: {field}:" in line for line in lines) == 1, (field, lines)
    assert SECRET not in result.stderr
    assert report == {"heavy": [], "ray_started": False}
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--config"], "expected one argument"),
        (["frobnicate"], "invalid choice"),
        (["run", "--config", "{tiny}", "--input", "{tmp}/nope", "--output", "{tmp}/o"], "--input: {tmp}/nope does not exist"),
        (["run", "--config", "{tiny}", "--input", "{tmp}/a.txt", "--output", "{tmp}/a.txt"], "--output: {tmp}/a.txt is not a directory"),
        (["run", "--config", "{tiny}", "--input", "{tmp}/a.pdf", "--output", "{tmp}/o"], "cannot read .pdf files"),
    ],
)
def test_argument_errors_exit_2_at_once(tmp_path, argv, message):
    (tmp_path / "a.txt").write_text("Hello.")
    (tmp_path / "a.pdf").write_bytes(b"%PDF")
    fill = {"tiny": str(REPO / "configs" / "tiny.yaml"), "tmp": str(tmp_path)}
    result, report = _probe(tmp_path, *(arg.format(**fill) for arg in argv))
    assert result.returncode == 2 and result.stdout == ""
    assert message.format(**fill) in result.stderr
    assert report == {"heavy": [], "ray_started": False}


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda d: d, "no items in {input}"),  # an empty folder
        (lambda d: [(d / "notes.pdf").write_bytes(b"%PDF"), (d / ".hidden.txt").write_text("hi"), d][-1], "no items in {input}"),
        (lambda d: [(d / "rows.csv").write_text("id,text\n"), d / "rows.csv"][-1], "no items in {input}"),
        (lambda d: [(d / "rows.jsonl").write_text("\n\n"), d / "rows.jsonl"][-1], "no items in {input}"),
        (lambda d: [(d / "rows.csv").write_text("id,body\n1,Hello.\n"), d / "rows.csv"][-1], "'text'"),
    ],
    ids=["empty-folder", "no-readable-files", "header-only-csv", "blank-jsonl", "csv-without-text-column"],
)
def test_an_input_without_items_exits_2_without_starting_ray(tmp_path, make_input, message):
    folder = tmp_path / "in"
    folder.mkdir()
    source = make_input(folder)
    result, report = _probe(
        tmp_path, "run", "--config", str(REPO / "configs" / "tiny.yaml"), "--input", str(source), "--output", str(tmp_path / "o")
    )
    assert result.returncode == 2 and result.stdout == ""
    [line] = _lines(result.stderr)
    assert line.startswith("bark-pipeline: ") and message.format(input=source) in line
    assert report == {"heavy": [], "ray_started": False}
    assert not (tmp_path / "o").exists()


def test_an_input_of_unreadable_items_is_recorded_failed_without_starting_ray(tmp_path, tiny_model_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "empty.txt").write_text("")
    (folder / "blank.md").write_text("   \n\n")
    out = tmp_path / "out"
    args = ["run", "--config", str(_config(tmp_path, tiny_model_dir)), "--input", str(folder), "--output", str(out)]

    result, report = _probe(tmp_path, *args)

    assert result.returncode == 1, result.stderr
    assert not report["ray_started"]
    [summary] = _lines(result.stdout)
    assert SUMMARY.match(summary).group(1, 2, 3, 4, 5) == ("done", "0", "2", "0", "0")
    failed = {line.split(":")[0].removeprefix("FAILED  ") for line in _lines(result.stderr) if line.startswith("FAILED  ")}
    assert failed == {"empty", "blank"}
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted((e["id"], e["status"]) for e in manifest) == [("blank", "failed"), ("empty", "failed")]

    # Run again: still failed (the input is unchanged), said again, and the manifest does not grow.
    again, report = _probe(tmp_path, *args)
    assert again.returncode == 1 and not report["ray_started"]
    assert SUMMARY.match(_lines(again.stdout)[0]).group(2, 3, 4) == ("0", "2", "0")
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2


def test_url_credentials_are_redacted_from_errors(tmp_path):
    """boto3 quotes the endpoint URL it could not reach, credentials and all."""
    source = _jsonl(tmp_path / "rows.jsonl", [{"id": "a", "text": "Hello."}])
    env = {"AWS_ENDPOINT_URL": SECRET_URL, "AWS_ACCESS_KEY_ID": "AKIAUSER", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_EC2_METADATA_DISABLED": "true"}
    config = tmp_path / "job.yaml"  # configs/tiny.yaml, giving up on the dead endpoint after 2 tries, not 12
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(REPO / "models" / "tiny")
    raw["s3"] = {"max_attempts": 2, "connect_timeout_s": 1}
    config.write_text(yaml.safe_dump(raw))
    result, _ = _probe(
        tmp_path, "run", "--config", str(config), "--input", f"s3://bucket/{source.name}", "--output", str(tmp_path / "o"), **env,
    )
    assert result.returncode == 2
    [line] = _lines(result.stderr)
    assert "127.0.0.1:9" in line and "[redacted]" in line
    assert SECRET not in result.stdout + result.stderr


# ---------------------------------------------------------------- stops


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_until(process: subprocess.Popen, condition, failure: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (OSError, psutil.Error):  # a process came and went while we looked
            pass
        assert process.poll() is None and time.monotonic() < deadline, failure
        time.sleep(0.05)


def _gone(processes: list[psutil.Process], timeout_s: float = 30) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout_s)
    return not alive


def test_ctrl_c_during_start_up_ends_with_one_line(tmp_path, tiny_model_dir):
    source = _jsonl(tmp_path / "rows.jsonl", [{"id": f"r{n}", "text": "Hello there."} for n in range(4)])
    config = _config(tmp_path, tiny_model_dir)
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input", str(source), "--quiet"]

    # While Python imports torch and transformers, while Ray starts, while the stage actors load.
    for moment, output in (("imports", tmp_path / "o1"), ("ray", tmp_path / "o2"), ("actors", tmp_path / "o3")):
        process = subprocess.Popen(
            [*command, "--output", str(output)], cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        if moment == "imports":  # torch's native library is being loaded
            _wait_until(process, lambda: "libtorch" in Path(f"/proc/{process.pid}/maps").read_text(), "torch never loaded")
        elif moment == "ray":  # ray.init has started its first processes
            _wait_until(process, lambda: any("raylet" in " ".join(p.cmdline()) for p in _children(process.pid)), "Ray never started")
        else:  # a stage actor exists and is loading its model
            _wait_until(process, lambda: any("Worker" in p.name() for p in _children(process.pid)), "no stage actor started")
        ray_processes = _children(process.pid)
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)

        assert process.returncode == 1, (moment, stderr)
        assert len(_lines(stderr)) == 1 and stderr.startswith("bark-pipeline: SIGINT: stop"), (moment, stderr)
        assert stdout == "" or SUMMARY.match(stdout.strip()).group(1) == "stopped", (moment, stdout)
        assert _gone(ray_processes), f"{moment}: Ray processes left running"
        assert not (output / "manifest.jsonl").exists() or (output / "manifest.jsonl").read_text() == ""


def test_sigterm_ends_a_job_waiting_for_resources_the_cluster_lacks(tmp_path, tiny_model_dir):
    source = _jsonl(tmp_path / "rows.jsonl", [{"id": "a", "text": "Hello there."}])
    config = _config(tmp_path, tiny_model_dir, ray={"num_cpus": 2})
    raw = yaml.safe_load(config.read_text())
    raw["stages"]["coarse"]["num_cpus"] = 64
    config.write_text(yaml.safe_dump(raw))
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input", str(source), "--output", str(tmp_path / "o")],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    seen = []
    for line in process.stderr:  # the job says why it waits, then waits
        seen.append(line)
        if "stages.coarse replica 0 asks for {CPU: 64}" in line:
            break
    else:
        pytest.fail(f"exited {process.wait()} without waiting: {''.join(seen)}")
    time.sleep(2)
    ray_processes = _children(process.pid)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)

    assert time.monotonic() - sent < 20
    assert process.returncode == 1
    assert _lines(stderr) == ["bark-pipeline: SIGTERM: stopping; finished items are kept and a rerun does the rest"]
    assert SUMMARY.match(stdout.strip()).group(1, 2, 3, 4) == ("stopped", "0", "0", "0")
    assert _gone(ray_processes)


def test_ctrl_c_mid_job_prints_one_line_not_one_per_cancelled_call(tmp_path, tiny_model_dir):
    source = _jsonl(tmp_path / "rows.jsonl", [{"id": f"r{n:02d}", "text": f"Row {n} is read aloud. It ends here."} for n in range(24)])
    config = _config(tmp_path, tiny_model_dir, scheduler={"max_chunks_in_flight": 16})
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input", str(source), "--output", str(out)],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    before = []
    for line in process.stderr:
        before.append(line)
        if line.startswith("ok      "):
            break
    process.send_signal(signal.SIGINT)
    stdout, after = process.communicate(timeout=60)

    assert process.returncode == 1
    stopping = _lines(after)
    assert "bark-pipeline: SIGINT: stopping; finished items are kept and a rerun does the rest" in stopping
    assert all(OUR_LINES.match(line) for line in stopping), stopping
    assert len([line for line in stopping if not line.startswith("ok      ")]) <= 1 + 4, stopping  # at most one per stage
    assert "Traceback" not in after and "retries" not in after and "(raylet)" not in stdout + after
    [summary] = _lines(stdout)
    match = SUMMARY.match(summary)
    assert match.group(1) == "stopped" and 1 <= int(match.group(2)) < 24
    assert len((out / "manifest.jsonl").read_text().splitlines()) == int(match.group(2))


# ---------------------------------------------------------------- what reaches the console


def test_console_has_our_lines_only_with_ids_escaped_and_secrets_redacted(tmp_path, tiny_model_dir):
    """One real job, its stdout and stderr read through pipes, Ray's session logs read after it."""
    forged = "ok      forged: 9.9 s of audio in 1 chunks"
    rows = [
        {"id": "good", "text": "Hello there. A short one."},
        {"id": f"evil\n{forged}", "text": "Second row here."},
        {"id": "red\x1b[31mALERT\x1b[0m\u202eright", "text": "Third row."},
        {"id": f"{SECRET_URL}/item", "text": "Fourth row."},
        {"id": "voice-secret", "text": "Fifth row.", "voice": f"{SECRET_URL}/voice.npz"},
        {"id": "good", "text": "A second row with the same id."},
    ]
    source = _jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "out"
    ray_tmp = Path(os.path.join("/tmp", f"bpcli{os.getpid()}"))
    config = _config(tmp_path, tiny_model_dir, ray={"num_cpus": 2})
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input", str(source), "--output", str(out)],
            cwd=REPO, env=_env(RAY_TMPDIR=str(ray_tmp)), capture_output=True, text=True, timeout=600,
        )
        ray_logs = [p for p in ray_tmp.rglob("*") if p.is_file() and not p.is_symlink()]
        leaked = [str(p) for p in ray_logs if SECRET.encode() in p.read_bytes()]
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)

    assert result.returncode == 1, result.stderr  # voice-secret failed, and the repeated id
    [summary] = _lines(result.stdout)  # stdout: the summary line and nothing else
    assert SUMMARY.match(summary).group(1, 2, 3, 4, 5) == ("done", "4", "2", "0", "0")
    console = result.stdout + result.stderr
    assert SECRET not in console and "\x1b" not in console and "\u202e" not in console
    assert ray_logs and not leaked, leaked
    lines = _lines(result.stderr)
    assert all(OUR_LINES.match(line) for line in lines), [line for line in lines if not OUR_LINES.match(line)]
    assert forged not in lines and "ok      evil\\nok      forged: 9.9 s of audio in 1 chunks: " in result.stderr
    assert "ok      red\\x1b[31mALERT\\x1b[0m\\u202eright: " in result.stderr
    assert "ok      http://[redacted]@127.0.0.1:9/item: " in result.stderr
    assert "FAILED  good: id: duplicate item id in the input" in result.stderr
    [voice_line] = [line for line in lines if line.startswith("FAILED  voice-secret: voice")]
    assert "[redacted]" in voice_line

    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert SECRET not in json.dumps([e["error"] for e in manifest])
    # The repeated id changed nothing on record: the first "good" is narrated and ok.
    assert [(e["status"], e["error"]) for e in manifest if e["id"] == "good"] == [("ok", None)]
    assert json.loads((out / "good.json").read_text())["chunks"][0]["text"].startswith("Hello there.")


def test_a_fault_after_narration_began_exits_1_not_2(tmp_path, tiny_model_dir):
    """A .jsonl.gz cut short: the rows before the cut are narrated, then reading fails. With
    --verbose Ray's own lines are shown, but not its colour codes, since this is not a terminal."""
    rows = [{"id": f"r{n}", "text": f"Row {n} is read aloud."} for n in range(8)]
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    source = tmp_path / "rows.jsonl.gz"
    source.write_bytes(data[: len(data) * 3 // 4])
    config = _config(tmp_path, tiny_model_dir, scheduler={"max_chunks_in_flight": 1})
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input", str(source), "--output", str(tmp_path / "o"), "--quiet", "--verbose"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 1, result.stderr
    [summary] = [line for line in _lines(result.stdout) if SUMMARY.match(line)]
    assert int(SUMMARY.match(summary).group(2)) >= 1
    assert "Started a local Ray instance" in result.stderr  # --verbose: Ray's own lines
    assert "\x1b" not in result.stdout + result.stderr


def test_version_prints_the_installed_packages_version():
    from importlib.metadata import version

    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "--version"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"bark-pipeline {version('bark-pipeline')}\n"
