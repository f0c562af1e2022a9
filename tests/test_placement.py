"""Placement on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``).

Every node is a real raylet on this machine with logical GPUs, so Ray assigns
GPU ids and ``CUDA_VISIBLE_DEVICES`` exactly as on GPU nodes. The stage actors
are the real ones (``StagePipeline``), asked where they landed through their
``placement()`` method. The last test removes a worker node in the middle of a
real job.

This module runs its own cluster: it shuts down any Ray the session started
before it and brings that back (as ``conftest.ray_session`` makes it) at its end.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
import ray
import soundfile as sf
import yaml
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group_table

from pipeline.config import ConfigError, JobConfig
from pipeline.job import NarrationJob
from pipeline.placement import MIN_BUNDLE_CPU, StagePlacement, replica_requests
from pipeline.scheduler import StagePipeline
from pipeline.sources import Item
from session_ray import start_test_ray
from tests.conftest import REPO

STAGES = ("semantic", "coarse", "fine", "codec")
GPU_NODE = {"num_cpus": 2, "num_gpus": 3}  # each worker node: 3 logical GPUs
N_GPU_NODES = 4
PINNED = "coarse_node"  # a custom resource only the first worker node has


class SimCluster:
    """A head without GPUs and ``N_GPU_NODES`` GPU worker nodes; the first also advertises ``PINNED``."""

    def __init__(self) -> None:
        # Ray's own node-failure detection (a dead node is noticed after about 15 s), but
        # every stage output over 1 kB is stored on the node that made it, as the audio and
        # tokens of real chunks are, rather than inlined into the driver: a dead node takes
        # its outputs with it.
        system = {"max_direct_call_object_size": 1000}
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "_system_config": system})
        self.pinned = self.cluster.add_node(**GPU_NODE, resources={PINNED: 1})
        for _ in range(N_GPU_NODES - 1):
            self.cluster.add_node(**GPU_NODE)
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, include_dashboard=False, log_to_driver=False)

    def worker_ids(self) -> set[str]:
        return {node.node_id for node in self.cluster.worker_nodes}

    def node(self, node_id: str):
        return next(node for node in self.cluster.worker_nodes if node.node_id == node_id)

    def replace(self, node) -> None:
        """Adds a node like a removed one, so later tests find the cluster as it was."""
        if node is self.pinned:
            self.pinned = self.cluster.add_node(**GPU_NODE, resources={PINNED: 1})
        else:
            self.cluster.add_node(**GPU_NODE)
        self.cluster.wait_for_nodes()

    def alive_ids(self) -> set[str]:
        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    def shutdown(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def sim():
    had_ray = ray.is_initialized()
    ray.shutdown()
    cluster = SimCluster()
    try:
        yield cluster
    finally:
        cluster.shutdown()
        if had_ray:  # the session's Ray, as tests/conftest.py's ray_session starts it
            start_test_ray()


def _config(tiny_model_dir, strategy: str, stages: dict | None = None, **top) -> JobConfig:
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw["model"]["make_tiny_if_missing"] = False
    raw["sampling"]["semantic"]["max_new_tokens"] = 12
    raw["output"]["subtitles"] = False
    raw["placement"] = {"strategy": strategy, "timeout_s": 60}
    for stage, fields in (stages or {}).items():
        raw["stages"][stage].update(fields)
    for key, value in top.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return JobConfig.model_validate(raw)


def _placements(config: JobConfig) -> dict[str, dict]:
    """Starts the stages as a job does, asks each replica where it is, stops them."""
    pipeline = StagePipeline(config)
    try:
        actors = [actor for replicas in pipeline.replicas.values() for actor in replicas]
        placements = ray.get([actor.placement.remote() for actor in actors], timeout=240)
    finally:
        pipeline.shutdown()
    return {f"{p['stage']}/{p['replica']}": p for p in placements}


def _groups_left(wait_s: float = 5.0) -> list[str]:
    """States of the placement groups still holding (or waiting for) resources, once removals settle."""
    deadline = time.monotonic() + wait_s
    while True:
        left = [g["state"] for g in placement_group_table().values() if g["state"] != "REMOVED"]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# -- without Ray: what each replica asks for --------------------------------------------


def test_bundles_hold_exactly_what_each_replica_asks_for(tiny_model_dir):
    config = _config(
        tiny_model_dir,
        "PACK",
        {"coarse": {"replicas": 2, "num_cpus": 1, "resources": {PINNED: 1}}, "fine": {"num_gpus": 0.5}, "codec": {"num_gpus": 0.5}},
    )
    requests = replica_requests(config, cluster_gpus=4, in_group=True)
    assert [(r.stage, r.replica) for r in requests] == [("semantic", 0), ("coarse", 0), ("coarse", 1), ("fine", 0), ("codec", 0)]
    assert [r.bundle for r in requests] == [
        {"GPU": 1.0},
        {"CPU": 1.0, "GPU": 1.0, PINNED: 1.0},
        {"CPU": 1.0, "GPU": 1.0, PINNED: 1.0},
        {"GPU": 0.5},
        {"GPU": 0.5},
    ]


def test_a_replica_that_asks_for_nothing_gets_a_token_cpu_share_in_a_group_only(tiny_model_dir):
    config = _config(tiny_model_dir, "SPREAD")
    in_group = replica_requests(config, cluster_gpus=0, in_group=True)
    assert all(r.bundle == {"CPU": MIN_BUNDLE_CPU} and r.num_cpus == MIN_BUNDLE_CPU for r in in_group)
    plain = replica_requests(config, cluster_gpus=0, in_group=False)
    assert all(r.num_cpus == 0 and r.num_gpus == 0 and r.bundle == {} for r in plain)


def test_cpu_or_gpu_as_a_custom_resource_is_refused_with_its_path(tiny_model_dir):
    config = _config(tiny_model_dir, "PACK", {"fine": {"resources": {"GPU": 1}}})
    with pytest.raises(ConfigError, match=r"^stages\.fine\.resources: GPU cannot be a custom resource"):
        replica_requests(config, cluster_gpus=4, in_group=True)


# -- on the simulated cluster ----------------------------------------------------------


def test_pack_puts_every_stage_on_one_node_and_fractional_stages_share_a_gpu(sim, tiny_model_dir):
    config = _config(tiny_model_dir, "PACK", {"fine": {"num_gpus": 0.5}, "codec": {"num_gpus": 0.5}})
    where = _placements(config)

    assert len({p["node_id"] for p in where.values()}) == 1, where
    assert where["semantic/0"]["node_id"] in sim.worker_ids()
    for p in where.values():
        assert len(p["gpu_ids"]) == 1 and p["cuda_visible_devices"] == p["gpu_ids"][0]
    fine, codec = where["fine/0"]["gpu_ids"], where["codec/0"]["gpu_ids"]
    assert fine == codec, "the two half-GPU stages should share one GPU"
    whole = {where["semantic/0"]["gpu_ids"][0], where["coarse/0"]["gpu_ids"][0]}
    assert len(whole) == 2 and fine[0] not in whole, where
    assert _groups_left() == []  # shutdown gave the reservation back


def test_strict_spread_puts_the_four_stages_on_four_nodes(sim, tiny_model_dir):
    # Ray's plain SPREAD is best effort (it may pair two bundles on a node); STRICT_SPREAD guarantees it.
    where = _placements(_config(tiny_model_dir, "STRICT_SPREAD"))

    nodes = [where[f"{stage}/0"]["node_id"] for stage in STAGES]
    assert len(set(nodes)) == 4 and set(nodes) <= sim.worker_ids(), nodes
    assert all(len(p["gpu_ids"]) == 1 for p in where.values())


@pytest.mark.parametrize(("strategy", "replicas"), [("none", 1), ("SPREAD", 2)])
def test_a_custom_resource_pins_a_stage_to_the_node_that_has_it(sim, tiny_model_dir, strategy, replicas):
    config = _config(tiny_model_dir, strategy, {"coarse": {"replicas": replicas, "resources": {PINNED: 0.5}}})
    where = _placements(config)

    coarse = [where[f"coarse/{index}"] for index in range(replicas)]
    assert {p["node_id"] for p in coarse} == {sim.pinned.node_id}
    assert len({p["gpu_ids"][0] for p in coarse}) == replicas
    if strategy == "SPREAD":  # the group holds the pinned bundles and the rest, all on worker nodes
        others = {where[f"{stage}/0"]["node_id"] for stage in ("semantic", "fine", "codec")}
        assert others <= sim.worker_ids()


@pytest.mark.parametrize(
    ("strategy", "stages", "reason"),
    [
        ("STRICT_PACK", {"coarse": {"replicas": 2}}, "STRICT_PACK needs all of it on one node, the largest has {GPU: 3}"),
        ("PACK", {"coarse": {"replicas": 10}}, "the cluster is short of GPU (13 asked, 12 there)"),
        ("SPREAD", {"fine": {"resources": {"tpu_node": 1}}}, "stages.fine replica 0 bundle {GPU: 1, tpu_node: 1} fits on no node"),
        # five GPU replicas, four GPU nodes (the head has no GPU)
        ("STRICT_SPREAD", {"coarse": {"replicas": 2}}, "STRICT_SPREAD needs 5 nodes that can each hold a bundle, the cluster has 4"),
    ],
)
def test_a_group_that_does_not_fit_fails_within_its_timeout_with_one_line(sim, tiny_model_dir, strategy, stages, reason):
    config = _config(tiny_model_dir, strategy, stages, placement={"strategy": strategy, "timeout_s": 2})
    started = time.monotonic()
    with pytest.raises(ConfigError) as failure:
        StagePlacement(config, ray.cluster_resources().get("GPU", 0))
    elapsed = time.monotonic() - started

    message = str(failure.value)
    assert "\n" not in message and message.startswith(f"placement.strategy: {strategy} group of")
    assert "did not fit within 2 s" in message and "the cluster has {" in message
    assert reason in message, message
    assert 2 <= elapsed < 10
    assert _groups_left() == []  # the pending group was withdrawn, not left to grab resources later


def test_without_a_group_a_replica_no_node_can_host_is_logged(sim, tiny_model_dir, caplog):
    config = _config(tiny_model_dir, "none", {"codec": {"num_gpus": 4}})
    with caplog.at_level("WARNING", logger="pipeline.placement"):
        placement = StagePlacement(config, ray.cluster_resources().get("GPU", 0))
    assert placement.group is None and "scheduling_strategy" not in placement.options("codec", 0)
    assert "stages.codec replica 0 asks for {GPU: 4}" in caplog.text


# -- a node dies mid-job -----------------------------------------------------------------

ITEMS = [
    Item(id=f"item-{n:02d}", text=f"Sentence number {n} is read aloud. Then it ends. A third one follows. And a fourth.")
    for n in range(6)
]


# coarse: a middle stage, whose lost outputs later chunks read as their history; codec: the last
# stage and the item writer placed beside it, restarted on another node with its arguments.
@pytest.mark.parametrize("doomed_stage", ["coarse", "codec"])
def test_removing_the_node_of_a_stage_mid_job_loses_and_repeats_nothing(sim, tiny_model_dir, tmp_path, monkeypatch, doomed_stage):
    # Calls in flight on a node that crashed fail fast until Ray has noticed the death
    # (about 15 s), and each failure spends one of the call's retries: a few retries
    # run out long before the actor is restarted elsewhere. The default
    # max_task_retries (-1) keeps retrying until the actor is back (or out of max_restarts).
    retries = {"batch_size": 2}
    config = _config(
        tiny_model_dir,
        "SPREAD",
        {stage: retries for stage in STAGES},
        scheduler={"max_chunks_in_flight": 2},
        text={"max_chars": 40},
        voice_mode="chained",  # later chunks also read the earlier chunks' outputs
    )
    final: list[dict] = []  # where every replica is when the job ends
    shutdown = StagePipeline.shutdown

    def record_then_shutdown(self):
        try:
            final.extend(self.placements())
        finally:
            shutdown(self)

    monkeypatch.setattr(StagePipeline, "shutdown", record_then_shutdown)
    out = tmp_path / "out"
    job = NarrationJob(config, str(out), quiet=True)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", job.run(iter(ITEMS))))
    thread.start()

    deadline = time.monotonic() + 240
    while job.progress.summary.ok < 1:
        assert thread.is_alive() and time.monotonic() < deadline, "the job did not get going"
        time.sleep(0.05)
    doomed_node = ray.get(job.pipeline.replicas[doomed_stage][0].placement.remote())["node_id"]
    assert doomed_node in sim.worker_ids()
    done_before = job.progress.summary.ok
    doomed = sim.node(doomed_node)
    sim.cluster.remove_node(doomed, allow_graceful=False)  # a crash, not a drain
    removed_at = time.monotonic()
    try:
        thread.join(timeout=300)
        assert not thread.is_alive(), "the job did not finish after the node died"
    finally:
        sim.replace(doomed)
    print(f"node removed after {done_before} of {len(ITEMS)} items; job finished {time.monotonic() - removed_at:.1f} s later")

    assert done_before < len(ITEMS), "the job was over before the node died: nothing was tested"
    summary = result["summary"]
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert (summary.ok, summary.failed) == (len(ITEMS), 0), [e["error"] for e in lines if e["error"]]
    assert Counter(e["id"] for e in lines) == Counter(item.id for item in ITEMS)
    assert all(e["status"] == "ok" and e["error"] is None for e in lines)
    assert sorted(p.name for p in out.glob("*.wav")) == sorted(f"{item.id}.wav" for item in ITEMS)
    for item in ITEMS:
        audio, rate = sf.read(out / f"{item.id}.wav", dtype="float32")
        meta = json.loads((out / f"{item.id}.json").read_text())
        assert rate == meta["sample_rate"] and len(audio) / rate == pytest.approx(meta["duration_s"], abs=1e-6)
        assert [c["voice"] for c in meta["chunks"]] == ["v2/en_speaker_6", "chunk 0", "chunk 1"]
    # Ray moved the dead node's bundle and restarted the stage's actor in it, on a live node.
    moved = next(p for p in final if p["stage"] == doomed_stage)
    assert moved["node_id"] != doomed_node and moved["node_id"] in sim.alive_ids()
    assert len(moved["gpu_ids"]) == 1
