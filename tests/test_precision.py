"""fp16 and bf16 against fp32 on the tiny model, with both attention kernels.

Half precision changes rounding, so tokens cannot be compared for equality; what
a user relies on is that the next-token choice almost always stays the same. On
one fixed input per stage we compare the logits of every position (teacher
forcing, so one early flip does not derail the rest) and state the tolerance:
top-1 agreement and the largest logit difference.
"""

from __future__ import annotations

import pytest
import torch

from workers.config import ModelConfig
from workers.checkpoints import load_stage_model
from workers.fine import logits_for as fine_logits
from workers.gpt import run_blocks

# dtype: (least top-1 agreement with fp32, largest logit difference relative to the
# largest fp32 logit). Measured on the tiny model: bf16 0.97-0.99 and <= 0.041,
# fp16 0.99-1.00 and <= 0.0064 (semantic, coarse and fine; eager and SDPA alike).
TOLERANCE = {torch.bfloat16: (0.93, 0.06), torch.float16: (0.96, 0.01)}
SEQUENCE = 300


def _causal_logits(model, ids: torch.Tensor, attention: str) -> torch.Tensor:
    positions = torch.arange(ids.shape[1])
    hidden = model.drop(model.input_embeds_layer(ids) + model.position_embeds_layer(positions)[None])
    return model.lm_head(run_blocks(model, hidden, attention, causal=True))[0].float()


def _stage_logits(stage: str, model, attention: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    if stage == "fine":
        codes = torch.randint(0, model.config.output_vocab_size, (1, model.config.block_size, model.config.n_codes_total), generator=generator)
        return torch.cat([fine_logits(model, codebook, codes, attention)[0].float() for codebook in range(2, model.config.n_codes_total)])
    ids = torch.randint(0, model.config.input_vocab_size, (1, SEQUENCE), generator=generator)
    return _causal_logits(model, ids, attention)


@pytest.fixture(scope="module")
def fp32_models(tiny_model_dir):
    config = ModelConfig(source=str(tiny_model_dir))
    return {stage: load_stage_model(config, stage, "cpu", torch.float32) for stage in ("semantic", "coarse", "fine")}


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_half_precision_agrees_with_fp32(tiny_model_dir, fp32_models, stage, dtype, attention):
    half = load_stage_model(ModelConfig(source=str(tiny_model_dir)), stage, "cpu", dtype)
    assert next(half.parameters()).dtype == dtype
    with torch.inference_mode():
        reference = _stage_logits(stage, fp32_models[stage], "eager")
        logits = _stage_logits(stage, half, attention)
    agreement = float((reference.argmax(-1) == logits.argmax(-1)).float().mean())
    difference = float((reference - logits).abs().max() / reference.abs().max())
    least_agreement, largest_difference = TOLERANCE[dtype]
    print(f"{stage} {dtype} {attention}: agreement {agreement:.3f}, relative difference {difference:.4f}")
    assert agreement >= least_agreement, f"{stage} {dtype} {attention}: top-1 agreement {agreement:.3f}"
    assert difference <= largest_difference, f"{stage} {dtype} {attention}: relative logit difference {difference:.4f}"
