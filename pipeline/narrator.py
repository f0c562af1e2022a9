"""The Python API: narrate texts in a program and get the audio back in memory.

``Narrator`` runs the command's own machinery (:class:`~pipeline.job.NarrationJob`, the
stage actors, the scheduler, the item writers), so a result is exactly what the command
would write. It keeps one :class:`~pipeline.scheduler.StagePipeline` for its whole life
and hands it to every job: the models load once, not once per call.

Each call is one job on an output folder. By default that is a private temporary folder,
read back and removed, so results come back in memory. With ``output=`` (a folder or
``s3://``) the files stay there and the job's resume applies: an item already done there
with the same fingerprint is not narrated again, and its result is read back from the
output like the others (so a second call with the same items returns the same audio).

    with Narrator("configs/tiny.yaml") as narrator:
        [result] = narrator.narrate(["Hello there."])
        result.audio, result.sample_rate, result.subtitles
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np
import ray
from pydantic import ValidationError

from pipeline import console
from pipeline.config import (
    ColumnsConfig,
    ConfigError,
    JobConfig,
    error_lines,
    load_config,
    resolve_relative_paths,
)
from pipeline.datasets import row_item
from pipeline.idset import DUPLICATE_ID_REASON
from pipeline.job import NarrationJob
from pipeline.manifest import read_manifest
from pipeline.object_store import ObjectNotFound, open_storage
from pipeline.scheduler import StagePipeline
from pipeline.sources import Item, ItemError
from pipeline.writer import ItemFiles
from workers.checkpoints import resolve_text_dir

ItemLike = str | Item | Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class NarrationResult:
    """One input item's outcome, in input order. ``audio``: float32 mono at ``sample_rate``
    (the output's rate), decoded from the file the writer made; None when failed."""

    id: str
    status: Literal["ok", "failed"]
    error: str | None = None
    audio: np.ndarray | None = None
    sample_rate: int | None = None
    metadata: dict[str, Any] | None = None  # the item's ``<id>.json`` as written
    subtitles: str | None = None  # SRT text; None when failed or ``output.subtitles`` is off


class Narrator:
    """Stage actors kept loaded across :meth:`narrate` calls; :meth:`close` ends them."""

    def __init__(self, config: str | Path | Mapping[str, Any] | JobConfig, *, output: str | Path | None = None) -> None:
        """``config``: a YAML path, a dict (relative paths resolve against the working folder)
        or a JobConfig. ``output``: keep the files there (and resume there) instead of in a
        temporary folder per call. Starts Ray unless it is already initialised (then joins it),
        and waits until every stage has loaded its model, so a bad model fails here."""
        self.config = as_config(config)
        self.output = str(output) if output is not None else None
        resolve_text_dir(self.config.model)  # fails here (from the hub: configs and tokenizer, no weights), or makes the tiny model once
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            console.tame_ray_logging(verbose=False)
            ray.init(**self.config.ray.init_options(), **console.ray_init_options(verbose=False))
        self.pipeline: StagePipeline | None = StagePipeline(self.config)
        try:
            self.pipeline.placements()
        except BaseException:
            self.close()
            raise

    def narrate(self, items: Iterable[ItemLike], *, output: str | Path | None = None) -> list[NarrationResult]:
        """Narrates the items (plain strings get ids ``0000``, ``0001``, ...; dicts take the keys
        a dataset row has: id, text, optional voice and params, other keys kept as ``extra``)
        and returns one result per item, in input order. A bad item fails alone.
        ``output``: this call's kept output, instead of the Narrator's."""
        if self.pipeline is None:
            raise RuntimeError("this Narrator is closed")
        records = [_as_item(i, item, self.config) for i, item in enumerate(items)]
        output = str(output) if output is not None else self.output
        if output is not None:
            return self._run(records, output)
        with tempfile.TemporaryDirectory(prefix="bark-narrator-") as folder:
            return self._run(records, folder)

    def _run(self, records: list[Item | ItemError], output: str) -> list[NarrationResult]:
        job = NarrationJob(self.config, output, quiet=True, total_items=len(records), pipeline=self.pipeline)
        job.run(iter(records))  # the job records every item's outcome in the output's manifest
        storage = open_storage(output, self.config.s3)
        entries = read_manifest(storage)
        results, seen = [], set()
        for record in records:
            if record.id in seen:  # the job keeps the first of a repeated id, as the command does
                results.append(NarrationResult(record.id, "failed", DUPLICATE_ID_REASON))
                continue
            seen.add(record.id)
            entry = entries.get(record.id)
            if entry is None:
                results.append(NarrationResult(record.id, "failed", "not narrated (the job stopped first)"))
            elif entry.status != "ok":
                results.append(NarrationResult(record.id, "failed", _one_line(entry.error or "failed")))
            else:
                results.append(self._read_back(storage, record.id))
        return results

    def _read_back(self, storage, item_id: str) -> NarrationResult:
        """An ok item's files, as the writer left them in the output."""
        files = ItemFiles.of(item_id, self.config.output.format)
        metadata = json.loads(storage.get_bytes(files.metadata))
        rate = metadata["sample_rate"]
        audio = _decode(storage.get_bytes(files.audio), rate)
        subtitles = None
        if self.config.output.subtitles.enabled:
            try:
                subtitles = storage.get_bytes(files.srt).decode("utf-8")
            except ObjectNotFound:
                subtitles = None
        return NarrationResult(item_id, "ok", None, audio, rate, metadata, subtitles)

    def close(self) -> None:
        """Kills the stage actors (and leaves Ray if this Narrator started it); idempotent."""
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            pipeline.shutdown()
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> Narrator:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def as_config(config: str | Path | Mapping[str, Any] | JobConfig) -> JobConfig:
    """A YAML path, a dict (relative paths against the working folder) or a JobConfig, validated."""
    if isinstance(config, JobConfig):
        return config
    if isinstance(config, Mapping):
        try:
            parsed = JobConfig.model_validate(dict(config))
        except ValidationError as exc:
            raise ConfigError("\n".join(f"config: {line}" for line in error_lines(exc))) from None
        return resolve_relative_paths(parsed, Path.cwd())
    return load_config(config)


def _as_item(index: int, item: ItemLike, config: JobConfig) -> Item | ItemError:
    """An Item, or the ItemError that fails it alone (a dict is checked as a dataset row is)."""
    if isinstance(item, (Item, ItemError)):
        return item
    if isinstance(item, str):
        return Item(id=f"{index:04d}", text=item)
    if isinstance(item, Mapping):
        return row_item(item, f"item {index}", ColumnsConfig(), config.limits)
    return ItemError(f"item {index}", "item", f"must be a string, an Item or a dict, got {type(item).__name__}")


def _decode(data: bytes, rate: int) -> np.ndarray:
    """Any format the writer makes (wav, flac, mp3, opus) as float32 mono samples at the item's
    rate (an Ogg Opus stream decodes at 48 kHz whatever rate it was made from)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        pieces = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for out in resampler.resample(frame)
        ]
        pieces += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return (np.concatenate(pieces) if pieces else np.zeros(0)).astype(np.float32)


def _one_line(text: str) -> str:
    return " ".join(text.split())
