"""The ready configs in configs/ load and say what their comments promise."""

from __future__ import annotations

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


def test_a_chunk_budget_over_the_models_text_window_is_refused_before_any_work(tiny_model_dir, tmp_path):
    from pipeline.config import ConfigError, JobConfig
    from pipeline.job import NarrationJob

    config = JobConfig.model_validate({"model": {"source": str(tiny_model_dir)}, "text": {"max_tokens": 257}})
    with pytest.raises(ConfigError, match=r"text.max_tokens: 257 is over the model's text window of 256 tokens"):
        NarrationJob(config, str(tmp_path / "out"))
