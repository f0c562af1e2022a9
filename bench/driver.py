"""The driver ceiling: how many chunks per second one driver can feed, with the stages made instant.

The real job (``NarrationJob``: planner, scheduler, item writers, ledger and
manifest, writing real files to a local folder) runs against stage actors whose
models are replaced by instant stand-ins (``bench/standins.py``), on a simulated
multi-node Ray cluster (``ray.cluster_utils.Cluster``), with 1, 8 and 32 replicas
per stage (one writer per codec replica). The input is a JSONL dataset of short
one-chunk rows. For each layout it prints the chunks per second sustained after
warm-up (the 10%..90% stretch of the items), the driver process's CPU seconds per
chunk over the same stretch (``time.process_time``: every thread of the driver,
Ray's own included), and how many GPUs that rate would keep busy at
``--chunks-per-gpu-s`` chunks per second per GPU.

Then it checks that audio never passes through the driver: one item of
``--long-chunks`` chunks of ``--long-audio-seconds`` each (10 minutes by default)
against one of a single chunk, the driver's RSS growth and CPU seconds for each.

    python bench/driver.py                                  # 1, 8, 32 replicas, 4 nodes, 3000 rows each
    python bench/driver.py --replicas 1 --nodes 1 --items 50 --long-chunks 3 --json out.json   # smoke size
    python bench/driver.py --replicas 8 --profile           # cProfile of the driver's loop (CPU time), top functions

Use ``--items`` well above the in-flight bound: with fewer, every item is sent before
the sustained stretch begins and the figures leave the sending out. The job sends the
chunks one turn of its loop has room for as a group (``--max-group``, the scheduler's
``max_group``): one call per stage and one to the writer for the group. Two reference
runs of Ray alone (the same five calls per chunk, and per group of 16, no job around
them) say how much of the driver's CPU is Ray's and how much the job's.

On a machine with few cores the stand-in actors, the writers and Ray's own
processes share the CPUs with the driver, so the wall-clock rate is a floor; the
driver's CPU per chunk is the figure that carries to a cluster, where the driver
has its own core: ``1 / cpu_per_chunk`` is its ceiling there.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path[:0] = [p for p in (str(REPO), str(BENCH)) if p not in sys.path]

from common import DEFAULT_MODELS_DIR, TEXTS  # noqa: E402

# The engine goal (docs/benchmarks.md, bench/engines.py): bark-small at 260x real time on one
# H200; with chunks of about 10 s of audio that is 26 chunks per second per GPU.
ENGINE_GOAL_RTF = 260.0
CHUNK_AUDIO_S = 10.0
DEFAULT_CHUNKS_PER_GPU_S = ENGINE_GOAL_RTF / CHUNK_AUDIO_S
SAMPLE_EVERY_S = 0.05  # how often the sampler thread reads the driver's counters
WARM, COOL = 0.1, 0.9  # the sustained stretch: from 10% of the items done to 90%
NODE = {"num_cpus": 8, "num_gpus": 8}  # each simulated worker node (logical: nothing runs on a GPU)
MAX_GROUP = 16  # the scheduler's default max_group; also the chunks per call of the grouped Ray-alone run
OBJECT_STORE_BYTES = 256 << 20  # per simulated node; Ray's default (30% of RAM each) would not fit five


@dataclass(frozen=True)
class Sample:
    t: float  # perf_counter seconds
    cpu: float  # driver process CPU seconds (process_time)
    rss: int  # driver resident bytes now
    items: int  # items settled (ok or failed)
    chunks: int  # chunks of the items written ok
    ready: bool  # the stage actors and writers are up (the job's start-up is behind it)


@dataclass(frozen=True)
class LayoutResult:
    """One layout's run: counted things first, then the measured rates."""

    replicas: int
    nodes: int
    actors: int  # stage actors plus writers
    in_flight: int
    group: int  # most chunks per call (scheduler.max_group, capped by the replicas it must feed)
    items: int
    ok: int
    failed: int
    files: int  # audio files in the output
    manifest_ok: int  # distinct ids recorded ok in the manifest
    chunks: int
    audio_s_per_chunk: float
    chunks_per_s: float  # sustained, wall clock
    cpu_ms_per_chunk: float  # driver CPU over the same stretch
    cpu_bound_chunks_per_s: float  # 1 / cpu per chunk: the rate with a whole core for the driver
    gpus_fed: float  # chunks_per_s / chunks per GPU second
    gpus_fed_cpu_bound: float
    startup_s: float  # job start to the first item written (actors starting)
    wall_s: float


@dataclass(frozen=True)
class ItemResult:
    """One item through the driver, for the audio-never-passes-through check."""

    chunks: int
    audio_s: float
    driver_cpu_s: float  # from the actors being up to the item written
    cpu_ms_per_chunk: float
    rss_growth_mb: float  # peak RSS during the job over the RSS before it
    ok: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 32], help="replicas per stage, one run each")
    parser.add_argument("--nodes", type=int, default=4, help="simulated worker nodes (1: the head node alone)")
    parser.add_argument("--items", type=int, default=3000, help="one-chunk rows per run")
    parser.add_argument("--audio-seconds", type=float, default=1.0, help="audio per chunk in the throughput runs")
    parser.add_argument(
        "--in-flight", type=int,
        help="scheduler.max_chunks_in_flight (default: 4 groups of --max-group per replica, at least 64)",
    )  # fmt: skip
    parser.add_argument("--max-group", type=int, default=MAX_GROUP, help=f"scheduler.max_group (default {MAX_GROUP}; 1: no groups)")
    parser.add_argument(
        "--chunks-per-gpu-s", type=float, default=DEFAULT_CHUNKS_PER_GPU_S,
        help=f"chunks one GPU makes per second (default {DEFAULT_CHUNKS_PER_GPU_S:g}: bark-small's engine goal, "
        f"{ENGINE_GOAL_RTF:g}x real time on one H200, over {CHUNK_AUDIO_S:g} s chunks)",
    )  # fmt: skip
    parser.add_argument("--long-chunks", type=int, default=60, help="chunks of the long item (0: skip the audio check)")
    parser.add_argument("--long-audio-seconds", type=float, default=10.0, help="audio per chunk in the audio check")
    parser.add_argument("--floor-chunks", type=int, default=1500, help="chunks of the Ray-alone reference run (0: skip)")
    parser.add_argument("--model", type=Path, help="the checkpoint whose tokenizer and settings the driver loads")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile the driver's loop thread (its CPU time) in the last layout; print the top"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- setup


def start_cluster(nodes: int):
    """A head (where the driver is) and ``nodes`` worker nodes, each a real raylet on this machine.
    The stand-ins must be importable in every worker: PYTHONPATH is set before the raylets start."""
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), str(BENCH), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    import ray

    head = {"num_cpus": 2, "num_gpus": 0, "object_store_memory": OBJECT_STORE_BYTES}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(nodes - 1 if nodes > 1 else 0):
        cluster.add_node(**NODE, object_store_memory=OBJECT_STORE_BYTES)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    return cluster


def tiny_checkpoint(model: Path | None) -> Path:
    if model is not None:
        return model
    from workers.tiny_model import MARKER_FILE, make_tiny_model

    directory = DEFAULT_MODELS_DIR / "tiny-seed0"
    return directory if (directory / MARKER_FILE).is_file() else make_tiny_model(directory, seed=0, overwrite=True)


def job_config(workdir: Path, checkpoint: Path, replicas: int, in_flight: int, max_group: int, audio_seconds: float, spread: bool):
    """configs/tiny.yaml with stand-in-sized stages: no GPU, no CPU reserved (128 replicas fit
    anywhere), one chunk's audio fixed by the semantic length, and replicas spread over the nodes."""
    import yaml

    from pipeline.config import load_config
    from standins import semantic_tokens_for

    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"] = {"source": str(checkpoint), "format": "hf"}
    raw["stages"] = {s: {"replicas": replicas, "num_gpus": 0, "num_cpus": 0} for s in ("semantic", "coarse", "fine", "codec")}
    raw["sampling"]["semantic"].update(max_new_tokens=semantic_tokens_for(audio_seconds), stop_at_eos=False)
    raw["scheduler"] = {"max_chunks_in_flight": in_flight, "max_group": max_group}
    raw["placement"] = {"strategy": "SPREAD" if spread else "none"}
    path = workdir / f"job-{replicas}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def write_rows(path: Path, n: int) -> Path:
    """``n`` dataset rows, each one short sentence: one chunk per item."""
    with open(path, "w", encoding="utf-8") as file:
        for i in range(n):
            file.write(json.dumps({"id": f"row-{i:06d}", "text": TEXTS[i % len(TEXTS)]}) + "\n")
    return path


def long_text(chunks: int) -> str:
    """``chunks`` paragraphs, one sentence each: the planner makes one chunk of each."""
    return "\n\n".join(TEXTS[i % len(TEXTS)] for i in range(chunks))


def rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Sampler:
    """Reads the driver's counters from a thread while the job runs (the job's loop is untouched)."""

    def __init__(self, job) -> None:
        self.job = job
        self.summary = job.progress.summary
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _take(self) -> None:
        s = self.summary
        ready = self.job.writers is not None
        self.samples.append(Sample(time.perf_counter(), time.process_time(), rss_bytes(), s.ok + s.failed, s.chunks, ready))

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY_S):
            self._take()


def run_job(config, output: Path, items, profile: bool = False):
    """The real job, with the stand-ins as its stage actors; returns its summary and the samples."""
    from pipeline.job import NarrationJob
    from standins import STANDIN_CLASSES

    job = NarrationJob(config, str(output), quiet=True, worker_classes=STANDIN_CLASSES)
    profiler = cProfile.Profile(time.thread_time) if profile else None  # the loop's CPU, not its waits
    with Sampler(job) as sampler:
        if profiler:
            profiler.enable()
        summary = job.run(items)
        if profiler:
            profiler.disable()
    return summary, sampler.samples, profiler


def sustained(samples: list[Sample], total: int) -> tuple[float, float, Sample, Sample]:
    """Chunks per second and driver CPU seconds per chunk between WARM and COOL of the items done."""
    first = next(s for s in samples if s.items >= max(1, WARM * total))
    last = next(s for s in samples if s.items >= COOL * total)
    if last.chunks <= first.chunks:  # too few items for a stretch: the whole run after the first item
        last = samples[-1]
    chunks = max(1, last.chunks - first.chunks)
    return chunks / max(last.t - first.t, 1e-9), (last.cpu - first.cpu) / chunks, first, last


def count_output(output: Path) -> tuple[int, int]:
    """Audio files written, and distinct ids the manifest records ok."""
    files = sum(1 for p in output.glob("*.wav"))
    ids = set()
    with open(output / "manifest.jsonl", encoding="utf-8") as manifest:
        for line in manifest:
            entry = json.loads(line)
            if entry["status"] == "ok":
                ids.add(entry["id"])
    return files, len(ids)


# ---------------------------------------------------------------------------------------------- runs


def run_layout(args, workdir: Path, checkpoint: Path, replicas: int, profile: bool) -> LayoutResult:
    from pipeline.datasets import iter_dataset_items
    from pipeline.scheduler import group_limit

    in_flight = args.in_flight or max(64, 4 * args.max_group * replicas)
    config = job_config(workdir, checkpoint, replicas, in_flight, args.max_group, args.audio_seconds, spread=args.nodes > 1)
    rows = write_rows(workdir / f"rows-{replicas}.jsonl", args.items)
    output = workdir / f"out-{replicas}"
    summary, samples, profiler = run_job(config, output, iter_dataset_items(str(rows)), profile)
    rate, cpu, _, _ = sustained(samples, args.items)
    files, manifest_ok = count_output(output)
    first_item = next(s for s in samples if s.items >= 1)
    if profiler:
        print_profile(profiler, summary.chunks)
    return LayoutResult(
        replicas=replicas, nodes=args.nodes, actors=5 * replicas, in_flight=in_flight,
        group=group_limit(config.scheduler, replicas), items=args.items,
        ok=summary.ok, failed=summary.failed, files=files, manifest_ok=manifest_ok, chunks=summary.chunks,
        audio_s_per_chunk=round(summary.audio_s / max(summary.chunks, 1), 3),
        chunks_per_s=round(rate, 1), cpu_ms_per_chunk=round(cpu * 1e3, 3),
        cpu_bound_chunks_per_s=round(1 / cpu, 1) if cpu > 0 else float("inf"),
        gpus_fed=round(rate / args.chunks_per_gpu_s, 1), gpus_fed_cpu_bound=round(1 / cpu / args.chunks_per_gpu_s, 1) if cpu > 0 else float("inf"),
        startup_s=round(first_item.t - samples[0].t, 1), wall_s=round(samples[-1].t - samples[0].t, 1),
    )  # fmt: skip


def run_item(args, workdir: Path, checkpoint: Path, chunks: int) -> ItemResult:
    """One item of ``chunks`` chunks of ``--long-audio-seconds`` each, one replica per stage."""
    from pipeline.sources import Item

    config = job_config(workdir, checkpoint, 1, 64, args.max_group, args.long_audio_seconds, spread=args.nodes > 1)
    output = workdir / f"item-{chunks}"
    summary, samples, _ = run_job(config, output, iter([Item(id=f"long-{chunks}", text=long_text(chunks))]))
    before = next(s for s in samples if s.ready)
    return ItemResult(
        chunks=summary.chunks, audio_s=round(summary.audio_s, 1), driver_cpu_s=round(samples[-1].cpu - before.cpu, 3),
        cpu_ms_per_chunk=round((samples[-1].cpu - before.cpu) / max(summary.chunks, 1) * 1e3, 2),
        rss_growth_mb=round((max(s.rss for s in samples) - before.rss) / 2**20, 1), ok=summary.ok == 1,
    )  # fmt: skip


@dataclass(frozen=True)
class FloorResult:
    """Ray's own cost of a chunk: the same five calls per group, none of the job around them."""

    chunks: int
    group: int  # chunks per call (1: five calls per chunk)
    chunks_per_s: float
    cpu_ms_per_chunk: float


def ray_floor(chunks: int, in_flight: int, group: int = 1) -> FloorResult:
    """Four chained stand-in calls and a fifth for the writer per group of ``group`` chunks (one
    output ref per chunk at each stage), ObjectRefs passed actor to actor, one ``ray.wait`` per
    receipt, and nothing else: what any driver on Ray pays per chunk."""
    import ray

    from standins import STANDIN_CLASSES
    from workers.config import ModelConfig, StageConfig
    from workers.records import CodecRequest, GroupEntry

    @ray.remote(num_cpus=0)
    class Sink:
        """The writer's place: takes the group's audio, returns one receipt for all of it."""

        async def write(self, *audio) -> list[int]:
            return [len(a.audio) for a in audio]

    model, stage = ModelConfig(source="none"), StageConfig(num_gpus=0)
    actors = [cls.options(num_cpus=0).remote(model, stage) for cls in STANDIN_CLASSES.values()]
    sink = Sink.remote()
    ray.get([a.placement.remote() for a in actors])
    from pipeline.scheduler import ChunkWork, stage_requests
    from workers.config import SamplingSet

    work = ChunkWork(key="floor", text_ids=[1, 2, 3], voice=None, seed=0, sampling=SamplingSet())
    requests = [request for _, request in stage_requests(work)]
    assert isinstance(requests[-1], CodecRequest)
    pending: set = set()
    sent = done = 0
    started, cpu = time.perf_counter(), time.process_time()
    while done < chunks:
        while sent < chunks and len(pending) * group < in_flight:
            n = min(group, chunks - sent)
            refs: list = []
            for actor, request in zip(actors, requests):
                entries = [GroupEntry(request=request, upstream=i if refs else None) for i in range(n)]
                out = actor.process_group.options(num_returns=n).remote(entries, *refs)
                refs = [out] if n == 1 else list(out)
            pending.add(sink.write.remote(*refs))
            sent += n
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            done += len(ray.get(ref))
            pending.discard(ref)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    for actor in [*actors, sink]:
        ray.kill(actor)
    return FloorResult(chunks, group, round(chunks / wall, 1), round(cpu / chunks * 1e3, 3))


def print_profile(profiler: cProfile.Profile, chunks: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).sort_stats("tottime")
    stats.print_stats(25)
    print(f"\ndriver profile ({chunks} chunks), the loop thread's CPU seconds, by own time:\n{out.getvalue()}", flush=True)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    import ray

    return {
        "nproc": os.cpu_count(), "cpu_model": model, "python": platform.python_version(), "ray": ray.__version__,
        "date": datetime.date.today().isoformat(),
    }  # fmt: skip


def print_table(layouts: list[LayoutResult], items: list[ItemResult], floors: list[FloorResult], args) -> None:
    print(f"\ndriver ceiling: stand-in stages, {args.nodes} node(s), {args.items} one-chunk rows per run, "
          f"{args.audio_seconds:g} s of audio per chunk; GPUs at {args.chunks_per_gpu_s:g} chunks/s each")  # fmt: skip
    header = ("replicas/stage", "actors", "in flight", "group", "items ok", "files", "chunks/s", "driver CPU ms/chunk",
              "CPU-bound chunks/s", "GPUs fed", "GPUs fed (CPU-bound)", "start-up s")  # fmt: skip
    print(" | ".join(header))
    for r in layouts:
        row = (r.replicas, r.actors, r.in_flight, r.group, f"{r.ok}/{r.items}", r.files, r.chunks_per_s, r.cpu_ms_per_chunk,
               r.cpu_bound_chunks_per_s, r.gpus_fed, r.gpus_fed_cpu_bound, r.startup_s)  # fmt: skip
        print(" | ".join(str(v) for v in row))
    for f in floors:
        calls = "5 chained calls per chunk" if f.group == 1 else f"5 chained calls per group of {f.group}"
        print(f"Ray alone ({calls}, no job): {f.chunks_per_s} chunks/s, "
              f"{f.cpu_ms_per_chunk} driver CPU ms/chunk ({f.chunks} chunks, 1 actor per stage)")  # fmt: skip
    if items:
        print("\naudio through the driver? one item each, stand-in stages, 1 replica per stage")
        print("chunks | audio s | ok | driver CPU s | driver CPU ms/chunk | driver RSS growth MB")
        for i in items:
            print(f"{i.chunks} | {i.audio_s} | {i.ok} | {i.driver_cpu_s} | {i.cpu_ms_per_chunk} | {i.rss_growth_mb}")
    print(flush=True)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    checkpoint = tiny_checkpoint(args.model)
    cluster = start_cluster(args.nodes)
    import ray

    try:
        with tempfile.TemporaryDirectory(prefix="bark-driver-") as tmp:
            workdir = Path(tmp)
            floors = [ray_floor(args.floor_chunks, 64, group) for group in (1, MAX_GROUP)] if args.floor_chunks > 0 else []
            layouts = []
            for n, replicas in enumerate(args.replicas):
                layouts.append(run_layout(args, workdir, checkpoint, replicas, args.profile and n == len(args.replicas) - 1))
                print(json.dumps(asdict(layouts[-1])), flush=True)
            items = []
            if args.long_chunks > 0:
                items = [run_item(args, workdir, checkpoint, 1), run_item(args, workdir, checkpoint, args.long_chunks)]
    finally:
        ray.shutdown()
        cluster.shutdown()
    print_table(layouts, items, floors, args)
    results = {
        "machine": machine(),
        "command": "python bench/driver.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "chunks_per_gpu_s": args.chunks_per_gpu_s,
        "layouts": [asdict(r) for r in layouts],
        "ray_floor": asdict(floors[0]) if floors else None,
        "ray_floor_grouped": asdict(floors[1]) if floors else None,
        "items": [asdict(i) for i in items],
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
