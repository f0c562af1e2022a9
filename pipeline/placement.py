"""Where each stage replica runs: its Ray resources and scheduling strategy."""

from __future__ import annotations

from pipeline.config import ConfigError, JobConfig, StageName


def resolve_gpu_share(config: JobConfig, stage: StageName, cluster_gpus: float) -> float:
    """GPU share per replica; 'auto' takes one GPU where the cluster has any."""
    requested = config.stages.of(stage).num_gpus
    if requested == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    if requested > 0 and cluster_gpus <= 0:
        raise ConfigError(f"stages.{stage}.num_gpus: asks for {requested} GPU but the Ray cluster has none")
    return float(requested)


class StagePlacement:
    """The Ray ``.options()`` of every stage replica."""

    def __init__(self, config: JobConfig, cluster_gpus: float) -> None:
        self.config = config
        self.cluster_gpus = cluster_gpus

    def options(self, stage: StageName, replica: int) -> dict:
        stage_config = self.config.stages.of(stage)
        return {
            "num_gpus": resolve_gpu_share(self.config, stage, self.cluster_gpus),
            "num_cpus": stage_config.num_cpus,
            "resources": dict(stage_config.resources),
            "max_restarts": stage_config.max_restarts,
            "max_task_retries": stage_config.max_task_retries,
        }

    def remove(self) -> None:
        """Releases what the placement reserved (nothing without a placement group)."""
