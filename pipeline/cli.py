"""The ``bark-pipeline`` command.

Exit codes tell the truth about the output, whatever earlier runs did:

- 0: every item of the input is done and ok in the output (by this run or an earlier one);
- 1: the output is not complete: an item of the input is failed there (this run's
  failures and those recorded by earlier runs, each listed with its reason), the job
  was stopped, or it broke off after narration had begun (a storage fault, a bug);
- 2: nothing could start, and nothing was narrated: bad arguments or config, an input
  that is missing or has no items, an unusable output, model or voice.

stdout carries the summary line and nothing else; our other lines go to stderr, and
the libraries' own lines nowhere unless ``--verbose``. The arguments, the config
(every error, one line each) and the input (it exists and yields items) are checked
before torch, transformers or Ray is even imported, so such a mistake is reported
at once; Ray and the stage models start only once an item needs narrating.

``plan`` makes those same checks and reads and splits the input as ``run`` would (the planner on
the checkpoint's tokenizer alone), then reports instead of narrating (:mod:`pipeline.plan`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import sys
import traceback
from pathlib import Path

from pipeline import console
from pipeline.config import ConfigError, JobConfig, load_config
from pipeline.shards import Shard
from pipeline.stop import StopRequested, StopSignals
from workers.errors import UserError

EXIT_OK, EXIT_INCOMPLETE, EXIT_NOT_STARTED = 0, 1, 2
# The names these codes had before.
EXIT_ITEMS_FAILED, EXIT_BAD_CONFIG = EXIT_INCOMPLETE, EXIT_NOT_STARTED
PROG = "bark-pipeline"
DISTRIBUTION = "bark-pipeline"  # the name in pyproject.toml


class InputError(UserError):
    """``--input`` cannot be read as a whole, or holds no items."""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our code for bad arguments."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        console.say(f"{PROG}: error: {message}")
        raise SystemExit(EXIT_NOT_STARTED)


INPUT_HELP = (
    ".txt/.md/.epub file or a folder of them; a .jsonl/.csv/.parquet dataset (local or s3://); "
    "hf:NAME[:CONFIG][@SPLIT] or a datasets save_to_disk folder (the hf extra)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Narrate text with Bark, one Ray actor per stage.")
    parser.add_argument("--version", action="version", version=f"{PROG} {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="narrate a text file or a folder of them")
    run.add_argument("--config", required=True, type=Path, help="YAML job config (see configs/)")
    run.add_argument("--input", required=True, help=INPUT_HELP)
    run.add_argument("--output", required=True, help="output directory, or s3://bucket/prefix")
    run.add_argument("--voice", help="default voice: preset name (v2/en_speaker_6) or .npz path")
    run.add_argument("--seed", type=int, help="job seed (overrides the config)")
    run.add_argument("--quiet", action="store_true", help="no progress bar or per-item ok lines: only errors and the summary")
    run.add_argument(
        "--verbose", action="store_true", help="also show Ray's, the stage actors' and the libraries' own log lines"
    )
    run.add_argument("--retry-failed", action="store_true", help="also redo items an earlier run recorded as failed")
    run.add_argument(
        "--force", action="store_true", help="redo every item, even those done and unchanged since an earlier run"
    )
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="narrate only shard I of N (0 <= I < N) of the input: N drivers, one per shard, share one output",
    )

    plan = commands.add_parser(
        "plan",
        help="read the input and show its chunks, the items that would fail, the audio and the time a run "
        "would take, loading no model and starting no Ray",
    )
    plan.add_argument("--config", required=True, type=Path, help="YAML job config (see configs/)")
    plan.add_argument("--input", required=True, help=INPUT_HELP)
    plan.add_argument("--chunks", action="store_true", help="also print every chunk's text, with its item id and index")
    plan.add_argument("--json", action="store_true", help="one JSON object on stdout instead of text")
    plan.add_argument(
        "--device", choices=("cpu", "cuda"), help="the device of the wall-time estimate (default: from the config's num_gpus)"
    )

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


def installed_version() -> str:
    """The installed distribution's version (its metadata, not a constant kept by hand here)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


# ---------------------------------------------------------------- checks before anything heavy


def _check_output(output: str) -> None:
    if "://" not in output and Path(output).exists() and not Path(output).is_dir():
        raise ConfigError(f"--output: {output} is not a directory")


def _open_input(source: str, config: JobConfig):
    """The item stream of ``--input`` with its first item already read (so an input without
    items, or unreadable as a whole, fails here), and how many items it holds where that is
    cheap to know (for the progress bar's ETA)."""
    from pipeline.datasets import count_rows, is_dataset, iter_dataset_items
    from pipeline.sources import READERS, count_file_items, iter_file_items

    try:
        if is_dataset(source):
            items, total = iter_dataset_items(source, config.input.columns, s3=config.s3, limits=config.limits), count_rows(source)
            what = "rows"
        else:
            path = Path(source)
            if source.startswith("s3://"):
                raise InputError(f"--input: only datasets (.jsonl, .csv, .parquet) can be read from S3, not {source}")
            if not path.exists():
                raise InputError(f"--input: {source} does not exist")
            if path.is_file() and path.suffix.lower() not in READERS:
                raise InputError(
                    f"--input: cannot read {path.suffix or 'suffix-less'} files; use {', '.join(READERS)}, a folder, or a dataset"
                )
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in READERS]
            items, total = iter_file_items(path, config.limits), sum(count_file_items(f, config.limits) for f in files)
            what = f"{', '.join(READERS)} files" if path.is_dir() else "chapters"
        first = next(items, None)
    except UserError:
        raise
    except OSError as exc:  # the file system refused (permissions, a vanished file): the user's to fix
        raise InputError(f"--input: {exc}") from None
    if first is None:
        raise InputError(f"no items in {source} (no {what} with anything to narrate)")
    return itertools.chain([first], items), total


def _check_dataset_columns(source: str, config: JobConfig) -> None:
    """A dataset's id and text columns, checked once on its schema before any row is read:
    one line naming the missing column and the columns present, not a failure per row."""
    from pipeline.datasets import check_columns, is_dataset

    if is_dataset(source):
        check_columns(source, config.input.columns, s3=config.s3, limits=config.limits)


# ---------------------------------------------------------------- run


def _run(args: argparse.Namespace, stops: StopSignals) -> int:
    overrides = {k: v for k, v in (("voice", args.voice), ("seed", args.seed)) if v is not None}
    try:
        shard = Shard.parse(args.shard) if args.shard is not None else None
        config = load_config(args.config, overrides)
        _check_output(args.output)
        _check_dataset_columns(args.input, config)
        items, total = _open_input(args.input, config)
    except UserError as exc:
        return _not_started(exc)
    if shard is not None:
        total = None  # how many items of the input are this shard's is only known once all are read

    # From here on torch and transformers load (the tokenizer, the voice checks); Ray only when needed.
    from pipeline.job import NarrationJob
    from workers.checkpoints import resolve_text_dir

    ray_started: list[bool] = []

    def start_ray() -> None:
        ray_started.append(True)
        _start_ray(config, verbose=args.verbose, stops=stops)

    try:
        resolve_text_dir(config.model)  # fails here (from the hub: configs and tokenizer, no weights), or makes the tiny model once
        job = NarrationJob(
            config,
            args.output,
            quiet=args.quiet,
            retry_failed=args.retry_failed,
            force=args.force,
            total_items=total,
            start_ray=start_ray,
            shard=shard,
        )
    except UserError as exc:
        return _not_started(exc)
    stops.target = job
    try:
        summary = job.run(items)
    except (UserError, OSError) as exc:  # the output or the input failed as a whole mid-job, a stage could not start
        if not job.narrating:
            return _not_started(exc)
        console.say(f"{PROG}: {exc}")
        return _print_summary(job.progress.summary, args.output)
    except Exception as exc:  # noqa: BLE001 - a bug: said so, with its traceback, never as "bad config"
        _report_bug(exc)
        if job.narrating:
            _print_summary(job.progress.summary, args.output)
        return EXIT_INCOMPLETE
    finally:
        stops.target = None
        if ray_started:
            _disconnect_ray()
    return _print_summary(summary, args.output)


def _start_ray(config: JobConfig, *, verbose: bool, stops: StopSignals) -> None:
    """Starts (or joins, under ``ray job submit``) Ray, keeping its own lines off the console."""
    import ray

    console.tame_ray_logging(verbose=verbose)
    with _ray_keeps_our_sigterm_handler():
        ray.init(**config.ray.init_options(), **console.ray_init_options(verbose=verbose))
    stops.install()  # in case ray.init put its own handler in place of ours all the same


@contextlib.contextmanager
def _ray_keeps_our_sigterm_handler():
    """``ray.init`` installs SIGTERM handlers of its own (``sys.exit(15)`` while it connects; a local
    head's "kill every process, exit 1" after): a SIGTERM during start-up would end the command with
    no word and a code that is not ours. Ray installs them through one helper; while ``ray.init``
    runs it does nothing, so our handler (a clean stop; Ray's own atexit hook still ends the
    processes it started) stays in place."""
    import ray._private.utils as ray_utils

    original = getattr(ray_utils, "set_sigterm_handler", None)
    if original is None:  # a Ray without that helper: reinstalling ours after ray.init is all we can do
        yield
        return
    ray_utils.set_sigterm_handler = lambda _handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original


def _disconnect_ray() -> None:
    """Leaves Ray now rather than in an exit hook: explicit, and quick (a local Ray's processes end here)."""
    import ray

    try:
        ray.shutdown()
    except Exception as exc:  # noqa: BLE001 - on the way out; the job's own outcome is already known
        logging.getLogger(__name__).debug("ray.shutdown: %s", exc)


def _not_started(exc: BaseException) -> int:
    for line in str(exc).splitlines() or [type(exc).__name__]:
        console.say(f"{PROG}: {line}")
    return EXIT_NOT_STARTED


def _print_summary(summary, output: str) -> int:
    console.say(f"{summary.line()} -> {output}", file=sys.stdout)
    return summary.exit_code


def _report_bug(exc: BaseException) -> None:
    console.say("".join(traceback.format_exception(exc)).rstrip())
    console.say(f"{PROG}: internal error (a bug, not a problem with the input or config; the traceback is above): "
                f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------- plan


def _plan(args: argparse.Namespace, _stops: StopSignals) -> int:
    """The run's own checks, reading and splitting, then a report instead of narration: exit 0 when
    every item would be narrated, 1 when some would fail (each listed with its reason), 2 as ``run``."""
    try:
        config = load_config(args.config)
        _check_dataset_columns(args.input, config)
        items, _total = _open_input(args.input, config)
    except UserError as exc:
        return _not_started(exc)

    # From here on transformers loads (the tokenizer): never a model, never Ray.
    from pipeline import plan_report
    from pipeline.plan import estimate_wall, job_device, make_planner, plan_items
    from pipeline.rates import load_rates

    try:
        planner, settings, shape = make_planner(config)
        records = load_rates()
    except UserError as exc:
        return _not_started(exc)

    def print_chunks(item_plan) -> None:
        for line in plan_report.chunk_lines(item_plan):
            print(line)

    show_chunks = print_chunks if args.chunks and not args.json else None
    try:
        report = plan_items(items, planner, settings, keep_chunks=args.chunks and args.json, on_plan=show_chunks)
    except UserError as exc:
        return _not_started(exc)
    except OSError as exc:  # the input failed as a whole part way (a vanished file, a network)
        return _not_started(InputError(f"--input: {exc}"))
    device = (args.device, "--device") if args.device else job_device(config, _local_gpu)
    estimate_wall(report, config, shape, device, records)
    if args.json:
        print(json.dumps(plan_report.json_report(report), indent=2))
    else:
        if show_chunks is not None and report.chunks:
            print()
        for line in plan_report.text_lines(report):
            print(line)
    return EXIT_INCOMPLETE if report.rejected else EXIT_OK


def _local_gpu() -> bool:
    """Whether a local Ray would find a GPU here (torch is already loaded by the tokenizer)."""
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------- other commands


def _make_tiny(args: argparse.Namespace, _stops: StopSignals) -> int:
    from workers.tiny_model import make_tiny_model

    try:
        path = make_tiny_model(args.directory, seed=args.seed, fmt=args.format, size=args.size)
    except (OSError, ValueError) as exc:
        console.say(f"{PROG}: {exc}")
        return EXIT_NOT_STARTED
    print(f"{args.size} {args.format} checkpoint written to {path}")
    return EXIT_OK


def _voices(_args: argparse.Namespace, _stops: StopSignals) -> int:
    from pipeline.voices import list_voices

    for name in list_voices():
        print(name)
    return EXIT_OK


COMMANDS = {"run": _run, "plan": _plan, "voices": _voices, "make-tiny-model": _make_tiny}


def main(argv: list[str] | None = None) -> int:
    stops = StopSignals()
    stops.install()  # first of all: Ctrl-C while torch imports is one line too
    try:
        args = build_parser().parse_args(argv)
        console.configure(verbose=getattr(args, "verbose", False), quiet=getattr(args, "quiet", False))
        return COMMANDS[args.command](args, stops)
    except StopRequested:
        return EXIT_INCOMPLETE  # the handler has said so, in one line
    except KeyboardInterrupt:  # where our handler was not installed (not the main thread)
        console.say(f"{PROG}: interrupted")
        return EXIT_INCOMPLETE
    except Exception as exc:  # noqa: BLE001 - a bug outside the job (the job reports its own)
        _report_bug(exc)
        return EXIT_INCOMPLETE
    finally:
        stops.uninstall()
        if argv is None:
            _exit_quickly()


def _exit_quickly() -> None:
    """When this process is the command itself (``argv`` read from ``sys.argv``), its objects live until
    exit; the interpreter's last garbage collection would walk all of torch's and transformers' for
    seconds, while ``ray job stop`` allows 3 s between SIGTERM and SIGKILL. Freezing them leaves them
    out of that collection; files and Ray are already closed by then, and exit hooks still run."""
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()


if __name__ == "__main__":
    raise SystemExit(main())
