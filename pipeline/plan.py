"""A job's plan before it runs: its items, their chunks, what would fail, how much audio and how long.

``bark-pipeline plan`` reads the input with the job's own readers and splits
every item with the job's own :class:`~pipeline.planner.Planner`, so the chunks,
the failures and their reasons are exactly those a run would make. It needs
only the checkpoint's constants and text tokenizer (no model, no weights, no
Ray), so a config and an input can be checked in seconds before hours of GPU
time. What an output already holds (resume) is not looked at: the plan is of
the whole input.

Memory stays bounded for a dataset of millions of rows: totals, the first
:data:`LISTED_ITEMS` items, the :data:`WORST_CASES` items with most chunks and
the longest chunk are kept (and the failures, which are what to fix).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pipeline.config import JobConfig
from pipeline.fingerprint import Fingerprinter
from pipeline.idset import DUPLICATE_ID_REASON, DiskIdSet
from pipeline.planner import ItemPlan, ItemRejected, Planner, text_encoder
from pipeline.rates import STAGES, Device, ModelShape, RatesRecord, StageRate, stage_rate, wall_seconds
from pipeline.sources import Item, ItemError
from pipeline.speech_time import estimate_speech_seconds
from pipeline.text import TextChunk
from workers.settings import BarkSettings

LISTED_ITEMS = 20  # up to this many items, each gets a row; beyond, totals and the worst cases
WORST_CASES = 5  # items with most chunks shown for a larger input


def speech_seconds(text: str, language: str, max_semantic_tokens: int, semantic_rate_hz: float) -> float:
    """Seconds of speech Bark makes for one chunk's ``text``: its estimate at narration pace
    (:mod:`pipeline.speech_time`), never more than the semantic stage may generate
    (``max_new_tokens`` at ~49.9 tokens per second)."""
    return min(estimate_speech_seconds(text, language), max_semantic_tokens / semantic_rate_hz)


@dataclass(frozen=True)
class ItemLine:
    """One planned item, as the report shows it."""

    id: str
    chunks: int
    longest_tokens: int
    chars: int
    speech_s: float  # what the stages generate
    audio_s: float  # with the silences the writer puts between chunks
    language: str  # the item's own, the job's or detected (Planner.spec)
    voice: str | None  # the voice it is narrated in; None: a random one


@dataclass(frozen=True)
class ChunkLine:
    item_id: str
    index: int
    tokens: int
    speech_s: float  # the estimate the chunk was packed by (pipeline.speech_time)
    text: str


@dataclass(frozen=True)
class Rejected:
    id: str
    reason: str  # the one line the job would record


@dataclass(frozen=True)
class WallEstimate:
    seconds: float
    bottleneck: StageRate
    rates: tuple[StageRate, ...]


@dataclass
class JobPlan:
    """The totals and the items worth showing; see the module's docstring for what is kept."""

    max_tokens: int = 0  # the chunk budget, text.max_tokens
    items_read: int = 0
    planned: int = 0
    chunks: int = 0
    tokens: int = 0
    chars: int = 0
    speech_s: float = 0.0
    audio_s: float = 0.0
    languages: dict[str, int] = field(default_factory=dict)  # items planned per language: whose pace the estimate used
    listed: list[ItemLine] = field(default_factory=list)
    most_chunks: list[tuple[int, int, ItemLine]] = field(default_factory=list)  # a heap of (chunks, -order, item)
    longest_chunk: ChunkLine | None = None
    rejected: list[Rejected] = field(default_factory=list)
    chunk_lines: list[ChunkLine] | None = None  # every chunk, when asked to keep them
    device: Device | None = None
    estimate: WallEstimate | None = None
    no_estimate: str | None = None  # why there is no wall-time estimate

    @property
    def worst(self) -> list[ItemLine]:
        """The items with most chunks, most first (input order among equals)."""
        return [line for _, _, line in sorted(self.most_chunks, key=lambda e: (-e[0], -e[1]))]


def make_planner(config: JobConfig) -> tuple[Planner, BarkSettings, ModelShape | None]:
    """The job's planner on the checkpoint's constants and tokenizer alone: no model, no weights
    (a tiny model that is missing is not made), no Ray. Fingerprints are not shown, so the
    checkpoint's files are not digested."""
    from workers.checkpoints import load_text_side  # transformers' tokenizer, not a model

    side = load_text_side(config.model)
    planner = Planner(config, side.settings, text_encoder(side.tokenizer), Fingerprinter(config, None))
    return planner, side.settings, ModelShape(**side.shape) if side.shape else None


def plan_items(
    items: Iterable[Item | ItemError],
    planner: Planner,
    settings: BarkSettings,
    *,
    keep_chunks: bool = False,
    on_plan: Callable[[ItemPlan], None] | None = None,
) -> JobPlan:
    """Each item through the steps a run takes (duplicate id, :meth:`Planner.spec`, :meth:`Planner.plan`),
    with the same reasons for those that fail; ``on_plan`` sees each item's plan as it is made."""
    report = JobPlan(max_tokens=planner.config.text.max_tokens, chunk_lines=[] if keep_chunks else None)
    silences = planner.config.output.silence
    with DiskIdSet() as seen:
        for item in items:
            report.items_read += 1
            if not seen.add(item.id):
                report.rejected.append(Rejected(item.id, DUPLICATE_ID_REASON))
                continue
            try:
                plan = planner.plan(planner.spec(item))
            except ItemRejected as exc:
                report.rejected.append(Rejected(item.id, exc.reason))
                continue
            if on_plan is not None:
                on_plan(plan)
            max_tokens = plan.spec.sampling.semantic.max_new_tokens or settings.semantic.max_new_tokens
            speech = sum(speech_seconds(c.text, plan.language, max_tokens, settings.semantic.semantic_rate_hz) for c in plan.chunks)
            pauses = sum(getattr(silences, c.break_after) for c in plan.chunks[:-1])
            line = ItemLine(
                id=plan.item.id,
                chunks=len(plan.chunks),
                longest_tokens=max(c.n_tokens for c in plan.chunks),
                chars=sum(len(c.text) for c in plan.chunks),
                speech_s=speech,
                audio_s=speech + pauses,
                language=plan.language,
                voice=plan.voice_name,
            )
            _add(report, line, plan)
    return report


def _add(report: JobPlan, line: ItemLine, plan: ItemPlan) -> None:
    report.planned += 1
    report.chunks += line.chunks
    report.tokens += sum(c.n_tokens for c in plan.chunks)
    report.chars += line.chars
    report.speech_s += line.speech_s
    report.audio_s += line.audio_s
    report.languages[line.language] = report.languages.get(line.language, 0) + 1
    if len(report.listed) < LISTED_ITEMS + 1:  # one more than shown: says that there are more
        report.listed.append(line)
    entry = (line.chunks, -report.planned, line)
    if len(report.most_chunks) < WORST_CASES:
        heapq.heappush(report.most_chunks, entry)
    elif entry[:2] > report.most_chunks[0][:2]:
        heapq.heapreplace(report.most_chunks, entry)
    longest = max(plan.chunks, key=lambda c: c.n_tokens)
    if report.longest_chunk is None or longest.n_tokens > report.longest_chunk.tokens:
        report.longest_chunk = _chunk_line(plan, longest)
    if report.chunk_lines is not None:
        report.chunk_lines.extend(_chunk_line(plan, c) for c in plan.chunks)


def _chunk_line(plan: ItemPlan, chunk: TextChunk) -> ChunkLine:
    seconds = estimate_speech_seconds(chunk.text, plan.language)
    return ChunkLine(plan.item.id, chunk.index, chunk.n_tokens, seconds, chunk.text)


# ---------------------------------------------------------------- wall time


def job_device(config: JobConfig, local_gpu: Callable[[], bool]) -> tuple[Device | None, str]:
    """Where the stages would run, as far as the config tells (and the local machine, for a local
    Ray with ``num_gpus: auto``); None with the reason when only the cluster could tell."""
    shares = [config.stages.of(stage).num_gpus for stage in STAGES]
    if any(share != "auto" and share > 0 for share in shares):
        return "cuda", "stages ask for GPUs"
    if all(share == 0 for share in shares) or config.ray.num_gpus == 0:
        return "cpu", "no GPUs asked for"
    if config.ray.num_gpus:
        return "cuda", "ray.num_gpus"
    if config.ray.address is None:
        return ("cuda", "this machine's GPU") if local_gpu() else ("cpu", "no GPU on this machine")
    return None, f"num_gpus is auto and the cluster at {config.ray.address} decides"


def estimate_wall(
    report: JobPlan,
    config: JobConfig,
    shape: ModelShape | None,
    device: tuple[Device | None, str],
    records: list[RatesRecord],
) -> None:
    """Sets ``report.estimate``, or ``report.no_estimate`` saying which rate is missing; ``device`` as
    :func:`job_device` gives it."""
    report.device, why = device
    if report.device is None:
        report.no_estimate = f"{why}; pass --device cpu|cuda"
        return
    device_name = report.device
    if shape is None:
        report.no_estimate = "the model's shape is not known (Suno's own checkpoint files)"
        return
    rates = []
    for stage in STAGES:
        stage_config = config.stages.of(stage)
        rate = stage_rate(records, stage, shape, device_name, stage_config.dtype, stage_config.batch_size, stage_config.replicas)
        if rate is None:
            dtype = "" if device_name == "cpu" else f", {stage_config.dtype}"
            report.no_estimate = (
                f"no recorded rate for the {stage} stage of this model shape ({shape.hidden_size} wide, "
                f"{shape.num_layers} layers) on {device_name}{dtype} at batch size {stage_config.batch_size} or less "
                "(bench/engines.py records them in bench/rates.json)"
            )
            return
        rates.append(rate)
    if report.speech_s > 0:
        seconds, bottleneck = wall_seconds(report.speech_s, rates)
        report.estimate = WallEstimate(seconds, bottleneck, tuple(rates))
