"""Where each stage replica runs: its Ray resources and scheduling strategy.

With ``placement.strategy: none`` every replica is a plain Ray actor with its own
``num_cpus`` / ``num_gpus`` / ``resources``, and Ray's default scheduler picks its
node. With ``PACK``, ``SPREAD``, ``STRICT_PACK`` or ``STRICT_SPREAD`` the job first
reserves one Ray placement group holding a bundle per replica (semantic replicas
first, then coarse, fine, codec), waits up to ``placement.timeout_s`` for the
cluster to fit it, and then starts each replica inside its own bundle.

A bundle holds exactly what its replica asks for, so the replica owns it whole.
Ray refuses bundles with nothing in them; a replica that asks for nothing (no GPU
share on a CPU-only cluster, ``num_cpus: 0``, no custom resources) gets a token
CPU share (``MIN_BUNDLE_CPU``) in both its bundle and its own request. The
replica's ``num_cpus`` is always passed explicitly: an actor that leaves it unset
needs one whole CPU to be *created*, which a bundle without a CPU cannot give.

When a node dies, Ray moves the bundles that lived there to nodes with room for
them, restarts their actors there (``max_restarts``), and retries the calls that
were running on them (``max_task_retries``); outputs stored only on the dead node
are re-made by re-running the calls that made them (lineage reconstruction,
which for actor calls also needs ``max_task_retries`` above 0).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pipeline.config import ConfigError, JobConfig
from workers.config import STAGE_NAMES, StageName

log = logging.getLogger(__name__)

MIN_BUNDLE_CPU = 0.01  # a replica that asks for nothing still needs a non-empty bundle
RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")  # set by num_cpus/num_gpus, not `resources`


def resolve_gpu_share(config: JobConfig, stage: StageName, cluster_gpus: float) -> float:
    """GPU share per replica; 'auto' takes one GPU where the cluster has any."""
    requested = config.stages.of(stage).num_gpus
    if requested == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    if requested > 0 and cluster_gpus <= 0:
        raise ConfigError(f"stages.{stage}.num_gpus: asks for {requested} GPU but the Ray cluster has none")
    return float(requested)


@dataclass(frozen=True)
class ReplicaRequest:
    """The Ray resources of one stage replica."""

    stage: StageName
    replica: int
    num_cpus: float
    num_gpus: float
    resources: dict[str, float]

    @property
    def bundle(self) -> dict[str, float]:
        """Its placement-group bundle: exactly what it asks for, zeros left out."""
        bundle = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        return {name: amount for name, amount in bundle.items() if amount > 0}


def replica_requests(config: JobConfig, cluster_gpus: float, *, in_group: bool) -> list[ReplicaRequest]:
    """Every replica's request, stage by stage in pipeline order (the bundle order)."""
    requests = []
    for stage in STAGE_NAMES:
        stage_config = config.stages.of(stage)
        reserved = sorted(set(stage_config.resources) & set(RESERVED_RESOURCES))
        if reserved:
            raise ConfigError(
                f"stages.{stage}.resources: {', '.join(reserved)} cannot be a custom resource; "
                "use num_cpus / num_gpus"
            )
        gpus = resolve_gpu_share(config, stage, cluster_gpus)
        resources = {name: float(amount) for name, amount in stage_config.resources.items() if amount > 0}
        cpus = float(stage_config.num_cpus)
        if in_group and cpus == 0 and gpus == 0 and not resources:
            cpus = MIN_BUNDLE_CPU
        requests += [ReplicaRequest(stage, index, cpus, gpus, resources) for index in range(stage_config.replicas)]
    return requests


class StagePlacement:
    """The Ray ``.options()`` of every stage replica, and the placement group behind them.

    Creating it with a strategy other than ``none`` reserves the group and waits for
    it (raising ``ConfigError`` when the cluster cannot fit it within
    ``placement.timeout_s``); ``remove()`` gives the reservation back.
    """

    def __init__(self, config: JobConfig, cluster_gpus: float) -> None:
        self.config = config
        self.cluster_gpus = cluster_gpus
        self.strategy = config.placement.strategy
        requests = replica_requests(config, cluster_gpus, in_group=self.strategy != "none")
        self.requests = {(r.stage, r.replica): r for r in requests}
        self.bundle_index = {(r.stage, r.replica): index for index, r in enumerate(requests)}
        self.group: PlacementGroup | None = None
        if self.strategy == "none":
            _warn_unplaceable(requests)
        else:
            self.group = self._reserve(requests)

    def _reserve(self, requests: list[ReplicaRequest]) -> PlacementGroup:
        bundles = [r.bundle for r in requests]
        timeout = self.config.placement.timeout_s
        group = placement_group(bundles, strategy=self.strategy, name=f"bark-pipeline-{uuid.uuid4().hex[:12]}")
        if not group.wait(timeout_seconds=timeout):
            remove_placement_group(group)  # a pending group would otherwise take the resources later
            raise ConfigError(f"placement.strategy: {self.strategy} {_misfit(requests, self.strategy, timeout)}")
        log.info("placement group %s (%s) ready: %d bundles", group.id.hex(), self.strategy, len(bundles))
        return group

    def options(self, stage: StageName, replica: int) -> dict:
        request = self.requests[(stage, replica)]
        stage_config = self.config.stages.of(stage)
        options = {
            "num_gpus": request.num_gpus,
            "num_cpus": request.num_cpus,
            "resources": dict(request.resources),
            "max_restarts": stage_config.max_restarts,
            "max_task_retries": stage_config.max_task_retries,
        }
        if self.group is not None:
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.group,
                placement_group_bundle_index=self.bundle_index[(stage, replica)],
                placement_group_capture_child_tasks=False,
            )
        return options

    def remove(self) -> None:
        """Releases what the placement reserved (nothing without a placement group); idempotent."""
        if self.group is None:
            return
        group, self.group = self.group, None
        try:
            remove_placement_group(group)
        except Exception as exc:  # noqa: BLE001 - shutting down: Ray may already be gone
            log.warning("could not remove placement group %s: %s", group.id.hex(), exc)


# -- explaining what does not fit ------------------------------------------------


def _alive_nodes() -> list[dict[str, float]]:
    """Each live node's total resources (Ray's per-node bookkeeping entries left out)."""
    nodes = []
    for node in ray.nodes():
        if node.get("Alive"):
            resources = node.get("Resources", {})
            nodes.append({k: v for k, v in resources.items() if not k.startswith("node:") and "_group_" not in k and k != "bundle"})
    return nodes


def _fits(request: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(name, 0.0) + 1e-9 >= amount for name, amount in request.items())


def _total(bundles: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for bundle in bundles:
        for name, amount in bundle.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def _fmt(resources: dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k in ("CPU", "GPU") or not k.endswith("memory")}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}" if shown else "{}"


def _misfit(requests: list[ReplicaRequest], strategy: str, timeout: float) -> str:
    """One line: what the group asked for, what the cluster has, and the first reason it cannot fit."""
    bundles = [r.bundle for r in requests]
    asked = _total(bundles)
    nodes = _alive_nodes()
    have = _total(nodes)
    free = {k: v for k, v in ray.available_resources().items() if k in asked}
    reasons = []
    for r in requests:
        if not any(_fits(r.bundle, node) for node in nodes):
            reasons.append(f"stages.{r.stage} replica {r.replica} bundle {_fmt(r.bundle)} fits on no node")
            break
    short = {k: (v, have.get(k, 0.0)) for k, v in asked.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        reasons.append("the cluster is short of " + ", ".join(f"{k} ({a:g} asked, {h:g} there)" for k, (a, h) in sorted(short.items())))
    if strategy == "STRICT_PACK" and nodes and not any(_fits(asked, node) for node in nodes):
        largest = max(nodes, key=lambda node: sum(min(node.get(k, 0.0), v) / v for k, v in asked.items()))
        reasons.append(f"STRICT_PACK needs all of it on one node, the largest has {_fmt({k: largest.get(k, 0.0) for k in asked})}")
    if strategy == "STRICT_SPREAD":
        hosts = sum(1 for node in nodes if any(_fits(bundle, node) for bundle in bundles))
        if len(bundles) > hosts:
            reasons.append(f"STRICT_SPREAD needs {len(bundles)} nodes that can each hold a bundle, the cluster has {hosts}")
    if not reasons:
        reasons.append("the resources are there but taken by other work (see `ray status`)")
    return (
        f"group of {len(bundles)} bundles did not fit within {timeout:g} s: asks {_fmt(asked)} in all; "
        f"the cluster has {_fmt({k: have.get(k, 0.0) for k in asked})} ({_fmt(free)} free) "
        f"on {len(nodes)} nodes; {'; '.join(reasons)}"
    )


def _warn_unplaceable(requests: list[ReplicaRequest]) -> None:
    """Without a group Ray waits silently for a node that can host a replica: say so when none can today.

    Only a warning: an autoscaling cluster may yet add such a node.
    """
    try:
        nodes = _alive_nodes()
    except Exception:  # noqa: BLE001 - a diagnostic only
        return
    for r in requests:
        request = {"CPU": r.num_cpus, "GPU": r.num_gpus, **r.resources}
        request = {k: v for k, v in request.items() if v > 0}
        if request and nodes and not any(_fits(request, node) for node in nodes):
            largest = max(nodes, key=lambda n: (n.get("GPU", 0.0), n.get("CPU", 0.0)))
            log.warning(
                "stages.%s replica %d asks for %s, which no node of the Ray cluster has now (largest %s): "
                "it waits until such a node joins",
                r.stage, r.replica, _fmt(request), _fmt(largest),
            )
