"""What the benchmarks share: their texts, their random-weight checkpoints, their fixed-length sampling.

Imports nothing heavy at module level, so a benchmark that runs without Ray
(``bench/engines.py``, on a bare GPU box) can use it too.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

# Original sentences of mixed length; chunk i narrates TEXTS[i % len(TEXTS)].
TEXTS = (
    "The lighthouse keeper climbed the stairs again, counting each step out loud.",
    "Rain had followed them all the way from the station to the harbour.",
    "Nobody in the village could remember who had planted the old pear tree by the gate.",
    "She folded the map twice, then a third time, until it fit inside her coat.",
    "At noon the bells rang, and the market emptied as quickly as it had filled.",
    "He wrote every letter by hand, because he said machines forgot to mean what they said.",
    "The ferry was late, so they waited on the pier and watched the gulls argue.",
    "By the end of the winter the library had read every book twice, or so the children claimed.",
    "A small dog trotted along the wall with a loaf of bread held proudly in its mouth.",
    "The clock in the hall had stopped at seven, and no one had the heart to wind it.",
    "They crossed the river on stepping stones, laughing whenever one of them wobbled.",
    "Somewhere beyond the hills a train whistled twice and then fell silent for the night.",
)
DEFAULT_MODELS_DIR = Path(tempfile.gettempdir()) / "bark-bench"
SIZES = ("tiny", "bark-small", "bark")


def checkpoint_dir(args: argparse.Namespace) -> Path:
    """``--model``, or the random checkpoint of ``--size`` (made once, then reused)."""
    if args.model:
        return args.model
    from workers.tiny_model import MARKER_FILE, make_tiny_model

    directory = args.models_dir / f"{args.size}-seed{args.seed}"
    marker = directory / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("size", "tiny") == args.size:
        return directory
    print(f"making a random-weight {args.size} checkpoint in {directory} ...", flush=True)
    return make_tiny_model(directory, seed=args.seed, size=args.size, overwrite=True)


def sampling_set(semantic_tokens: int):
    """Upstream Bark's temperatures; semantic EOS off, so every chunk has ``semantic_tokens`` tokens."""
    from workers.config import SamplingSet

    return SamplingSet.model_validate(
        {
            "semantic": {"temperature": 0.7, "min_eos_p": None, "stop_at_eos": False, "max_new_tokens": semantic_tokens},
            "coarse": {"temperature": 0.7},
            "fine": {"temperature": 0.5},
        }
    )
