"""The cluster files say what KubeRay and Ray's cluster launcher expect, and every
narration command in them (and in cluster/README.md) is one the real CLI accepts,
with a config that loads and fits the GPUs the cluster offers.

KubeRay's CRDs are not available offline: the field names checked here are those of
the ray.io/v1 RayJob/RayCluster schema. The launcher YAML is checked with Ray's own
schema and default-filling code, and `ray start` flags with Ray's own CLI parser.
"""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import start as ray_start_command

from pipeline.cli import build_parser
from pipeline.config import JobConfig, load_config
from workers.config import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAYJOB, RAYCLUSTER, LAUNCHER = (CLUSTER / n for n in ("kuberay-rayjob.yaml", "kuberay-raycluster.yaml", "aws-gpu.yaml"))
README = CLUSTER / "README.md"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_VERSION = next(
    m.group(1) for d in PYPROJECT["project"]["dependencies"] if (m := re.fullmatch(r"ray(?:\[[^\]]*\])?==(\S+)", d))
)
PROJECT_VERSION = PYPROJECT["project"]["version"]
# Where the image keeps the repository (the Dockerfile's WORKDIR): configs baked in live there.
IMAGE_WORKDIR = Path(re.findall(r"^WORKDIR\s+(\S+)", (REPO / "docker" / "Dockerfile").read_text(), re.MULTILINE)[-1])

# ray.io/v1 field names (KubeRay's CRDs): anything else is a typo the API server would drop or refuse.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
    "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}  # fmt: skip
CLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
    "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "workerGroupSpecs",
}  # fmt: skip
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "rayStartParams", "serviceType", "template"}
WORKER_GROUP_FIELDS = {
    "groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts", "rayStartParams",
    "replicas", "scaleStrategy", "suspend", "template",
}  # fmt: skip
AUTOSCALER_OPTIONS_FIELDS = {"idleTimeoutSeconds", "upscalingMode", "image", "imagePullPolicy", "resources", "env", "envFrom"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
GPU = "nvidia.com/gpu"
# Environment variables that hold credentials: only ever from a Secret.
SECRET_ENV = re.compile(r"SECRET|TOKEN|PASSWORD|(^|_)KEY(_ID)?$")
AWS_KEY_ID = re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b")
AWS_SECRET = re.compile(r"aws_secret_access_key\W{1,4}[A-Za-z0-9/+=]{40}\b", re.IGNORECASE)


def _load(path: Path):
    [document] = list(yaml.safe_load_all(path.read_text()))
    return document


def _cluster_spec(manifest: dict) -> dict:
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def _groups(manifest: dict) -> list[dict]:
    spec = _cluster_spec(manifest)
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _containers(manifest: dict) -> list[dict]:
    return [c for group in _groups(manifest) for c in group["template"]["spec"]["containers"]]


def _gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get(GPU, 0))


def _project_image(image: str) -> None:
    """The project's image, tagged with the project's version."""
    name, _, tag = image.rpartition(":")
    assert name.endswith("/bark-pipeline") and tag.startswith(PROJECT_VERSION), image


def _ray_start_flags(argv: list[str]) -> dict:
    """Parses `ray start` arguments with Ray's own command: unknown flags fail."""
    return ray_start_command.make_context("ray start", list(argv)).params


# ------------------------------------------------------------------ commands


def _logical_lines(text: str) -> list[str]:
    """Shell lines with YAML comment markers removed and backslash continuations joined."""
    lines, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#"):
            line = line.lstrip("#").strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
        else:
            lines.append(pending + line)
            pending = ""
    return lines


def _code_blocks(markdown: str, language: str) -> list[str]:
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)]


def _pipeline_commands(text: str) -> list[list[str]]:
    """Every `python -m pipeline run ...` / `bark-pipeline run ...` in ``text``, as argv
    after the program, up to the end of its shell command."""
    commands = []
    for line in _logical_lines(text):
        for match in re.finditer(r"(?:python -m pipeline|bark-pipeline)\s+run\b", line):
            words = shlex.split(line[match.start() :])
            program = 4 if words[0] == "python" else 2  # past `run`
            argv = []
            for word in words[program:]:
                if word in (";", "&&", "||", "|", "&"):
                    break
                argv.append(word)
            commands.append(argv)
    return commands


def _readme_configs() -> dict[str, dict]:
    """The job configs cluster/README.md writes out in full, by the file name their first line gives."""
    configs = {}
    for block in _code_blocks(README.read_text(), "yaml"):
        name = re.match(r"#\s*([\w.-]+\.yaml):", block)
        if name:
            configs[name.group(1)] = yaml.safe_load(block)
    return configs


def _config_of(path: str, tmp_path: Path) -> JobConfig:
    """The config a command names: a repository config (in the image under its WORKDIR, or
    relative to a `--working-dir .` upload), or one written out in cluster/README.md."""
    config = Path(path)
    if config.is_absolute() and config.is_relative_to(IMAGE_WORKDIR):
        config = config.relative_to(IMAGE_WORKDIR)
    if not config.is_absolute() and config.parts[0] == "configs":
        assert (REPO / config).is_file(), f"{path}: no such config in the repository"
        return load_config(REPO / config)
    written = _readme_configs()
    assert config.name in written, f"{path}: neither in configs/ nor written out in {README.name}"
    file = tmp_path / config.name
    file.write_text(yaml.safe_dump(written[config.name]))
    return load_config(file)


def _parse(argv: list[str]):
    args = build_parser().parse_args(["run", *argv])
    assert args.command == "run"
    return args


def _gpu_demand(config: JobConfig) -> tuple[float, float]:
    """GPUs the stage replicas ask for in all, and the most one replica asks for."""
    shares = [
        (1.0 if stage.num_gpus == "auto" else float(stage.num_gpus), stage.replicas)
        for stage in (config.stages.of(name) for name in STAGE_NAMES)
    ]
    return sum(share * n for share, n in shares), max(share for share, _ in shares)


def _comment_commands(path: Path) -> list[list[str]]:
    return _pipeline_commands("\n".join(line for line in path.read_text().splitlines() if line.lstrip().startswith("#")))


# ------------------------------------------------------------------ KubeRay


@pytest.mark.parametrize(("path", "kind"), [(RAYJOB, "RayJob"), (RAYCLUSTER, "RayCluster")])
def test_kuberay_manifest_has_the_v1_shape(path, kind):
    manifest = _load(path)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    spec = _cluster_spec(manifest)
    assert set(spec) <= CLUSTER_SPEC_FIELDS, set(spec) - CLUSTER_SPEC_FIELDS
    assert spec["rayVersion"] == RAY_VERSION
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_OPTIONS_FIELDS
    if "authOptions" in spec:
        assert spec["authOptions"]["mode"] in ("disabled", "token")

    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP_FIELDS and "template" in head
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, set(group) - WORKER_GROUP_FIELDS
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "template"} <= set(group)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert len({g["groupName"] for g in spec["workerGroupSpecs"]}) == len(spec["workerGroupSpecs"])

    for group in _groups(manifest):
        # rayStartParams is a map of strings (`num-cpus: 0` is refused), each a real `ray start` flag.
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), params
        _ray_start_flags([f"--{k}={v}" for k, v in params.items()])
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["name"] and c["image"] for c in containers)
        _project_image(containers[0]["image"])
        for container in containers:
            resources = container.get("resources", {})
            if GPU in resources.get("requests", {}):  # extended resources: requests equal limits
                assert resources["requests"][GPU] == resources["limits"][GPU]
    assert _gpus(head["template"]["spec"]["containers"][0]) == 0
    assert all(_gpus(g["template"]["spec"]["containers"][0]) >= 1 for g in spec["workerGroupSpecs"])


def test_rayjob_runs_one_job_and_cleans_up():
    manifest = _load(RAYJOB)
    spec = manifest["spec"]
    assert set(spec) <= RAYJOB_SPEC_FIELDS, set(spec) - RAYJOB_SPEC_FIELDS
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES


def test_rayjob_entrypoint_is_a_real_command_with_a_config_that_fits(tmp_path):
    manifest = _load(RAYJOB)
    words = shlex.split(manifest["spec"]["entrypoint"])
    assert words[:4] == ["python", "-m", "pipeline", "run"], words
    args = _parse(words[4:])
    assert args.input.startswith("s3://") and args.output.startswith("s3://")
    config = _config_of(str(args.config), tmp_path)
    total, largest = _gpu_demand(config)
    workers = _cluster_spec(manifest)["workerGroupSpecs"]
    offered = sum(g["replicas"] * _gpus(g["template"]["spec"]["containers"][0]) for g in workers)
    assert offered >= total, f"{args.config} asks for {total} GPUs, the cluster has {offered}"
    assert max(_gpus(g["template"]["spec"]["containers"][0]) for g in workers) >= largest


def test_raycluster_can_grow_to_what_the_documented_jobs_ask(tmp_path):
    manifest = _load(RAYCLUSTER)
    spec = manifest["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    workers = spec["workerGroupSpecs"]
    # A job reads the cluster's GPUs when it starts: one GPU worker is always up.
    assert sum(g["minReplicas"] * _gpus(g["template"]["spec"]["containers"][0]) for g in workers) >= 1
    most = sum(g["maxReplicas"] * _gpus(g["template"]["spec"]["containers"][0]) for g in workers)
    commands = _comment_commands(RAYCLUSTER)
    assert commands, "the manifest shows no job to submit"
    for argv in commands:
        args = _parse(argv)
        assert _gpu_demand(_config_of(str(args.config), tmp_path))[0] <= most


@pytest.mark.parametrize("path", [RAYJOB, RAYCLUSTER])
def test_kuberay_credentials_come_from_secrets(path):
    manifest = _load(path)
    for container in _containers(manifest):
        for env in container.get("env", []):
            assert ("value" in env) != ("valueFrom" in env), env
            if SECRET_ENV.search(env["name"]):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref and ref["name"] and ref["key"] and "value" not in env, f"{env['name']} must come from a Secret"
    # The driver (on the head) reads the input and keeps the manifest; the item writers (on the GPU
    # workers, beside the codec replicas) write the items: both need the S3 credentials.
    for group in _groups(manifest):
        container = group["template"]["spec"]["containers"][0]
        names = {e["name"]: e for e in container.get("env", [])}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert names[key]["valueFrom"]["secretKeyRef"]["key"] == key, (container["name"], key)


@pytest.mark.parametrize("path", sorted(CLUSTER.iterdir()) + [REPO / "docker" / "Dockerfile"], ids=lambda p: p.name)
def test_no_literal_aws_keys(path):
    text = path.read_text()
    assert not AWS_KEY_ID.search(text) and not AWS_SECRET.search(text)


# ------------------------------------------------------------------ cluster launcher


def test_launcher_config_passes_rays_own_schema():
    config = _load(LAUNCHER)
    validate_config(copy.deepcopy(config))
    validate_config(prepare_config(copy.deepcopy(config)))  # with the AWS defaults filled in


def test_launcher_config_describes_an_aws_gpu_cluster(tmp_path):
    config = _load(LAUNCHER)
    assert config["cluster_name"] and config["auth"]["ssh_user"]
    assert config["provider"]["type"] == "aws" and re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", config["provider"]["region"])
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    for node_type in types.values():
        assert node_type["node_config"]["InstanceType"] and node_type["node_config"]["ImageId"]
        assert isinstance(node_type["resources"], dict)
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_types = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no GPU worker type"
    for node_type in workers.values():
        assert 0 <= node_type.get("min_workers", 0) <= node_type["max_workers"] <= config["max_workers"]
    # A job reads the cluster's GPUs when it starts: one GPU worker is always up.
    assert sum(t.get("min_workers", 0) for t in gpu_types.values()) >= 1
    _project_image(config["docker"]["image"])

    # The commands the launcher runs are real `ray start` invocations.
    [head_start] = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    head_flags = _ray_start_flags(shlex.split(head_start.split("ray start", 1)[1]))
    assert head_flags["head"] and head_flags["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    [worker_start] = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    worker_flags = _ray_start_flags(shlex.split(worker_start.split("ray start", 1)[1]))
    assert worker_flags["address"] == "$RAY_HEAD_IP:6379"

    # The jobs it documents fit: in all, and each replica within one node.
    commands = _comment_commands(LAUNCHER)
    assert commands
    most = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types.values())
    per_node = max(t["resources"]["GPU"] for t in gpu_types.values())
    for argv in commands:
        total, largest = _gpu_demand(_config_of(str(_parse(argv).config), tmp_path))
        assert total <= most and largest <= per_node


# ------------------------------------------------------------------ the guide


def test_every_command_in_the_guide_parses_and_names_a_loadable_config(tmp_path):
    commands = _pipeline_commands("\n".join(_code_blocks(README.read_text(), "sh")))
    assert len(commands) >= 6
    for argv in commands:
        args = _parse(argv)
        _config_of(str(args.config), tmp_path)


def test_every_config_snippet_in_the_guide_is_valid(tmp_path):
    """Whole configs load as they are; partial ones (one section) over configs/bark-small.yaml."""
    base = yaml.safe_load((REPO / "configs" / "bark-small.yaml").read_text())
    blocks = _code_blocks(README.read_text(), "yaml")
    assert blocks
    for n, block in enumerate(blocks):
        snippet = yaml.safe_load(block)
        raw = snippet if "model" in snippet else {**copy.deepcopy(base), **snippet}
        file = tmp_path / f"snippet-{n}.yaml"
        file.write_text(yaml.safe_dump(raw))
        load_config(file)


def test_guide_names_the_files_and_placeholders_it_asks_to_replace():
    guide = README.read_text()
    for name in ("kuberay-rayjob.yaml", "kuberay-raycluster.yaml", "aws-gpu.yaml", "docker/Dockerfile", "BARK_MODEL"):
        assert name in guide
    image = _load(RAYJOB)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    assert image in guide and "ImageId" in guide
