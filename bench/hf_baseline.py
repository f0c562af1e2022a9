"""The plain transformers way: ``BarkModel.generate`` on the same checkpoint, texts and lengths.

Used by ``bench/throughput.py`` for its baselines (a) one chunk at a time and
(b) chunks batched with padded text and an attention mask. Each sub-model's
``generate`` (and the codec decode) is wrapped with a timer, so the baselines
report where their time goes too, without re-implementing any of transformers'
own generation.

Fixed lengths: transformers has no switch to turn the semantic EOS off, but
``semantic_min_new_tokens=N`` suppresses EOS until N tokens exist (its
``MinNewTokensLengthLogitsProcessor``), and ``semantic_max_new_tokens=N`` ends
generation there, so every chunk gets exactly N semantic tokens; ``min_eos_p``
is left unset (``BarkModel.generate`` then disables Bark's early-stop rule).
The semantic output length is checked on every call.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import BarkModel
from transformers.utils import logging as transformers_logging

from workers.config import SamplingSet
from workers.records import VoicePrompt

STAGES = ("semantic", "coarse", "fine", "codec")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class BaselineRun:
    """One baseline pass over every chunk."""

    name: str
    batch_size: int
    chunks: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time (all threads): contention on a shared machine hides here less
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def throughput(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "chunks": self.chunks,
            "audio_s": round(self.audio_s, 3),
            "wall_s": round(self.wall_s, 3),
            "audio_s_per_wall_s": round(self.throughput, 4),
            "cpu_s": round(self.cpu_s, 3),
            "audio_s_per_cpu_s": round(self.audio_s / self.cpu_s, 4) if self.cpu_s > 0 else None,
            "stage_busy_s": {k: round(v, 3) for k, v in self.stage_s.items()},
        }


class TransformersBark:
    """``BarkModel`` loaded by transformers from the benchmark's checkpoint directory."""

    def __init__(self, checkpoint: str, device: str, dtype: str, attn_implementation: str = "eager") -> None:
        self.device = torch.device(device)
        self.dtype = TORCH_DTYPES[dtype] if self.device.type == "cuda" else torch.float32
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()  # load reports, deprecation notes per generate call
        self._restore_verbosity = lambda: transformers_logging.set_verbosity(verbosity)
        # transformers' Bark has eager and flash_attention_2 attention, no sdpa.
        self.model = BarkModel.from_pretrained(checkpoint, dtype=self.dtype, attn_implementation=attn_implementation)
        self.model = self.model.to(self.device).eval()
        self.sample_rate = int(self.model.generation_config.sample_rate)
        semantic = self.model.generation_config.semantic_config
        self.text_width = int(semantic["max_input_semantic_length"])
        self._stage_s = dict.fromkeys(STAGES, 0.0)
        self._expected_semantic: int | None = None
        self._wrap(self.model.semantic, "generate", "semantic", check_semantic=True)
        self._wrap(self.model.coarse_acoustics, "generate", "coarse")
        self._wrap(self.model.fine_acoustics, "generate", "fine")
        self._wrap(self.model, "codec_decode", "codec")

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self._restore_verbosity()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, owner, method: str, stage: str, check_semantic: bool = False) -> None:
        inner = getattr(owner, method)

        def timed(*args, **kwargs):
            self._sync()
            started = time.perf_counter()
            out = inner(*args, **kwargs)
            self._sync()
            self._stage_s[stage] += time.perf_counter() - started
            if check_semantic and self._expected_semantic is not None and out.shape[-1] != self._expected_semantic:
                raise RuntimeError(
                    f"transformers generated {out.shape[-1]} semantic tokens, not the fixed {self._expected_semantic}"
                )
            return out

        setattr(owner, method, timed)  # an instance attribute: BarkModel.generate calls it

    def generate(
        self,
        text_ids: Sequence[Sequence[int]],
        voice: VoicePrompt | None,
        seed: int,
        sampling: SamplingSet,
        semantic_tokens: int,
    ) -> list[int]:
        """One ``BarkModel.generate`` call over ``text_ids`` (one batch); returns each chunk's audio samples."""
        batch = len(text_ids)
        ids = torch.zeros((batch, self.text_width), dtype=torch.long)
        mask = torch.zeros((batch, self.text_width), dtype=torch.long)
        for row, chunk in enumerate(text_ids):
            ids[row, : len(chunk)] = torch.as_tensor(list(chunk)[: self.text_width])
            mask[row, : len(chunk)] = 1
        history = None
        if voice is not None:  # transformers takes one voice per batch
            history = {
                key: torch.as_tensor(getattr(voice, key)).to(self.device)
                for key in ("semantic_prompt", "coarse_prompt", "fine_prompt")
            }
        self._expected_semantic = semantic_tokens
        torch.manual_seed(seed)
        options = {
            "do_sample": True,
            "semantic_max_new_tokens": semantic_tokens,
            "semantic_min_new_tokens": semantic_tokens,
            "semantic_temperature": sampling.semantic.temperature,
            "semantic_top_k": _top_k(sampling.semantic.top_k),
            "coarse_temperature": sampling.coarse.temperature,
            "coarse_top_k": _top_k(sampling.coarse.top_k),
            "fine_temperature": sampling.fine.temperature,
        }
        for stage in ("semantic", "coarse"):
            if getattr(sampling, stage).top_p is not None:
                options[f"{stage}_top_p"] = getattr(sampling, stage).top_p
        with torch.inference_mode():
            _audio, lengths = self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                history_prompt=history,
                return_output_lengths=True,
                **options,
            )
        self._sync()
        return [int(n) for n in lengths]

    def run(
        self,
        name: str,
        texts: Sequence[Sequence[int]],
        seeds: Sequence[int],
        voice: VoicePrompt | None,
        sampling: SamplingSet,
        semantic_tokens: int,
        batch_size: int,
    ) -> BaselineRun:
        """Every chunk, ``batch_size`` per ``generate`` call, timed from the first call to the last audio."""
        result = BaselineRun(name=name, batch_size=batch_size)
        self._stage_s = dict.fromkeys(STAGES, 0.0)
        self._sync()
        started, cpu_started = time.perf_counter(), time.process_time()
        for first in range(0, len(texts), batch_size):
            group = texts[first : first + batch_size]
            lengths = self.generate(group, voice, seeds[first], sampling, semantic_tokens)
            result.chunks += len(group)
            result.audio_s += sum(lengths) / self.sample_rate
        result.wall_s = time.perf_counter() - started
        result.cpu_s = time.process_time() - cpu_started
        result.stage_s = dict(self._stage_s)
        return result

    def warm_up(self, text_ids: Sequence[int], voice, sampling: SamplingSet, batch_size: int) -> None:
        """One short call per batch shape, so lazy initialisation is not timed."""
        for size in sorted({1, batch_size}):
            self.generate([text_ids] * size, voice, 0, sampling, semantic_tokens=8)


def _top_k(value: int | None) -> int:
    """transformers' default top-k is 50; the pipeline's ``None`` means none (0 turns it off)."""
    return 0 if value is None else value
