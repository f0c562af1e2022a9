"""Per-stage speeds recorded by the benchmarks, and the wall time they predict for a job.

``bench/engines.py`` measures each stage's engine alone at several batch sizes
and keeps what it measured as a record in ``bench/rates.json``: the model's
shape, the device and dtype, and per stage the audio seconds one replica makes
per second at each batch size. ``bark-pipeline plan`` reads those records to
say how long a job would take on the configured stages. A record speaks only
for the shape, device and dtype it was measured on: where none matches, there
is no estimate, never a figure borrowed from another model or machine.

Imports nothing heavy (pydantic only), so the benchmark on a bare GPU box
and the plan command both use it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.errors import UserError

RATES_FILE = Path(__file__).resolve().parents[1] / "bench" / "rates.json"
STAGES = ("semantic", "coarse", "fine", "codec")
CPU_DTYPE = "float32"  # without CUDA a stage runs in float32 whatever its dtype

Device = Literal["cpu", "cuda"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelShape(_Record):
    """The semantic GPT's width, depth and heads (Bark's three GPTs share them): speed depends on these, not on the weights."""

    hidden_size: int
    num_layers: int
    num_heads: int


class BatchRate(_Record):
    batch: int = Field(ge=1)
    audio_s_per_s: float = Field(gt=0, description="audio seconds one replica makes per second at this batch size")


class RatesRecord(_Record):
    """One benchmark run: where and on what it ran, and each stage's rates."""

    model: str = Field(description="tiny, bark-small, bark, or the checkpoint's folder name")
    shape: ModelShape
    device: Device
    device_name: str
    dtype: str
    date: str
    machine: str
    settings: dict = Field(default_factory=dict, description="attention, decode_compile, torch threads, versions")
    command: str
    semantic_tokens: int
    stages: dict[Literal["semantic", "coarse", "fine", "codec"], list[BatchRate]]

    def label(self) -> str:
        return f"{self.model} on {self.device_name} ({self.dtype}), {self.date}"


class RatesFile(_Record):
    records: list[RatesRecord] = []


class RatesError(UserError):
    """The rates file exists but cannot be read: one line."""


def load_rates(path: Path = RATES_FILE) -> list[RatesRecord]:
    """The recorded runs; none when there is no file (an installed package without ``bench/``)."""
    if not path.is_file():
        return []
    try:
        return RatesFile.model_validate_json(path.read_bytes()).records
    except (OSError, ValidationError) as exc:
        raise RatesError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None


def save_record(record: RatesRecord, path: Path = RATES_FILE) -> None:
    """Adds ``record`` to the file, replacing an earlier one for the same model shape, device, dtype and machine."""
    key = (record.shape, record.device, record.dtype, record.machine)
    kept = [r for r in load_rates(path) if (r.shape, r.device, r.dtype, r.machine) != key]
    body = RatesFile(records=[*kept, record]).model_dump(mode="json")
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class StageRate:
    """The rate a plan uses for one stage: one replica's, times the configured replicas."""

    stage: str
    record: RatesRecord
    batch: int  # the measured batch size whose rate is used
    per_replica: float
    replicas: int

    @property
    def total(self) -> float:
        return self.per_replica * self.replicas


def stage_rate(
    records: list[RatesRecord], stage: str, shape: ModelShape, device: Device, dtype: str, batch_size: int, replicas: int
) -> StageRate | None:
    """The newest matching record's rate at the largest measured batch size not above ``batch_size``
    (a replica never runs larger batches than its config allows); None when no record fits."""
    dtype = CPU_DTYPE if device == "cpu" else dtype
    for record in sorted(records, key=lambda r: r.date, reverse=True):
        if (record.shape, record.device, record.dtype) != (shape, device, dtype):
            continue
        fitting = [r for r in record.stages.get(stage, []) if r.batch <= batch_size]
        if fitting:
            best = max(fitting, key=lambda r: r.batch)
            return StageRate(stage, record, best.batch, best.audio_s_per_s, replicas)
    return None


def wall_seconds(speech_s: float, rates: list[StageRate]) -> tuple[float, StageRate]:
    """An estimate: the slowest stage (rate x replicas) bounds the pipeline's throughput, so the
    job takes the audio the stages make over that stage's rate. Start-up, model loading and the
    driver are not counted, and each replica is assumed to have its device to itself."""
    slowest = min(rates, key=lambda r: r.total)
    return speech_s / slowest.total, slowest
