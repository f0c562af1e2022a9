"""Throughput: this pipeline against the plain transformers way, same weights, texts and lengths.

Three ways through the same random-weight checkpoint (or a real one with
``--model``), the same texts, seeds, voice and sampling, and the same fixed
output lengths (semantic EOS off, exactly ``--semantic-tokens`` per chunk):

  (a) transformers ``BarkModel.generate``, one chunk at a time;
  (b) the same, ``--batch`` chunks per call (padded text, attention mask);
  (c) this pipeline (``StagePipeline``: one Ray actor per stage replica), with
      a sliding window of chunks in flight, at each ``--in-flight`` value.

Prints audio seconds per wall second for each, the ratios c/a and c/b (c at
the largest in-flight value), each stage's busy time, batch sizes and queue
depths, and writes ``throughput-<size>.json`` and ``throughput-<size>.png``
(throughput against chunks in flight; stage utilisation over time) to ``--out``.

    python bench/throughput.py                      # tiny, 16 chunks x 400 tokens (a few minutes on a CPU)
    python bench/throughput.py --size bark-small --chunks 4 --semantic-tokens 50 --batch 4 --in-flight 2 4
    python bench/throughput.py --size bark --device cuda --dtype bfloat16 --config configs/gpu-1.yaml \\
        --chunks 128 --in-flight 16 32 64 128

Audio seconds per CPU second are reported too: on a shared CPU they are less
skewed by other work than wall-clock figures (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "bench")) if p not in sys.path]

from common import DEFAULT_MODELS_DIR, SIZES, TEXTS, checkpoint_dir, sampling_set  # noqa: E402
from stage_report import STAGES, stage_summary, utilisation_series, write_plot  # noqa: E402

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny", help="random-weight checkpoint shape")
    parser.add_argument("--model", type=Path, help="use this hf-layout checkpoint directory instead of a random one")
    parser.add_argument(
        "--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="where random checkpoints are made and reused"
    )
    parser.add_argument("--chunks", type=int, default=16, help="chunks each way runs")
    parser.add_argument("--semantic-tokens", type=int, default=400, help="fixed semantic tokens per chunk (EOS off)")
    parser.add_argument("--batch", type=int, default=16, help="(b)'s batch, and the pipeline's batch_size without --config")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[4, 8, 16], help="(c) chunks in flight, one run each")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument(
        "--config", type=Path, help="take the pipeline's stages (replicas, num_gpus, batch sizes...) from this job config"
    )
    parser.add_argument("--voice", default="v2/en_speaker_6", help="voice preset for every chunk, or 'none'")
    parser.add_argument("--threads", type=int, help="torch threads in the driver and each CPU stage (default: 1 on CPU)")
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument(
        "--ray-gpus",
        type=int,
        help="GPUs Ray is told it has (default: none on CPU, detected on CUDA); on CPU, logical GPUs "
        "let a --config layout with num_gpus be placed and run (on the CPU)",
    )
    parser.add_argument("--modes", nargs="+", choices=("a", "b", "c"), default=["a", "b", "c"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    args = parser.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        # Stages are small and four actors share the cores: one thread each avoids oversubscription.
        args.threads = 1
    return args


def pipeline_config(args: argparse.Namespace, checkpoint: Path):
    """The job config (c) deploys: ``--config``'s stages and placement, or one replica per stage."""
    import yaml

    from pipeline.config import JobConfig

    raw: dict = {}
    if args.config:
        layout = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        raw = {k: layout[k] for k in ("stages", "placement") if k in layout}
        if args.device == "cpu" and args.threads:
            for stage in STAGES:
                raw.setdefault("stages", {}).setdefault(stage, {}).setdefault("torch_threads", args.threads)
    else:
        share = 0.25 if args.device == "cuda" else "auto"  # all four on one GPU
        stage = {"batch_size": args.batch, "dtype": args.dtype, "num_gpus": share}
        if args.threads:
            stage["torch_threads"] = args.threads
        raw["stages"] = {name: dict(stage) for name in STAGES}
    raw["model"] = {"source": str(checkpoint), "format": "hf"}
    raw["sampling"] = sampling_set(args.semantic_tokens).model_dump()
    raw["seed"] = args.seed
    return JobConfig.model_validate(raw)


def machine(args: argparse.Namespace) -> dict:
    import ray
    import torch
    import transformers

    if args.device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = f"CPU, {os.cpu_count()} cores, no GPU" if not torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return {
        "device": args.device,
        "device_name": name,
        "dtype": args.dtype if args.device == "cuda" else "float32",
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "ray": ray.__version__,
        "torch_threads": args.threads,
        "ray_cpus": args.ray_cpus,
        "ray_gpus": args.ray_gpus,
    }


def cpu_seconds(pids: list[int]) -> float | None:
    """CPU time (user + system) of the stage actors' processes so far; None if one cannot be read."""
    try:
        import psutil

        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)
    except Exception:  # psutil missing, or actors on another node
        return None


def run_pipeline(pipeline, works: list, in_flight: int, pids: list[int]) -> dict:
    """Keeps ``in_flight`` chunks submitted (a ``StagePipeline``), submitting another as each
    chunk's audio comes back; timed from the first submit to the last audio."""
    import ray

    replicas = {stage: pipeline.config.stages.of(stage).replicas for stage in STAGES}
    pending: dict = {}
    audio_s, done, next_index = 0.0, 0, 0
    actors_cpu = cpu_seconds(pids)
    driver_cpu = time.process_time()
    started_unix, started = time.time(), time.perf_counter()

    def refill() -> None:
        nonlocal next_index
        while next_index < len(works) and len(pending) < in_flight:
            (refs,) = pipeline.submit([works[next_index]])
            pending[refs.audio] = refs
            next_index += 1

    refill()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            out = ray.get(ref)
            audio_s += len(out.audio) / out.sample_rate
            pipeline.finished(pending.pop(ref))
            done += 1
        refill()
    wall = time.perf_counter() - started
    ended_unix = started_unix + wall
    actors_after = cpu_seconds(pids)
    cpu = None
    if actors_cpu is not None and actors_after is not None:
        cpu = actors_after - actors_cpu + time.process_time() - driver_cpu
    spans = pipeline.stats(since=started_unix)
    return {
        "in_flight": in_flight,
        "chunks": done,
        "audio_s": round(audio_s, 3),
        "wall_s": round(wall, 3),
        "audio_s_per_wall_s": round(audio_s / wall, 4),
        "cpu_s": round(cpu, 3) if cpu is not None else None,
        "audio_s_per_cpu_s": round(audio_s / cpu, 4) if cpu else None,
        "stages": stage_summary(spans, replicas, started_unix, ended_unix),
        "utilisation": utilisation_series(spans, replicas, started_unix, ended_unix),
    }


def measure_pipeline(args, checkpoint: Path, works: list) -> dict:
    import ray

    from pipeline.scheduler import ChunkWork, StagePipeline

    config = pipeline_config(args, checkpoint)
    pipeline = StagePipeline(config)
    try:
        placed = pipeline.placements()
        pids = [p["pid"] for p in placed if "pid" in p]
        # Warm-up: a few short chunks through every stage, so loading and first calls are not timed.
        short = sampling_set(8)
        warm = [ChunkWork(f"warm-{i}", w.text_ids, w.voice, w.seed, short) for i, w in enumerate(works[:4])]
        warmed = pipeline.submit(warm)
        ray.get([refs.audio for refs in warmed])
        for refs in warmed:
            pipeline.finished(refs)
        runs = []
        for in_flight in args.in_flight:
            runs.append(run_pipeline(pipeline, works, in_flight, pids))
            print(f"  (c) {in_flight} in flight done: {runs[-1]['audio_s_per_wall_s']:.3f} audio s / wall s", flush=True)
    finally:
        pipeline.shutdown()
    layout = {
        stage: {
            k: getattr(config.stages.of(stage), k)
            for k in ("replicas", "num_gpus", "batch_size", "continuous", "max_wait_ms", "dtype", "attn_implementation")
        }
        for stage in STAGES
    }
    headline = max(runs, key=lambda r: r["in_flight"])
    return {"layout": layout, "runs": runs, "headline": headline}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import ray
    import torch

    from workers.config import ModelConfig
    from pipeline.scheduler import ChunkWork
    from pipeline.voices import load_voice
    from workers.checkpoints import load_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = checkpoint_dir(args).resolve()
    tokenizer = load_tokenizer(ModelConfig(source=str(checkpoint)))
    voice = None if args.voice.lower() == "none" else load_voice(args.voice)
    sampling = sampling_set(args.semantic_tokens)
    texts = [TEXTS[i % len(TEXTS)] for i in range(args.chunks)]
    text_ids = [list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
    seeds = [args.seed * 1_000_003 + 1000 + i for i in range(args.chunks)]
    works = [ChunkWork(f"chunk-{i:05d}", ids, voice, seed, sampling) for i, (ids, seed) in enumerate(zip(text_ids, seeds))]

    results: dict = {
        "size": args.size if not args.model else args.model.resolve().name,
        "checkpoint": str(checkpoint),
        "chunks": args.chunks,
        "semantic_tokens": args.semantic_tokens,
        "voice": args.voice,
        "batch": args.batch,
        "date": datetime.date.today().isoformat(),
        "machine": machine(args),
        "baselines": {},
        "pipeline": None,
    }
    print(
        f"Bark {results['size']}: {args.chunks} chunks x {args.semantic_tokens} semantic tokens, voice {args.voice}, "
        f"{results['machine']['device_name']} ({results['machine']['dtype']})",
        flush=True,
    )

    if {"a", "b"} & set(args.modes):
        from hf_baseline import TransformersBark

        bark = TransformersBark(str(checkpoint), args.device, args.dtype)
        try:
            bark.warm_up(text_ids[0], voice, sampling, args.batch if "b" in args.modes else 1)
            if "a" in args.modes:
                run = bark.run("sequential", text_ids, seeds, voice, sampling, args.semantic_tokens, batch_size=1)
                results["baselines"]["sequential"] = run.to_dict()
                print(f"  (a) done: {run.throughput:.3f} audio s / wall s", flush=True)
            if "b" in args.modes:
                run = bark.run("batched", text_ids, seeds, voice, sampling, args.semantic_tokens, batch_size=args.batch)
                results["baselines"]["batched"] = run.to_dict()
                print(f"  (b) done: {run.throughput:.3f} audio s / wall s", flush=True)
        finally:
            bark.close()

    error = None
    if "c" in args.modes:
        ray.init(
            address="local",  # a fresh instance of its own, never another run's cluster on this machine
            num_cpus=args.ray_cpus,
            num_gpus=args.ray_gpus if args.ray_gpus is not None else (0 if args.device == "cpu" else None),
            include_dashboard=False,
            log_to_driver=False,
        )
        try:
            results["pipeline"] = measure_pipeline(args, checkpoint, works)
        except Exception as exc:  # report what was measured, then fail
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            results["pipeline_error"] = error
        finally:
            ray.shutdown()

    results["throughput"], results["ratios"] = summarise(results)
    results["audio_s_per_cpu_s"] = per_cpu_second(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"throughput-{results['size']}"
    json_path, png_path = args.out / f"{stem}.json", args.out / f"{stem}.png"
    if results["pipeline"]:
        write_plot(png_path, results)
        results["plot"] = str(png_path)
    json_path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print_report(results, json_path)
    if error:
        print(f"pipeline (c) failed: {error}", file=sys.stderr)
        raise SystemExit(1)
    return results


def summarise(results: dict) -> tuple[dict, dict]:
    throughput = {}
    if "sequential" in results["baselines"]:
        throughput["a"] = results["baselines"]["sequential"]["audio_s_per_wall_s"]
    if "batched" in results["baselines"]:
        throughput["b"] = results["baselines"]["batched"]["audio_s_per_wall_s"]
    if results["pipeline"]:
        throughput["c"] = results["pipeline"]["headline"]["audio_s_per_wall_s"]
    ratios = {}
    for base in ("a", "b"):
        if "c" in throughput and throughput.get(base):
            ratios[f"c/{base}"] = round(throughput["c"] / throughput[base], 3)
    return throughput, ratios


def per_cpu_second(results: dict) -> dict:
    """Audio seconds per CPU second of each way, and c's ratios to a and b by that measure: on a
    shared CPU, other work slows every way's wall time, but four actor processes win a larger
    share of a busy machine than one baseline process, which flatters c/a and c/b by wall time."""
    runs = {"a": results["baselines"].get("sequential"), "b": results["baselines"].get("batched")}
    if results["pipeline"]:
        runs["c"] = results["pipeline"]["headline"]
    figures = {k: r["audio_s_per_cpu_s"] for k, r in runs.items() if r and r.get("audio_s_per_cpu_s")}
    for base in ("a", "b"):
        if "c" in figures and base in figures:
            figures[f"c/{base}"] = round(figures["c"] / figures[base], 3)
    return figures


def print_report(results: dict, json_path: Path) -> None:
    rows = []
    base = results["baselines"]
    if "sequential" in base:
        rows.append(("(a) transformers, 1 at a time", base["sequential"]))
    if "batched" in base:
        rows.append((f"(b) transformers, {base['batched']['batch_size']} per batch", base["batched"]))
    pipe = results["pipeline"]
    if pipe:
        for run in pipe["runs"]:
            mark = "  <- c" if run is pipe["headline"] or run["in_flight"] == pipe["headline"]["in_flight"] else ""
            rows.append((f"(c) pipeline, {run['in_flight']} in flight{mark}", run))
    print()
    print(f"{'':40s} {'chunks':>6s} {'audio s':>9s} {'wall s':>9s} {'audio s / wall s':>17s} {'CPU s':>9s}")
    for label, r in rows:
        cpu = f"{r['cpu_s']:9.2f}" if r.get("cpu_s") is not None else f"{'-':>9s}"
        print(f"{label:40s} {r['chunks']:6d} {r['audio_s']:9.2f} {r['wall_s']:9.2f} {r['audio_s_per_wall_s']:17.3f} {cpu}")
    audio = {label: r["audio_s"] for label, r in rows}
    if len(set(round(a, 1) for a in audio.values())) > 1:
        print(f"note: the ways produced different amounts of audio: {audio}")
    if results["ratios"]:
        print("  ".join(f"{k} = {v:.2f}x" for k, v in results["ratios"].items()))
    per_cpu = {k: v for k, v in results["audio_s_per_cpu_s"].items() if "/" in k}
    if per_cpu and results["machine"]["device"] == "cpu":
        print("per CPU second: " + "  ".join(f"{k} = {v:.2f}x" for k, v in per_cpu.items()))
    if pipe:
        head = pipe["headline"]
        print(f"\npipeline stages at {head['in_flight']} in flight (wall {head['wall_s']:.2f} s):")
        print(
            f"{'stage':9s} {'replicas':>8s} {'busy s':>8s} {'busy %':>7s} {'passes':>7s} {'mean batch':>10s} "
            f"{'max batch':>9s} {'mean queue':>10s} {'max queue':>9s}"
        )
        for stage, s in head["stages"].items():
            print(
                f"{stage:9s} {s['replicas']:8d} {s['busy_s']:8.2f} {100 * s['busy_fraction']:6.1f}% {s['passes']:7d} "
                f"{s['mean_batch']:10.2f} {s['max_batch']:9d} {s['mean_queue']:10.2f} {s['max_queue']:9d}"
            )
    if base:
        print("\ntransformers, seconds per stage:")
        print(f"{'':32s} " + " ".join(f"{s:>9s}" for s in STAGES))
        for label, r in rows[: len(base)]:
            print(f"{label:32.32s} " + " ".join(f"{r['stage_busy_s'][s]:9.2f}" for s in STAGES))
    print(f"\nresults: {json_path}" + (f"\nplot:    {results['plot']}" if results.get("plot") else ""))


if __name__ == "__main__":
    main()
