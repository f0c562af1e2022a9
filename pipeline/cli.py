"""The ``bark-pipeline`` command.

Exit codes: 0 every item succeeded, 1 some items failed, 2 bad config or
arguments (nothing was narrated). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path

from pipeline.config import ConfigError, load_config

EXIT_OK, EXIT_ITEMS_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our code for bad arguments."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"bark-pipeline: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bark-pipeline", description="Narrate text with Bark, one Ray actor per stage.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="narrate a text file or a folder of them")
    run.add_argument("--config", required=True, type=Path, help="YAML job config (see configs/)")
    run.add_argument(
        "--input",
        required=True,
        help=".txt/.md/.epub file or a folder of them; a .jsonl/.csv/.parquet dataset (local or s3://); "
        "hf:NAME[:CONFIG][@SPLIT] or a datasets save_to_disk folder (the hf extra)",
    )
    run.add_argument("--output", required=True, help="output directory, or s3://bucket/prefix")
    run.add_argument("--voice", help="default voice: preset name (v2/en_speaker_6) or .npz path")
    run.add_argument("--seed", type=int, help="job seed (overrides the config)")
    run.add_argument("--quiet", action="store_true", help="no progress bar: only errors and the summary")
    run.add_argument("--retry-failed", action="store_true", help="also redo items an earlier run recorded as failed")

    commands.add_parser("voices", help="list the voice presets that ship with Suno's bark package")

    tiny = commands.add_parser("make-tiny-model", help="write a random-weight tiny Bark checkpoint")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--format", choices=("hf", "suno"), default="hf")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--size",
        choices=("tiny", "bark-small", "bark"),
        default="tiny",
        help="tiny, or random weights at the real shapes of suno/bark-small or suno/bark (for benchmarks)",
    )
    return parser


def _items(source: str, config):
    """The item stream of ``--input`` (a dataset read row by row, or text files) and,
    where it is cheap to know, how many items it holds (for the progress bar's ETA)."""
    from pipeline.datasets import count_rows, is_dataset, iter_dataset_items
    from pipeline.sources import READERS, iter_file_items

    if is_dataset(source):
        return iter_dataset_items(source, config.input.columns, s3=config.s3), count_rows(source)
    path = Path(source)
    if source.startswith("s3://"):
        raise ConfigError(f"--input: only datasets (.jsonl, .csv, .parquet) can be read from S3, not {source}")
    if not path.exists():
        raise ConfigError(f"--input: {source} does not exist")
    if path.is_file() and path.suffix.lower() not in READERS:
        raise ConfigError(f"--input: cannot read {path.suffix or 'suffix-less'} files; use {', '.join(READERS)}, a folder, or a dataset")
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READERS]
    one_item_each = all(f.suffix.lower() != ".epub" for f in files)  # an EPUB holds one item per chapter
    return iter_file_items(path), len(files) if one_item_each else None


def _run(args: argparse.Namespace) -> int:
    import ray

    from pipeline.job import NarrationJob
    from pipeline.voices import VoiceError
    from workers.checkpoints import CheckpointError, resolve_checkpoint_dir

    overrides = {k: v for k, v in (("voice", args.voice), ("seed", args.seed)) if v is not None}
    try:
        config = load_config(args.config, overrides)
        items, total = _items(args.input, config)
        if "://" not in args.output and Path(args.output).exists() and not Path(args.output).is_dir():
            raise ConfigError(f"--output: {args.output} is not a directory")
        resolve_checkpoint_dir(config.model)  # fails here, or makes the tiny model once
        job = NarrationJob(config, args.output, quiet=args.quiet, retry_failed=args.retry_failed, total_items=total)
    except (ConfigError, CheckpointError, VoiceError, ValueError) as exc:
        print(f"bark-pipeline: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if not ray.is_initialized():
        ray.init(address=config.ray.address, num_cpus=config.ray.num_cpus, num_gpus=config.ray.num_gpus, log_to_driver=not args.quiet)
    with _stop_on_signals(job):
        try:
            summary = job.run(items)
        except (ConfigError, CheckpointError, VoiceError, OSError, ValueError) as exc:  # e.g. a dataset without its text column
            print(f"bark-pipeline: {exc}", file=sys.stderr)
            return EXIT_BAD_CONFIG
    print(f"{summary.line()} -> {args.output}")
    return summary.exit_code


@contextlib.contextmanager
def _stop_on_signals(job):
    """SIGINT/SIGTERM (Ctrl-C, ``ray job stop``) end the job cleanly: finished items stay
    recorded, nothing partial is left under a final name, and a rerun resumes."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum, _frame):
        print(f"bark-pipeline: {signal.Signals(signum).name}: stopping, finished items are kept", file=sys.stderr)
        job.request_stop()

    for sig in previous:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _make_tiny(args: argparse.Namespace) -> int:
    from workers.tiny_model import make_tiny_model

    try:
        path = make_tiny_model(args.directory, seed=args.seed, fmt=args.format, size=args.size)
    except (OSError, ValueError) as exc:
        print(f"bark-pipeline: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"{args.size} {args.format} checkpoint written to {path}")
    return EXIT_OK


def _voices(_args: argparse.Namespace) -> int:
    from pipeline.voices import list_voices

    for name in list_voices():
        print(name)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own messages at INFO; libraries (boto3 announces where it found credentials) only warn.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("pipeline").setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    return {"run": _run, "voices": _voices, "make-tiny-model": _make_tiny}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
