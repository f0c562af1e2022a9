"""`ray job submit` as a user runs it: a real Ray head started by `ray start --head`
in its own process, jobs submitted through its dashboard with the repository as the
job's working_dir, then the job's log and the files it wrote read back.

The head gets its own --temp-dir, its own ports and its own auth token, and is
stopped by signalling its own process group, never with `ray stop` (which would
also stop every other Ray instance of this user on the machine, such as the one
this test session may run itself). Nothing here sets RAY_ADDRESS in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.conftest import REPO

# The `ray` CLI of the environment running the tests (a venv's bin/ is not always on PATH).
RAY_CLI = Path(sys.executable).with_name("ray")
HEAD_START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 300
POLL_S = 0.25
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
# What the upload of the working_dir must leave behind (.gitignore and .rayignore).
NOT_UPLOADED = (".git", ".venv", "venv", "models", "out", ".hypothesis", ".pytest_cache")
SUMMARY = r"^(done|stopped|aborted): (\d+) ok, (\d+) failed, (\d+) skipped, (\d+) changed; .* -> (.+)$"
# What the job supervisor logs when the driver ended on its own within Ray's stop grace period
# (RAY_JOB_STOP_WAIT_TIME_S, 3 s by default), and what it logs when it had to SIGKILL it.
STOPPED_GRACEFULLY, FORCE_KILLED = "has been terminated gracefully with SIGTERM", "force-killed with SIGKILL"
# Lines that are Ray's, not ours: they must not reach the job's log (the driver's stdout and stderr).
RAY_LINES = re.compile(r"\(raylet\)|\(\w+Worker pid=|retries remaining|Started a local Ray instance|Connecting to existing Ray cluster|\x1b\[")


@dataclass
class RayHead:
    address: str  # the dashboard, where jobs are submitted
    temp_dir: Path
    client: JobSubmissionClient
    cli_env: dict[str, str]  # what a user's shell holds to run `ray job ...` against this head

    def ray(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """Runs the `ray` CLI as a separate process, as a user would."""
        return subprocess.run(
            [str(RAY_CLI), *args], env=self.cli_env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def session_dir(self) -> Path:
        return self.temp_dir / "session_latest"


def _free_ports(count: int) -> list[int]:
    """Ports free right now, all different (held open together while picked)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without any Ray address or auth settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    # `python` in a job's entrypoint must be this environment's Python.
    env["PATH"] = f"{RAY_CLI.parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def _processes_under(temp_dir: Path) -> list[int]:
    """Live processes that belong to the head in ``temp_dir``: Ray's own name it on their
    command line, job drivers run in a working_dir unpacked beneath it."""
    marker = str(temp_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or not ours to look at
            continue
        if marker in cmdline or cwd == marker or cwd.startswith(marker + os.sep):
            found.append(int(entry.name))
    return found


def _stop_head(process: subprocess.Popen, temp_dir: Path) -> None:
    """Stops exactly the head this module started: SIGTERM to `ray start --block` (it then
    stops the processes it started), then SIGKILL to its process group and to anything
    still running from its temp dir."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group is the head's own (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    deadline = time.monotonic() + 30
    while (leftovers := _processes_under(temp_dir)) and time.monotonic() < deadline:
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_head():
    # A short path: Ray's unix sockets live under it, and socket paths are limited to ~107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))
    gcs, dashboard, client_server, agent_http, agent_grpc, env_agent, metrics, node_manager, object_manager = _free_ports(9)
    token = secrets.token_hex(32)
    head_env = _clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0")
    command = [
        str(RAY_CLI), "start", "--head", "--block",
        f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        "--num-cpus=2", "--num-gpus=0", "--object-store-memory=300000000",
        f"--temp-dir={temp_dir}",
        f"--ray-client-server-port={client_server}",
        f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--runtime-env-agent-port={env_agent}", f"--metrics-export-port={metrics}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
        "--disable-usage-stats",
    ]  # fmt: skip
    log_path = temp_dir / "ray-start.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, env=head_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        address = f"http://127.0.0.1:{dashboard}"
        client = _connect(address, token, process, log_path)
        cli_env = _clean_env(RAY_ADDRESS=address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        yield RayHead(address=address, temp_dir=temp_dir, client=client, cli_env=cli_env)
    finally:
        _stop_head(process, temp_dir)


def _connect(address: str, token: str, process: subprocess.Popen, log_path: Path) -> JobSubmissionClient:
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"ray start exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
            client.list_jobs()
            return client
        except Exception:  # the dashboard is not up yet (refused, 5xx)
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _wait_for_end(client: JobSubmissionClient, job_id: str, timeout: float = JOB_TIMEOUT_S) -> JobStatus:
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(job_id)) not in TERMINAL:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            pytest.fail(f"job {job_id} still {status} after {timeout} s:\n{client.get_job_logs(job_id)[-3000:]}")
        time.sleep(POLL_S)
    return status


def _job_config(tmp_path: Path, model_dir: Path) -> Path:
    """configs/tiny.yaml on the session's tiny checkpoint, with short semantic runs and
    batches of 8 (each row below is one chunk)."""
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"source": str(model_dir), "format": "hf"}
    raw["sampling"]["semantic"]["max_new_tokens"] = 12
    raw["output"]["subtitles"] = True
    raw["scheduler"] = {"max_chunks_in_flight": 16}
    for stage in raw["stages"].values():
        stage["batch_size"] = 8
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _entrypoint(config: Path, source: Path, output: Path, *flags: str) -> list[str]:
    return ["python", "-m", "pipeline", "run", "--config", str(config), "--input", str(source), "--output", str(output), *flags]


def _manifest(output: Path) -> list[dict]:
    """Every line of manifest.jsonl; each must be a whole JSON object ending in a newline."""
    text = (output / "manifest.jsonl").read_text(encoding="utf-8")
    assert text == "" or text.endswith("\n"), f"torn last manifest line: {text.splitlines()[-1]!r}"
    return [json.loads(line) for line in text.splitlines()]


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _hidden_files(output: Path) -> list[str]:
    """Temporary files of atomic writes (`.name.<uuid>.tmp`, hidden): none may remain."""
    return [str(p.relative_to(output)) for p in output.rglob(".*.tmp")]


def _supervisor_log(head: RayHead, job_id: str) -> str:
    """The job supervisor's own log: it says whether the driver ended within the stop grace period."""
    path = head.session_dir() / "logs" / "jobs" / f"supervisor-{job_id}.log"
    deadline = time.monotonic() + 30
    while not (path.is_file() and (STOPPED_GRACEFULLY in (text := path.read_text()) or FORCE_KILLED in text)):
        assert time.monotonic() < deadline, f"no stop outcome in {path}"
        time.sleep(POLL_S)
    return text


def _summary(logs: str) -> re.Match:
    match = re.search(SUMMARY, logs, re.MULTILINE)
    assert match, f"no summary line in the job's log:\n{logs[-3000:]}"
    return match


def _check_audio(path: Path, entry: dict) -> None:
    """A finished item's audio: whole, readable, and what its manifest line says it is."""
    audio, rate = sf.read(path)
    assert rate == 24_000 and audio.ndim == 1 and len(audio) > 0 and np.isfinite(audio).all()
    assert entry["uri"] == path.resolve().as_uri()
    assert entry["bytes"] == path.stat().st_size and entry["checksum"] == _sha256(path)
    assert entry["duration_s"] == pytest.approx(len(audio) / rate, abs=1e-3)


def test_submitted_job_narrates_from_the_uploaded_working_dir(ray_head, tiny_model_dir, tmp_path):
    config, output = _job_config(tmp_path, tiny_model_dir), tmp_path / "out"
    entrypoint = shlex.join(_entrypoint(config, REPO / "examples", output))

    job_id = ray_head.client.submit_job(
        entrypoint=entrypoint, runtime_env={"working_dir": str(REPO)}, submission_id=f"narrate-{uuid.uuid4().hex[:8]}"
    )
    status = _wait_for_end(ray_head.client, job_id)
    logs = ray_head.client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]

    # The driver's own summary line, as `ray job logs` shows it.
    summary = _summary(logs)
    assert summary.group(1, 2, 3, 4, 5) == ("done", "1", "0", "0", "0") and summary.group(6) == str(output)
    assert "ok      lighthouse:" in logs
    assert not RAY_LINES.search(logs), logs[-3000:]  # our lines only: Ray's own stay in Ray's logs

    # The job ran from the repository uploaded as its working_dir, without what is ignored.
    package = re.fullmatch(r"gcs://(_ray_pkg_[0-9a-f]+)\.zip", ray_head.client.get_job_info(job_id).runtime_env["working_dir"])
    assert package, "the working_dir was not uploaded as a package"
    unpacked = ray_head.session_dir() / "runtime_resources" / "working_dir_files" / package.group(1)
    assert (unpacked / "pipeline" / "cli.py").is_file() and (unpacked / "configs" / "tiny.yaml").is_file()
    assert [name for name in NOT_UPLOADED if (REPO / name).exists()], "nothing here to leave behind"
    assert not [name for name in NOT_UPLOADED if (unpacked / name).exists()]
    assert not list(unpacked.glob("*.egg-info"))

    # What it wrote, read back.
    [entry] = _manifest(output)
    assert entry["id"] == "lighthouse" and entry["status"] == "ok" and entry["error"] is None
    _check_audio(output / "lighthouse.wav", entry)
    metadata = json.loads((output / "lighthouse.json").read_text())
    assert metadata["id"] == "lighthouse" and metadata["duration_s"] == pytest.approx(entry["duration_s"])
    assert len(metadata["chunks"]) >= 2  # 600 characters do not fit one chunk
    assert (output / "lighthouse.vtt").read_text().startswith("WEBVTT")
    assert "-->" in (output / "lighthouse.srt").read_text()
    assert not _hidden_files(output)


def test_stopped_job_resumes_without_redoing_finished_items(ray_head, tiny_model_dir, tmp_path):
    ids = [f"row-{n:03d}" for n in range(40)]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": f"Row {i} is read aloud. It ends here."}) + "\n" for i in ids))
    config, output = _job_config(tmp_path, tiny_model_dir), tmp_path / "out"
    entrypoint = _entrypoint(config, source, output, "--quiet")

    # Submitted and stopped with the CLI from another process, as a user would.
    first = f"rows-{uuid.uuid4().hex[:8]}"
    submitted = ray_head.ray(
        "job", "submit", "--no-wait", "--submission-id", first, "--working-dir", str(REPO), "--", *entrypoint
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not ((output / "manifest.jsonl").is_file() and len(_manifest(output)) >= 3):
        status = ray_head.client.get_job_status(first)
        if status in TERMINAL:
            pytest.fail(f"job ended ({status}) before it could be stopped:\n{ray_head.client.get_job_logs(first)[-3000:]}")
        assert time.monotonic() < deadline, "no item finished in time"
        time.sleep(POLL_S)
    stopped = ray_head.ray("job", "stop", first)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert _wait_for_end(ray_head.client, first) == JobStatus.STOPPED

    # The driver took SIGTERM as a clean stop: it said so in one line, cancelled the chunks in
    # flight, printed its summary and ended by itself within Ray's grace period.
    logs = ray_head.client.get_job_logs(first)
    assert "SIGTERM: stopping" in logs, logs[-3000:]
    summary = _summary(logs)
    assert summary.group(1) == "stopped" and summary.group(3, 4) == ("0", "0")
    assert not RAY_LINES.search(logs) and "Traceback" not in logs, logs[-3000:]
    supervisor = _supervisor_log(ray_head, first)
    assert STOPPED_GRACEFULLY in supervisor and FORCE_KILLED not in supervisor, supervisor[-3000:]

    # Whole manifest lines only, and nothing partial under a final name.
    before = {e["id"]: e for e in _manifest(output)}
    assert len(before) == len(_manifest(output)) == int(summary.group(2))
    assert all(e["status"] == "ok" for e in before.values())
    assert 0 < len(before) < len(ids), "the job finished before the stop: nothing was tested"
    assert not _hidden_files(output)
    for wav in output.glob("*.wav"):
        sf.read(wav)  # every audio object present is whole, even one whose item is unrecorded
    for item_id, entry in before.items():
        _check_audio(output / f"{item_id}.wav", entry)
        json.loads((output / f"{item_id}.json").read_text())
    written = {i: (output / f"{i}.wav").stat() for i in before}

    # The same job again, through the client: it does only what is missing.
    second = ray_head.client.submit_job(
        entrypoint=shlex.join(entrypoint), runtime_env={"working_dir": str(REPO)}, submission_id=f"{first}-again"
    )
    status = _wait_for_end(ray_head.client, second)
    logs = ray_head.client.get_job_logs(second)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    summary = _summary(logs)
    ok, failed, skipped = (int(summary.group(n)) for n in (2, 3, 4))
    assert summary.group(1) == "done" and failed == 0
    assert ok + skipped == len(ids) and skipped >= len(before)

    # Every id exactly once, ok, with exactly one audio object; finished ones untouched.
    lines = _manifest(output)
    assert Counter(e["id"] for e in lines) == Counter(ids)
    assert all(e["status"] == "ok" for e in lines)
    final = {e["id"]: e for e in lines}
    assert sorted(p.name for p in output.glob("*.wav")) == [f"{i}.wav" for i in ids]
    for item_id in ids:
        _check_audio(output / f"{item_id}.wav", final[item_id])
    for item_id, stat in written.items():
        now = (output / f"{item_id}.wav").stat()
        assert (now.st_ino, now.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), f"{item_id} was written again"
        assert final[item_id] == before[item_id]
    assert not _hidden_files(output)
