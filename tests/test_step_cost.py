"""A step costs the same whatever it carries: counted torch ops and host syncs per step.

On a GPU every torch op is a kernel launch and every device-to-host read drains
the stream, so per-row host work, not the model, would set the speed. These
tests count, with the torch profiler on the CPU, the ops of one decode step at
1, 8 and 64 active rows (semantic and coarse) and of one fine window, and the
ops that force a device-to-host sync. Counts, not times.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from transformers.models.bark.generation_configuration_bark import BarkFineGenerationConfig

from workers.checkpoints import load_settings_for, load_stage_model
from workers.coarse import CoarsePolicy
from workers.config import CoarseSampling, FineSampling, ModelConfig, SemanticSampling
from workers.engine import Admission, GptEngine
from workers.fine import FineEngine
from workers.records import CoarseRequest, FineRequest, SemanticRequest
from workers.sampler import seed_keys
from workers.semantic import SemanticPolicy

ROWS = (1, 8, 64)
MOST_OPS_GROWTH = 1.2  # ops at 64 rows / ops at 1 row
# Ops that read a device value on the host: each one stalls until the device is done.
SYNCING_OPS = {
    "aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select",
    "aten::equal", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim",
}
TRANSFER = "engine.to_host"  # the engines' one deliberate copy of results to the host


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    config = ModelConfig(source=str(tiny_model_dir))
    return {s: load_stage_model(config, s, "cpu", torch.float32) for s in ("semantic", "coarse", "fine")}, load_settings_for(config)


def _counts(run) -> Counter:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return Counter(event.name for event in prof.events())


def _summary(counts: Counter) -> tuple[int, int, int]:
    """(torch ops, syncing ops, deliberate transfers) in one profiled call."""
    ops = sum(n for name, n in counts.items() if name.startswith("aten::"))
    return ops, sum(counts[name] for name in SYNCING_OPS), counts[TRANSFER]


def _decode_step_counts(engine, admissions) -> tuple[int, int, int]:
    engine.admit(admissions)
    engine.step()  # the prefill step
    engine.step()  # one decode step, so the first profiled one is not a first call
    assert engine.active == len(admissions) and not engine._to_prefill
    counts = _summary(_counts(engine.step))
    assert engine.active == len(admissions), "a row finished during the profiled step"
    return counts


def _check(name: str, by_rows: dict[int, tuple[int, int, int]]) -> None:
    print(name, {rows: dict(zip(("ops", "syncs", "transfers"), c)) for rows, c in by_rows.items()})
    for rows, (ops, syncs, transfers) in by_rows.items():
        assert syncs == 0, f"{name}: {syncs} syncing ops at {rows} rows"
        assert transfers == 1, f"{name}: {transfers} device-to-host transfers at {rows} rows"
    assert by_rows[max(ROWS)][0] <= MOST_OPS_GROWTH * by_rows[min(ROWS)][0], f"{name}: ops grow with rows: {by_rows}"


def test_semantic_decode_step_cost_does_not_grow_with_rows(models):
    (stage_models, settings) = models
    sampling = SemanticSampling(temperature=0.7, top_k=50, top_p=0.9, stop_at_eos=False, max_new_tokens=64)
    by_rows = {}
    for rows in ROWS:
        engine = GptEngine(stage_models["semantic"], SemanticPolicy(stage_models["semantic"], settings), rows)
        admissions = [Admission(i, SemanticRequest(key=str(i), text_ids=[5 + i, 7], seed=i, sampling=sampling)) for i in range(rows)]
        by_rows[rows] = _decode_step_counts(engine, admissions)
    _check("semantic", by_rows)


def test_coarse_decode_step_cost_does_not_grow_with_rows(models):
    (stage_models, settings) = models
    rng = np.random.default_rng(0)
    by_rows = {}
    for rows in ROWS:
        engine = GptEngine(stage_models["coarse"], CoarsePolicy(stage_models["coarse"], settings), rows)
        admissions = [
            Admission(i, CoarseRequest(key=str(i), seed=i, sampling=CoarseSampling(top_k=100)), rng.integers(0, 10_000, 40))
            for i in range(rows)
        ]
        by_rows[rows] = _decode_step_counts(engine, admissions)
    _check("coarse", by_rows)


def test_fine_window_cost_does_not_grow_with_rows(models):
    (stage_models, settings) = models
    # A 256-frame window instead of 1024 keeps 64 rows quick on a CPU; the ops are the same.
    fine = BarkFineGenerationConfig(**{**settings.fine.to_dict(), "max_fine_input_length": 256, "max_fine_history_length": 128})
    engine = FineEngine(stage_models["fine"], dataclasses.replace(settings, fine=fine), batch_size=max(ROWS))
    by_rows = {}
    for rows in ROWS:
        codes = torch.randint(0, settings.codebook_size, (rows, 300, settings.n_fine_codebooks))
        index = torch.arange(rows)
        starts, firsts = torch.zeros(rows, dtype=torch.long), torch.full((rows,), 10)
        keys, temperature = seed_keys(index), torch.full((rows,), FineSampling().temperature)
        ops, syncs, _ = _summary(_counts(lambda: engine.window(codes, 0, index, starts, firsts, keys, temperature)))
        by_rows[rows] = (ops, syncs, 1)  # the window itself transfers nothing; compute() does once per batch
    _check("fine window", by_rows)
    rng = np.random.default_rng(1)
    batch = [Admission(i, FineRequest(key=str(i), seed=i, sampling=FineSampling()), rng.integers(0, 1024, (2, 400))) for i in range(8)]
    engine.admit(batch)
    ops, syncs, transfers = _summary(_counts(engine.step))
    assert syncs == 0 and transfers == 1, "a whole fine batch, all its windows: one transfer back"
