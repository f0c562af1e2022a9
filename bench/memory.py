"""Driver memory against input size: peak RSS for N tiny items, streamed from JSONL.

The scheduler keeps a bounded number of chunks in flight and reads the input
lazily, so the driver's peak memory should not grow with the number of items.
Each size runs in a fresh process, since peak RSS is per process.

    python bench/memory.py --items 100 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINE_WINDOW = 64


def child(items: int, workdir: Path) -> dict:
    """Runs one job in this process and reports its peak RSS."""
    import ray
    import yaml

    from pipeline.config import load_config
    from pipeline.datasets import iter_dataset_items
    from pipeline.job import NarrationJob
    from workers.tiny_model import make_tiny_model

    # Bark's fine window is 1024 frames whatever the chunk's length, and sampling a
    # whole window dominates a tiny model's time. The driver is what is measured, so
    # this checkpoint reads a 64-frame window (from its generation config, which
    # every stage takes its constants from): ~16x less fine work per item.
    make_tiny_model(workdir / "tiny", seed=0)
    generation = json.loads((workdir / "tiny" / "generation_config.json").read_text())
    generation["fine_acoustics_config"].update(max_fine_input_length=FINE_WINDOW, max_fine_history_length=FINE_WINDOW // 2)
    (workdir / "tiny" / "generation_config.json").write_text(json.dumps(generation))

    source = workdir / "rows.jsonl"
    with open(source, "w", encoding="utf-8") as file:
        for n in range(items):
            file.write(json.dumps({"id": f"item-{n:06d}", "text": f"Item {n}."}) + "\n")
    raw = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    raw["model"]["source"] = str(workdir / "tiny")
    raw["sampling"]["semantic"]["max_new_tokens"] = 2  # the driver is what we measure, not the models
    raw["output"]["subtitles"] = False
    raw["stages"] = {s: {"batch_size": 32} for s in ("semantic", "coarse", "fine", "codec")}
    raw["scheduler"] = {"max_chunks_in_flight": 128}
    (workdir / "job.yaml").write_text(yaml.safe_dump(raw))
    config = load_config(workdir / "job.yaml")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    summary = NarrationJob(config, str(workdir / "out"), quiet=True).run(iter_dataset_items(str(source)))
    return {
        "items": items,
        "ok": summary.ok,
        "wall_s": round(time.perf_counter() - started, 1),
        "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100, 10_000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.workdir)))
        return
    results = []
    for items in args.items:
        with tempfile.TemporaryDirectory() as workdir:
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(items), "--workdir", workdir],
                capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    base = results[0]
    for r in results[1:]:
        ratio = r["driver_peak_rss_mb"] / base["driver_peak_rss_mb"]
        print(f"{r['items']} items vs {base['items']}: driver peak RSS x{ratio:.2f}")


if __name__ == "__main__":
    main()
