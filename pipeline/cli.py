"""The ``bark-pipeline`` command.

Exit codes: 0 every item succeeded, 1 some items failed, 2 bad config or
arguments (nothing was narrated). Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
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
    run.add_argument("--input", required=True, type=Path, help=".txt, .md or .epub file, or a folder of them")
    run.add_argument("--output", required=True, type=Path, help="output directory")
    run.add_argument("--voice", help="default voice: preset name (v2/en_speaker_6) or .npz path")
    run.add_argument("--seed", type=int, help="job seed (overrides the config)")
    run.add_argument("--quiet", action="store_true", help="only errors and the summary")

    commands.add_parser("voices", help="list the voice presets that ship with Suno's bark package")

    tiny = commands.add_parser("make-tiny-model", help="write a random-weight tiny Bark checkpoint")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--format", choices=("hf", "suno"), default="hf")
    tiny.add_argument("--seed", type=int, default=0)
    return parser


def _run(args: argparse.Namespace) -> int:
    import ray

    from pipeline.job import run_job
    from pipeline.sources import READERS, iter_file_items
    from pipeline.voices import VoiceError
    from workers.checkpoints import CheckpointError, resolve_checkpoint_dir

    overrides = {k: v for k, v in (("voice", args.voice), ("seed", args.seed)) if v is not None}
    try:
        config = load_config(args.config, overrides)
        if not args.input.exists():
            raise ConfigError(f"--input: {args.input} does not exist")
        if args.input.is_file() and args.input.suffix.lower() not in READERS:
            raise ConfigError(f"--input: cannot read {args.input.suffix or 'suffix-less'} files; use {', '.join(READERS)} or a folder")
        if args.output.exists() and not args.output.is_dir():
            raise ConfigError(f"--output: {args.output} is not a directory")
        resolve_checkpoint_dir(config.model)  # fails here, or makes the tiny model once
    except (ConfigError, CheckpointError) as exc:
        print(f"bark-pipeline: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    args.output.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(
            address=config.ray.address,
            num_cpus=config.ray.num_cpus,
            num_gpus=config.ray.num_gpus,
            log_to_driver=not args.quiet,
        )
    echo = (lambda line: None) if args.quiet else print
    try:
        summary = run_job(config, iter_file_items(args.input), args.output, echo=echo)
    except (ConfigError, CheckpointError, VoiceError) as exc:
        print(f"bark-pipeline: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(
        f"done: {summary.ok} ok, {summary.failed} failed, {summary.audio_s:.1f} s of audio "
        f"in {summary.wall_s:.1f} s -> {args.output}"
    )
    return summary.exit_code


def _make_tiny(args: argparse.Namespace) -> int:
    from workers.tiny_model import make_tiny_model

    try:
        path = make_tiny_model(args.directory, seed=args.seed, fmt=args.format)
    except (OSError, ValueError) as exc:
        print(f"bark-pipeline: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    print(f"tiny {args.format} checkpoint written to {path}")
    return EXIT_OK


def _voices(_args: argparse.Namespace) -> int:
    from pipeline.voices import list_voices

    for name in list_voices():
        print(name)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(message)s")
    return {"run": _run, "voices": _voices, "make-tiny-model": _make_tiny}[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
