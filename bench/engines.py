"""The stage engines alone, in one process, against transformers' BarkModel on the same device.

Runs on a bare GPU box: it needs torch, transformers, numpy and pydantic, not
Ray. Each stage's engine runs on its own at each batch size, with fixed lengths
(semantic EOS off: every chunk gets exactly ``--semantic-tokens`` tokens) and a
real voice preset, on random-weight checkpoints at the real shapes of
``suno/bark-small`` or ``suno/bark`` (or ``--model``). For each stage and batch
size it reports audio seconds per second, torch ops and host syncs per step
(profiler), and peak device memory; then transformers' ``BarkModel.generate``
one chunk at a time and 16 per batch on the same device, dtype and lengths;
then two estimates for the whole pipeline: all four stages sharing one device,
and each stage on its own devices (the best split of 4 and 8 devices), as real
time factors per device, with their ratios to transformers.

    python bench/engines.py --size tiny --batch-sizes 1 8 --semantic-tokens 64          # CPU smoke run
    python bench/engines.py --size bark-small --device cuda --dtype bfloat16 --decode-compile cuda_graphs
    python bench/engines.py --size bark --device cuda --dtype bfloat16 --decode-compile cuda_graphs --batch-sizes 16 64 256
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO), str(REPO / "bench")) if p not in sys.path]

from common import DEFAULT_MODELS_DIR, SIZES, TEXTS, checkpoint_dir, sampling_set  # noqa: E402

STAGES = ("semantic", "coarse", "fine", "codec")
# Ops that read a device value on the host (each stalls until the device is done).
SYNCING_OPS = {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select", "aten::equal"}
TRANSFER = "engine.to_host"
DEVICE_SPLITS = (4, 8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--model", type=Path, help="an hf-layout checkpoint directory instead of a random one")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--attention", choices=("eager", "sdpa"), default="sdpa", help="the engines' attention")
    parser.add_argument("--decode-compile", choices=("off", "torch_compile", "cuda_graphs"), default="off")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--semantic-tokens", type=int, default=256, help="fixed semantic tokens per chunk (EOS off)")
    parser.add_argument("--voice", default="v2/en_speaker_6", help="a preset name, an .npz path, or 'none'")
    parser.add_argument("--baseline-chunks", type=int, default=16, help="chunks for transformers, each way")
    parser.add_argument("--baseline-batch", type=int, default=16)
    parser.add_argument(
        "--baseline-attention", default="eager",
        help="transformers' Bark supports eager and flash_attention_2 (with the flash-attn package), not sdpa",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--threads", type=int, help="torch threads (default: 1 on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "bench")
    parser.add_argument(
        "--rates", type=Path, default=REPO / "bench" / "rates.json",
        help="the rates record `bark-pipeline plan` reads: this run's per-stage rates are added to it (or replace "
        "an earlier run's for the same shape, device, dtype and machine); 'none' to leave it alone",
    )
    args = parser.parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.device == "cpu":
        args.dtype = "float32"
    return args


# ---------------------------------------------------------------- one stage, one batch size


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _admissions(stage: str, batch: int, inputs: dict, settings) -> list:
    """``batch`` chunks for one stage: the voice, fixed lengths, one seed each."""
    from workers.config import CoarseSampling, FineSampling
    from workers.engine import Admission
    from workers.records import CodecRequest, CoarseRequest, FineRequest, SemanticRequest

    voice, sampling = inputs["voice"], inputs["sampling"]
    chunks = []
    for i in range(batch):
        seed = 10_000 + i
        if stage == "semantic":
            request = SemanticRequest(key=str(i), text_ids=inputs["text_ids"][i % len(inputs["text_ids"])], voice=voice, seed=seed, sampling=sampling.semantic)
            chunks.append(Admission(i, request))
        elif stage == "coarse":
            chunks.append(Admission(i, CoarseRequest(key=str(i), voice=voice, seed=seed, sampling=CoarseSampling()), inputs["semantic"]))
        elif stage == "fine":
            chunks.append(Admission(i, FineRequest(key=str(i), voice=voice, seed=seed, sampling=FineSampling()), inputs["coarse"]))
        else:
            chunks.append(Admission(i, CodecRequest(key=str(i)), inputs["fine"]))
    return chunks


def _engine(stage: str, model, settings, batch: int, args):
    from workers.codec import CodecEngine
    from workers.coarse import CoarsePolicy
    from workers.engine import GptEngine
    from workers.fine import FineEngine
    from workers.semantic import SemanticPolicy

    if stage == "semantic":
        return GptEngine(model, SemanticPolicy(model, settings), batch, args.attention, args.decode_compile)
    if stage == "coarse":
        return GptEngine(model, CoarsePolicy(model, settings), batch, args.attention, args.decode_compile)
    if stage == "fine":
        return FineEngine(model, settings, batch, args.attention)
    return CodecEngine(model, batch)


def _step_counts(engine, admissions, device) -> dict:
    """Torch ops, syncing ops and deliberate transfers of one steady-state step, and the
    CUDA syncs torch itself reports (set_sync_debug_mode) on a GPU."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    engine.admit(admissions)
    warm = 2 if hasattr(engine, "rows") else 0  # a GPT engine: past its prefill step
    for _ in range(warm):
        engine.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    cuda_syncs = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        with profile(activities=activities) as prof:
            engine.step()
            _sync(device)
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            cuda_syncs = sum("synchroniz" in str(w.message) for w in caught)
    while engine.active:  # drain
        engine.step()
    names = Counter(event.name for event in prof.events())
    return {
        "ops_per_step": sum(n for name, n in names.items() if name.startswith("aten::")),
        "syncing_ops_per_step": sum(names[n] for n in SYNCING_OPS),
        "transfers_per_step": names[TRANSFER],
        "cuda_syncs_per_step": cuda_syncs,
        "graph_launches_per_step": names.get("cudaGraphLaunch", 0) or None,
    }


def measure_stage(stage: str, model, settings, batch: int, inputs: dict, args) -> dict:
    """Audio seconds per second of one stage's engine with ``batch`` chunks in it, timed over
    one full run of ``batch`` chunks after a warm-up run (compiles, graph capture, caches)."""
    import torch

    from workers.engine import run_to_completion

    device = inputs["device"]
    engine = _engine(stage, model, settings, batch, args)
    admissions = _admissions(stage, batch, inputs, settings)
    run_to_completion(engine, admissions[: min(batch, 2)])  # warm-up
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    finished = run_to_completion(engine, admissions)
    _sync(device)
    wall = time.perf_counter() - started
    errors = [f.error for f in finished if f.error]
    if errors:
        raise RuntimeError(f"{stage}: {errors[0]}")
    audio_s = batch * inputs["audio_s_per_chunk"]
    result = {
        "batch": batch,
        "wall_s": round(wall, 4),
        "audio_s": round(audio_s, 3),
        "audio_s_per_s": _figures(audio_s / wall),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }
    result.update(_step_counts(engine, admissions, device))
    return result


def stage_inputs(args, settings, tokenizer, voice, device) -> dict:
    """Each stage's input at the fixed length: text ids; random semantic, coarse and fine tokens."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    n_semantic = args.semantic_tokens
    frames = settings.coarse_length(n_semantic) // settings.n_coarse_codebooks
    return {
        "device": device,
        "voice": voice,
        "sampling": sampling_set(n_semantic),
        "text_ids": [tokenizer.encode(t, add_special_tokens=False) for t in TEXTS],
        "semantic": rng.integers(0, settings.semantic_vocab_size, n_semantic),
        "coarse": rng.integers(0, settings.codebook_size, (settings.n_coarse_codebooks, frames)),
        "fine": rng.integers(0, settings.codebook_size, (settings.n_fine_codebooks, frames)),
        "audio_s_per_chunk": frames / settings.coarse.coarse_rate_hz,
    }


# ---------------------------------------------------------------- estimates


def pipeline_estimates(best: dict[str, float]) -> dict:
    """Real time factors per device: all stages sharing one device (their times add up), and
    each stage on whole devices of its own (fine and codec sharing theirs), best split of D."""
    one = 1 / sum(1 / best[s] for s in STAGES)
    estimates = {"one_device": {"rtf_per_device": _figures(one)}}
    for devices in DEVICE_SPLITS:
        best_split, best_rate = None, 0.0
        for semantic, coarse in itertools.product(range(1, devices), repeat=2):
            rest = devices - semantic - coarse
            if rest < 1:
                continue
            fine_codec = rest / (1 / best["fine"] + 1 / best["codec"])
            rate = min(semantic * best["semantic"], coarse * best["coarse"], fine_codec)
            if rate > best_rate:
                best_split, best_rate = {"semantic": semantic, "coarse": coarse, "fine+codec": rest}, rate
        estimates[f"{devices}_devices"] = {"split": best_split, "rtf_per_device": _figures(best_rate / devices)}
    return estimates


def _figures(value: float, significant: int = 4) -> float:
    """``value`` to a few significant figures: CPU rates are hundredths, GPU ones hundreds."""
    return float(f"{value:.{significant}g}")


# ---------------------------------------------------------------- transformers


def measure_transformers(args, checkpoint: Path, inputs: dict) -> dict:
    from hf_baseline import TransformersBark

    text_ids = [inputs["text_ids"][i % len(inputs["text_ids"])] for i in range(args.baseline_chunks)]
    seeds = [10_000 + i for i in range(args.baseline_chunks)]
    bark = TransformersBark(str(checkpoint), args.device, args.dtype, attn_implementation=args.baseline_attention)
    runs = {}
    try:
        bark.warm_up(text_ids[0], inputs["voice"], inputs["sampling"], args.baseline_batch)
        for name, batch in (("one_at_a_time", 1), (f"batched_{args.baseline_batch}", args.baseline_batch)):
            run = bark.run(name, text_ids, seeds, inputs["voice"], inputs["sampling"], args.semantic_tokens, batch_size=batch)
            runs[name] = run.to_dict()
            print(f"  transformers {name}: {run.throughput:.3f} audio s / s", flush=True)
    finally:
        bark.close()
    return runs


# ---------------------------------------------------------------- main


def machine(args) -> dict:
    import torch
    import transformers

    name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    return {
        "device": args.device, "device_name": name, "dtype": args.dtype, "platform": platform.platform(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "torch_threads": args.threads, "attention": args.attention, "decode_compile": args.decode_compile,
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from pipeline.voices import load_voice
    from workers.checkpoints import load_settings_for, load_stage_model, load_tokenizer
    from workers.config import ModelConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    dtype = getattr(torch, args.dtype)
    checkpoint = checkpoint_dir(args).resolve()
    model_config = ModelConfig(source=str(checkpoint))
    settings = load_settings_for(model_config)
    voice = None if args.voice.lower() == "none" else load_voice(args.voice, settings)
    inputs = stage_inputs(args, settings, load_tokenizer(model_config), voice, device)
    results: dict = {
        "size": args.size if not args.model else args.model.resolve().name,
        "semantic_tokens": args.semantic_tokens,
        "audio_s_per_chunk": round(inputs["audio_s_per_chunk"], 3),
        "voice": args.voice,
        "date": datetime.date.today().isoformat(),
        "machine": machine(args),
        "stages": {},
    }
    print(f"Bark {results['size']} engines on {results['machine']['device_name']} ({args.dtype}), "
          f"{args.semantic_tokens} semantic tokens per chunk ({inputs['audio_s_per_chunk']:.2f} s of audio)", flush=True)
    for stage in STAGES:
        model = load_stage_model(model_config, stage, device, dtype, "eager")
        results["stages"][stage] = []
        for batch in args.batch_sizes:
            try:
                figures = measure_stage(stage, model, settings, batch, inputs, args)
            except torch.cuda.OutOfMemoryError:
                results["stages"][stage].append({"batch": batch, "error": "out of memory"})
                print(f"  {stage:8s} batch {batch:4d}: out of memory", flush=True)
                torch.cuda.empty_cache()
                break
            results["stages"][stage].append(figures)
            print(f"  {stage:8s} batch {batch:4d}: {figures['audio_s_per_s']:10.2f} audio s / s, "
                  f"{figures['ops_per_step']} ops, {figures['syncing_ops_per_step']} syncing ops, "
                  f"{figures['transfers_per_step']} transfers per step", flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    best = {s: max(r["audio_s_per_s"] for r in results["stages"][s] if "audio_s_per_s" in r) for s in STAGES}
    results["best_audio_s_per_s"] = best
    results["estimates"] = pipeline_estimates(best)
    if not args.no_baseline:
        results["transformers"] = measure_transformers(args, checkpoint, inputs)
        for name, run in results["transformers"].items():
            for estimate in results["estimates"].values():
                estimate[f"ratio_to_{name}"] = _figures(estimate["rtf_per_device"] / (run["audio_s"] / run["wall_s"]), 3)
    print_report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"engines-{results['size']}-{args.device}.json"
    path.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"\nresults: {path}")
    if str(args.rates).lower() != "none":
        _save_rates(results, checkpoint, argv, args.rates)
    return results


def _save_rates(results: dict, checkpoint: Path, argv: list[str] | None, path: Path) -> None:
    """Keeps each stage's rate per batch size as a record ``bark-pipeline plan`` reads (pipeline/rates.py)."""
    from pipeline.rates import BatchRate, ModelShape, RatesRecord, save_record
    from workers.checkpoints import model_shape

    shape = model_shape(checkpoint)
    if shape is None:
        print(f"rates not recorded: the shape of {checkpoint} is unknown")
        return
    info = results["machine"]
    record = RatesRecord(
        model=results["size"],
        shape=ModelShape(**shape),
        device=info["device"],
        device_name=info["device_name"],
        dtype=info["dtype"],
        date=results["date"],
        machine=f"{platform.node()}: {info['platform']}",
        settings={k: info[k] for k in ("torch", "transformers", "torch_threads", "attention", "decode_compile")},
        command="python bench/engines.py " + " ".join(sys.argv[1:] if argv is None else argv),
        semantic_tokens=results["semantic_tokens"],
        stages={
            stage: [BatchRate(batch=r["batch"], audio_s_per_s=r["audio_s_per_s"]) for r in rows if "audio_s_per_s" in r]
            for stage, rows in results["stages"].items()
        },
    )
    save_record(record, path)
    print(f"rates: {path}")


def print_report(results: dict) -> None:
    print(f"\n{'stage':9s} {'batch':>5s} {'audio s/s':>10s} {'ops/step':>9s} {'syncs':>6s} {'copies':>6s} {'peak GiB':>8s}")
    for stage, rows in results["stages"].items():
        for r in rows:
            if "error" in r:
                print(f"{stage:9s} {r['batch']:5d} {r['error']}")
                continue
            memory = f"{r['peak_memory_gib']:8.2f}" if r["peak_memory_gib"] is not None else f"{'-':>8s}"
            print(f"{stage:9s} {r['batch']:5d} {r['audio_s_per_s']:10.4g} {r['ops_per_step']:9d} "
                  f"{r['syncing_ops_per_step']:6d} {r['transfers_per_step']:6d} {memory}")
    print("\nwhole pipeline, real time factor per device:")
    for name, estimate in results["estimates"].items():
        ratios = "  ".join(f"{k.removeprefix('ratio_to_')} x{v}" for k, v in estimate.items() if k.startswith("ratio_to_"))
        split = f" ({estimate['split']})" if "split" in estimate else ""
        print(f"  {name:11s} {estimate['rtf_per_device']:10.4g}x real time{split}   vs transformers: {ratios}")
    for name, run in results.get("transformers", {}).items():
        print(f"  transformers {name}: {run['audio_s'] / run['wall_s']:.4g}x real time")


if __name__ == "__main__":
    main()
