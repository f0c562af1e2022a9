"""Ray Data: narrate the rows of a ``ray.data.Dataset`` and get the dataset back with each
row's outcome in new columns.

    processor = build_narration_processor("configs/tiny.yaml", "s3://bucket/audio")
    processor(ray.data.read_parquet("s3://bucket/texts.parquet")).write_parquet("s3://bucket/results")

The rows go through one ``map_batches`` stage whose callable class runs in one actor
(``concurrency=1``) for the whole dataset. That actor holds one :class:`~pipeline.Narrator`
(made when the first chunk needs it: a rerun over a finished output loads no model), so
one set of stage actors (the models, loaded once) serves every batch, and each batch
is one :class:`~pipeline.job.NarrationJob` over the same output: the job's own planner,
scheduler, writers, manifest and resume. One actor, because an output has one writer at a
time (the job's lease). It reserves no CPU (``num_cpus=0``): it only drives the job, and
the stage actors reserve what their config says. The stage actors belong to that actor,
so when Ray Data ends the actor pool at the end of the execution, Ray ends them with it.

Added columns (:data:`OUTPUT_COLUMNS`; the input's columns are kept as they are):

- ``status``: ``ok`` (narrated by this run), ``skipped`` (done in the output by an earlier
  run, unchanged: not narrated again; its uri and duration are the recorded ones) or
  ``failed``.
- ``error``: one line naming the field (``text: 'text' is empty``), null unless failed. An
  item an earlier run recorded as failed stays failed with that error unless
  ``retry_failed`` (or its row changed).
- ``duration_s``: seconds of audio; ``audio_uri``: where the audio is (``s3://...`` or a
  ``file://`` URI); ``audio``: the encoded file's bytes, with ``include_audio=True``.

A row fails alone: a missing or empty text, bad params, a repeated id (the first row of
an id is narrated, a later one fails, in the same batch or not), a chunk failing in a
stage. A problem with the whole run (a column name the output would overwrite, an output
that another job holds, storage that cannot be written) fails the dataset's execution.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import ray.data

from pipeline.config import ColumnsConfig, JobConfig
from pipeline.datasets import plain_cell, row_item
from pipeline.idset import DUPLICATE_ID_REASON, DiskIdSet
from pipeline.job import NarrationJob
from pipeline.manifest import ManifestEntry, iter_manifest_entries
from pipeline.narrator import Narrator, as_config
from pipeline.object_store import open_storage
from pipeline.progress import Progress
from pipeline.sources import Item, ItemError
from pipeline.writer import ItemFiles

__all__ = ["OUTPUT_COLUMNS", "NarrationProcessor", "build_narration_processor", "narrate_dataset"]

# Rows per batch, so per NarrationJob: each job reads the output's records once, so a few
# dozen rows keep that cost small against narrating them, and still fill the stages.
DEFAULT_BATCH_SIZE = 64

STATUS, ERROR, DURATION, AUDIO_URI, AUDIO = "status", "error", "duration_s", "audio_uri", "audio"
OUTPUT_COLUMNS: dict[str, pa.DataType] = {
    STATUS: pa.string(),
    ERROR: pa.string(),
    DURATION: pa.float64(),
    AUDIO_URI: pa.string(),
    AUDIO: pa.binary(),
}
NOT_NARRATED = "not narrated (the job stopped first)"
NO_ID = ""  # what a row without a usable id is called: never an item's id (an empty id is rejected)

Status = Literal["ok", "skipped", "failed"]


class NarrationProcessor:
    """Call it on a Dataset: ``processor(ds)`` is ``ds`` with the outcome columns added (lazily,
    as any Ray Data transform: the rows are narrated when the result is consumed)."""

    def __init__(
        self,
        config: JobConfig,
        output: str,
        columns: ColumnsConfig,
        *,
        include_audio: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        retry_failed: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.config = config
        self.output = output
        self.columns = columns
        self.include_audio = include_audio
        self.batch_size = batch_size
        self.retry_failed = retry_failed

    @property
    def added_columns(self) -> list[str]:
        return [name for name in OUTPUT_COLUMNS if name != AUDIO or self.include_audio]

    def __call__(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        return ds.map_batches(
            _NarrateBatches,
            fn_constructor_kwargs={
                "config": self.config,
                "output": self.output,
                "columns": self.columns,
                "include_audio": self.include_audio,
                "retry_failed": self.retry_failed,
            },
            batch_size=self.batch_size,
            batch_format="pyarrow",
            concurrency=1,  # one writer per output; one set of stage actors
            num_cpus=0,  # it drives the job; the stage actors reserve their own
        )


def build_narration_processor(
    config: str | Path | Mapping[str, Any] | JobConfig,
    output: str | os.PathLike,
    *,
    id_column: str = "id",
    text_column: str = "text",
    voice_column: str | None = "voice",
    params_column: str | None = "params",
    language_column: str | None = "language",
    extra_columns: list[str] | Literal["*"] = "*",
    include_audio: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry_failed: bool = False,
) -> NarrationProcessor:
    """A processor that narrates a Dataset's rows into ``output`` (a folder or ``s3://``; on a
    cluster of several nodes, ``s3://``: the actor and the writers may run on any node).

    The columns mean what they mean in the ``run`` command's datasets: ``voice``,
    ``params`` and ``language`` are optional (a missing column or an empty cell: the job's default; params a
    JSON object or its text), ``extra_columns`` go into each item's metadata (``"*"``: every
    column not named). ``config``: a YAML path, a dict or a JobConfig, resolved here, in the
    driver. ``retry_failed``: narrate again the items an earlier run recorded as failed.
    """
    columns = ColumnsConfig(
        id=id_column, text=text_column, voice=voice_column, params=params_column, language=language_column,
        extra=extra_columns,
    )
    output = str(output)
    if "://" not in output:
        output = os.path.abspath(output)  # the actor's working folder need not be the driver's
    return NarrationProcessor(
        as_config(config), output, columns, include_audio=include_audio, batch_size=batch_size, retry_failed=retry_failed
    )


def narrate_dataset(
    ds: ray.data.Dataset, config: str | Path | Mapping[str, Any] | JobConfig, output: str | os.PathLike, **options: Any
) -> ray.data.Dataset:
    """``build_narration_processor(config, output, **options)(ds)`` in one call."""
    return build_narration_processor(config, output, **options)(ds)


class _NarratedIds(Progress):
    """A quiet progress that keeps the ids this run narrated (to tell ``ok`` from ``skipped``)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.ids: set[str] = set()

    def item_done(self, item_id: str, audio_s: float, chunks: int, *, changed: str | None = None) -> None:
        self.ids.add(item_id)
        super().item_done(item_id, audio_s, chunks, changed=changed)


class _StagesWhenNeeded:
    """The stage pipeline of one Narrator, made at the first chunk a job sends: a batch (a rerun)
    whose rows are all done or failed starts no actor and loads no model. The job uses it as a
    :class:`~pipeline.scheduler.StagePipeline`; made here, in the map_batches actor, the stage
    actors belong to that actor."""

    def __init__(self, config: JobConfig) -> None:
        self.config = config
        self.narrator: Narrator | None = None

    def __getattr__(self, name: str) -> Any:  # only for names not set here: the StagePipeline's
        if name.startswith("__"):
            raise AttributeError(name)
        if self.narrator is None:
            self.narrator = Narrator(self.config)  # joins the actor's Ray; waits until the models load
        return getattr(self.narrator.pipeline, name)

    def close(self) -> None:
        if self.narrator is not None:
            self.narrator.close()


class _NarrateBatches:
    """The ``map_batches`` actor: one set of stage actors (started when first needed) for every batch."""

    def __init__(self, config: JobConfig, output: str, columns: ColumnsConfig, include_audio: bool, retry_failed: bool) -> None:
        self.config = config
        self.stages = _StagesWhenNeeded(config)
        self.output = output
        self.columns = columns
        self.include_audio = include_audio
        self.retry_failed = retry_failed
        self.seen = DiskIdSet()  # every id this execution has had, on disk (a dataset may be large)
        self.storage = open_storage(output, config.s3)

    def __call__(self, batch: pa.Table) -> pa.Table:
        taken = [name for name in OUTPUT_COLUMNS if name in batch.column_names]
        if taken:
            raise ValueError(
                f"the dataset already has column(s) {', '.join(map(repr, taken))}, which narration adds; rename them"
            )
        config = self.config
        records = [
            row_item({k: plain_cell(v) for k, v in row.items()}, NO_ID, self.columns, config.limits)
            for row in batch.to_pylist()
        ]
        # A row without an id has nothing to be recorded under; a repeated id's row would be
        # another item under the same files: both fail here, in their row only.
        local: dict[int, str] = {}
        to_job: list[Item | ItemError] = []
        for n, record in enumerate(records):
            if record.id == NO_ID:
                local[n] = f"{record.field}: {record.message}"
            elif not self.seen.add(record.id):
                local[n] = DUPLICATE_ID_REASON
            else:
                to_job.append(record)
        narrated: set[str] = set()
        entries: dict[str, ManifestEntry] = {}
        if to_job:
            progress = _NarratedIds()
            job = NarrationJob(
                config, self.output, retry_failed=self.retry_failed, pipeline=self.stages, progress=progress
            )
            job.run(iter(to_job))
            narrated = progress.ids
            entries = self._entries({record.id for record in to_job})
        outcomes = [
            ("failed", local[n]) if n in local else self._outcome(records[n].id, entries, narrated)
            for n in range(len(records))
        ]
        return self._with_columns(batch, records, outcomes)

    def _entries(self, ids: set[str]) -> dict[str, ManifestEntry]:
        """The latest record of each of these ids, streamed from the output's manifest (only the
        batch's entries are held)."""
        return {entry.id: entry for entry in iter_manifest_entries(self.storage) if entry.id in ids}

    @staticmethod
    def _outcome(item_id: str, entries: dict[str, ManifestEntry], narrated: set[str]) -> tuple[Status, Any]:
        entry = entries.get(item_id)
        if entry is None:
            return "failed", NOT_NARRATED
        if entry.status != "ok":
            return "failed", " ".join((entry.error or "failed").split())
        return ("ok" if item_id in narrated else "skipped"), entry

    def _with_columns(self, batch: pa.Table, records, outcomes) -> pa.Table:
        status, error, duration, uri, audio = [], [], [], [], []
        fmt = self.config.output.format
        for record, (state, detail) in zip(records, outcomes):
            status.append(state)
            ok = isinstance(detail, ManifestEntry)
            error.append(None if ok else detail)
            duration.append(detail.duration_s if ok else None)
            uri.append(detail.uri if ok else None)
            if self.include_audio:
                audio.append(self.storage.get_bytes(ItemFiles.of(record.id, fmt).audio) if ok else None)
        values = {STATUS: status, ERROR: error, DURATION: duration, AUDIO_URI: uri, AUDIO: audio}
        for name, kind in OUTPUT_COLUMNS.items():
            if name != AUDIO or self.include_audio:
                batch = batch.append_column(pa.field(name, kind), pa.array(values[name], type=kind))
        return batch

    def __del__(self) -> None:
        """Ends the stage actors when the actor exits gracefully (a killed actor's go with it anyway)."""
        for part in (getattr(self, "stages", None), getattr(self, "seen", None)):
            if part is not None:
                with contextlib.suppress(Exception):  # Ray may be going away already
                    part.close()

