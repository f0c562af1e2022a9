"""The ready configs in configs/ load and say what their comments promise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["tiny", "bark-small", "bark", "gpu-1", "gpu-4", "gpu-8"])
def test_config_loads(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.seed == 0
    assert config.sampling.fine.temperature == 0.5
    assert config.text.max_tokens <= 256


def test_a_local_ray_starts_without_the_dashboard_unless_metrics_are_asked_for():
    from pipeline.config import RayConfig

    assert RayConfig().init_options() == {"address": None, "num_cpus": None, "num_gpus": None, "include_dashboard": False}
    with_metrics = RayConfig(metrics_export_port=8080).init_options()
    assert with_metrics["include_dashboard"] is True and with_metrics["_metrics_export_port"] == 8080
    assert RayConfig(metrics_export_port=8080, dashboard=False).init_options()["include_dashboard"] is False
    assert RayConfig(dashboard=True).init_options()["include_dashboard"] is True


def test_tiny_is_offline_and_local():
    config = load_config(CONFIGS / "tiny.yaml")
    assert config.model.make_tiny_if_missing and config.model.format == "hf"
    assert Path(config.model.source) == CONFIGS.parent / "models" / "tiny"
    assert all(config.stages.of(s).batch_size <= 4 for s in ("semantic", "coarse", "fine", "codec"))


@pytest.mark.parametrize(("name", "hub_id"), [("bark-small", "suno/bark-small"), ("bark", "suno/bark")])
def test_gpu_configs(name, hub_id):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.model.source == hub_id
    stages = config.stages
    assert stages.semantic.num_gpus == stages.coarse.num_gpus == 1
    assert stages.fine.num_gpus == stages.codec.num_gpus == 0.5
    assert stages.semantic.dtype == stages.coarse.dtype == "float16"
    assert stages.codec.dtype == "float32"


NUMBERS = {"ONE": 1, "TWO": 2, "THREE": 3, "FOUR": 4, "EIGHT": 8}
GPU_CONFIGS = ["bark-small", "bark", "gpu-1", "gpu-4", "gpu-8"]


def _fewest_gpus(config) -> int:
    """The fewest GPUs the stage replicas fit on: whole-GPU replicas one each (or more), the fractional
    ones packed first-fit, largest first, as Ray can place fractions of one device together."""
    demands = sorted(
        (float(config.stages.of(s).num_gpus) for s in ("semantic", "coarse", "fine", "codec")
         for _ in range(config.stages.of(s).replicas)),
        reverse=True,
    )  # fmt: skip
    free: list[float] = []
    for demand in demands:
        for i, left in enumerate(free):
            if demand <= left + 1e-9 and demand < 1:
                free[i] = left - demand
                break
        else:
            free.extend([0.0] * (int(demand) - 1) if demand >= 1 else [])
            free.append(1.0 - demand if demand < 1 else 0.0)
    return len(free)


@pytest.mark.parametrize("name", GPU_CONFIGS)
def test_each_config_asks_for_the_gpus_its_comment_and_the_readme_state(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    header = "".join(line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines(keepends=True) if line.startswith("#"))
    stated = re.search(r"\b(ONE|TWO|THREE|FOUR|EIGHT) GPUs?\b", header)
    assert stated, f"{name}.yaml: its header comment names no GPU count (ONE GPU, FOUR GPUs, ...)"
    [row] = [line for line in (CONFIGS.parent / "README.md").read_text().splitlines() if line.startswith(f"| `configs/{name}.yaml` |")]
    in_readme = int(re.search(r"\| (\d+) GPUs? \|", row).group(1))
    assert _fewest_gpus(config) == NUMBERS[stated.group(1)] == in_readme


def test_a_chunk_budget_over_the_models_text_window_is_refused_before_any_work(tiny_model_dir, tmp_path):
    from pipeline.config import ConfigError, JobConfig
    from pipeline.job import NarrationJob

    config = JobConfig.model_validate({"model": {"source": str(tiny_model_dir)}, "text": {"max_tokens": 257}})
    with pytest.raises(ConfigError, match=r"text.max_tokens: 257 is over the model's text window of 256 tokens"):
        NarrationJob(config, str(tmp_path / "out"))
