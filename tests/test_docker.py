"""docker/Dockerfile and .dockerignore, checked without Docker: the instructions are
parsed as Docker reads them, their shell commands are syntax-checked and, where they
can run outside a build (the requirements list, the optional weights step), run."""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from workers.checkpoints import _HUB_BIN_FILES, _HUB_FILES, resolve_checkpoint_dir
from workers.tiny_model import make_tiny_model

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DEPENDENCIES = PYPROJECT["project"]["dependencies"]
RAY_VERSION = next(m.group(1) for d in DEPENDENCIES if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==(\S+)", d)))
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|(^|_)KEY(_ID)?$|^AWS_(ACCESS|SECRET|SESSION)")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) as Docker reads them: parser directives and comments
    dropped (also inside a continued instruction), backslash continuations joined."""
    result, pending = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and pending is None):
            continue
        pending = line if pending is None else pending + line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = None
    assert pending is None, "the Dockerfile ends inside a continued instruction"
    return result


def run_flags_and_command(arguments: str) -> tuple[list[str], str]:
    """A RUN's own flags (``--mount=...``) and its shell command."""
    flags = []
    while match := re.match(r"(--\S+)\s+", arguments):
        flags.append(match.group(1))
        arguments = arguments[match.end() :]
    return flags, arguments


STEPS = instructions(DOCKERFILE.read_text())
RUNS = [run_flags_and_command(args) for keyword, args in STEPS if keyword == "RUN"]


def _index(predicate) -> int:
    return next(i for i, step in enumerate(STEPS) if predicate(*step))


def _python_code(command: str) -> str:
    """The program of the first ``python -c "..."`` in a shell command."""
    words = shlex.split(command)
    return words[words.index("-c", words.index("python")) + 1]


def test_base_is_the_official_ray_gpu_image_of_the_pinned_ray():
    froms = [args for keyword, args in STEPS if keyword == "FROM"]
    assert len(froms) == 1, froms
    image, _, tag = froms[0].split()[0].partition(":")
    assert image == "rayproject/ray"
    match = re.fullmatch(r"(\d+\.\d+\.\d+)(?:\.[0-9a-f]+)?-py(\d)(\d+)-(gpu|cu\d+)", tag)
    assert match, f"{tag}: not a versioned Python + GPU tag"
    assert match.group(1) == RAY_VERSION
    python = f"{match.group(2)}.{match.group(3)}"
    assert python in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_every_run_is_valid_shell():
    assert RUNS
    for _, command in RUNS:
        checked = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
        assert checked.returncode == 0, f"{command}\n{checked.stderr}"


def _requirements(tmp_path: Path, extras: str) -> list[str]:
    """What the requirements step lists for pyproject.toml with EXTRAS set to ``extras``."""
    [(_, command)] = [run for run in RUNS if "requirements" in run[1] and "pip install" in run[1]]
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    env = {**os.environ, "EXTRAS": extras, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = command.split(">", 1)[0]  # the step up to its redirection into the requirements file
    return subprocess.run(["sh", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()


@pytest.mark.parametrize("extras", ["", "default"])
def test_dependencies_are_installed_pinned_from_pyproject(tmp_path, extras):
    """The requirements step, run on pyproject.toml, lists exactly its dependencies (and
    those of the chosen optional groups), every one pinned."""
    default = next(a.partition("=")[2] for k, a in STEPS if k == "ARG" and a.startswith("EXTRAS="))
    extras = default if extras == "default" else extras
    optional = PYPROJECT["project"]["optional-dependencies"]
    expected = DEPENDENCIES + [d for name in filter(None, extras.split(",")) for d in optional[name]]
    listed = _requirements(tmp_path, extras)
    assert listed == expected
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+(\[[^\]]*\])?==[^=<>~!*,;\s]+", d) for d in listed), listed


def test_pip_never_installs_an_unpinned_package():
    for _, command in RUNS:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segments, words = [], []
        for token in lexer:  # simple commands, split at ; && || | & outside quotes
            if set(token) <= set(";&|()"):
                segments.append(words)
                words = []
            else:
                words.append(token)
        for words in [*segments, words]:
            if "pip" not in words or "install" not in words:
                continue
            args = words[words.index("install") + 1 :]
            targets = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] not in ("-r", "-c"))]
            for target in targets:
                assert target == "." or "==" in target, f"unpinned: pip install {target}"


def test_project_is_installed_after_its_dependencies():
    deps = _index(lambda k, a: k == "RUN" and "requirements" in a and "pip install" in a)
    copy_all = _index(lambda k, a: k == "COPY" and re.search(r"(^|\s)\.\s+\S+$", a))
    project = _index(lambda k, a: k == "RUN" and re.search(r"pip install\b.*\s\.$", a))
    assert deps < copy_all < project
    assert "--no-deps" in STEPS[project][1]  # the pinned set above is what runs
    workdir = [a for k, a in STEPS[:copy_all] if k == "WORKDIR"]
    assert workdir and workdir[-1].startswith("/home/ray/")


def test_no_secrets_in_the_image():
    for keyword, args in STEPS:
        if keyword in ("ENV", "ARG"):
            for name in re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", args):
                assert not SECRET_NAME.search(name), f"{keyword} {name}: secrets never go in an image"
    text = DOCKERFILE.read_text()
    assert not re.search(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b", text)
    # A build secret is mounted for one RUN only, never copied into a layer.
    for flags, command in RUNS:
        if any("type=secret" in f for f in flags):
            assert "/run/secrets/" in command and not re.search(r"(cp|mv|tee|>)\s*\S*/run/secrets", command)


def test_the_image_does_not_end_as_root():
    users = [args.split(":")[0] for keyword, args in STEPS if keyword == "USER"]
    assert not users or users[-1] not in ("root", "0")


# ------------------------------------------------------------------ baked weights


def _weights_step() -> tuple[list[str], str]:
    args = {a.split("=")[0]: a for k, a in STEPS if k == "ARG"}
    assert args.get("BARK_MODEL") == "BARK_MODEL=", "an optional BARK_MODEL build argument, empty by default"
    [step] = [run for run in RUNS if "BARK_MODEL" in run[1]]
    assert _index(lambda k, a: k == "ARG" and a.startswith("BARK_MODEL")) < _index(lambda k, a: k == "RUN" and "BARK_MODEL" in a)
    return step


def test_weights_step_comes_before_the_code_and_after_hf_home():
    flags, command = _weights_step()
    weights = _index(lambda k, a: k == "RUN" and "BARK_MODEL" in a)
    assert weights < _index(lambda k, a: k == "COPY" and re.search(r"(^|\s)\.\s+\S+$", a))
    assert any(k == "ENV" and a.startswith("HF_HOME=") for k, a in STEPS[:weights])


def test_weights_step_fetches_exactly_what_the_loader_reads():
    _, command = _weights_step()
    tree = ast.parse(_python_code(command))
    lists = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.List)]
    assert repr(_HUB_FILES) in lists, lists
    assert f"[*files, {', '.join(repr(p) for p in _HUB_BIN_FILES[len(_HUB_FILES):])}]" in lists, lists


def _shell_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", HF_HOME=str(tmp_path / "hf"), **values)
    return env


def test_weights_step_does_nothing_without_bark_model(tmp_path):
    _, command = _weights_step()
    env = _shell_env(tmp_path, BARK_MODEL="", BARK_MODEL_REVISION="")
    done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "" and not (tmp_path / "hf").exists(), done.stderr


def test_weights_step_fills_the_cache_the_loader_then_reads_offline(tmp_path):
    """The step's real shell and Python on a hub cache holding a tiny checkpoint (no network
    here): it finds the snapshot, and the pipeline's loader resolves the same directory."""
    _, command = _weights_step()
    snapshot = tmp_path / "hf" / "hub" / "models--suno--bark-tiny" / "snapshots" / ("0" * 40)
    make_tiny_model(snapshot, seed=0)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    env = _shell_env(tmp_path, BARK_MODEL="suno/bark-tiny", BARK_MODEL_REVISION="", HF_HUB_OFFLINE="1")
    done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["baked", "suno/bark-tiny", "into", str(snapshot)]
    loader = subprocess.run(
        [sys.executable, "-c", "import sys; from workers.config import ModelConfig; from workers.checkpoints import "
         "resolve_checkpoint_dir; print(resolve_checkpoint_dir(ModelConfig(source=sys.argv[1])))", "suno/bark-tiny"],
        env=env, cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert loader.returncode == 0 and loader.stdout.strip() == str(snapshot), loader.stderr
    assert resolve_checkpoint_dir  # the same function the stage actors call


# ------------------------------------------------------------------ .dockerignore


def _dockerignore_excludes(path: str) -> bool:
    """Docker's rules: patterns are cleaned paths from the context root, `*`/`?` stay inside
    one path part, `**` spans parts, `!` re-includes, the last matching line wins, and a
    folder that is excluded takes everything below it."""
    excluded = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = os.path.normpath(pattern.lstrip("!")).lstrip("/")
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [".git/HEAD", ".venv/bin/python", "venv/bin/python", "models/tiny/config.json", "out/a.wav",
     "pipeline/__pycache__/cli.cpython-311.pyc", "workers/x.pyc", ".pytest_cache/v/x", ".hypothesis/examples/x",
     "bark_pipeline.egg-info/PKG-INFO", ".env", "build/lib/x.py", "dist/x.whl"],
)  # fmt: skip
def test_dockerignore_keeps_out(path):
    assert _dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path",
    ["pyproject.toml", "README.md", "pipeline/cli.py", "workers/checkpoints.py", "configs/bark.yaml", "examples/lighthouse.txt"],
)
def test_dockerignore_keeps_what_the_build_needs(path):
    """pip install . reads pyproject.toml and its readme; jobs read configs/ in the image."""
    assert (REPO / path).exists() and not _dockerignore_excludes(path)
