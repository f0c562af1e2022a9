"""What a stage needs to know: where the weights are, how it is deployed, how it samples.

These are the stage-facing parts of a job's config. They live here, at the
bottom, so that ``workers/`` is a library: the driver's job config
(``pipeline.config.JobConfig``) composes them, and nothing here knows about jobs.
Every model forbids unknown fields, so a typo fails with the field's path.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STAGE_NAMES = ("semantic", "coarse", "fine", "codec")
StageName = Literal["semantic", "coarse", "fine", "codec"]
DType = Literal["float32", "float16", "bfloat16"]
AttentionImpl = Literal["eager", "sdpa"]
DecodeCompile = Literal["off", "torch_compile", "cuda_graphs"]
# Bark's audio rate (its EnCodec decoder), when the checkpoint says none. Kept here, not in
# workers.settings (which imports transformers), so the job config checks codec rates without it.
DEFAULT_SAMPLE_RATE = 24_000

# A temperature is 0 (greedy) or in this range: below it, logits / T overflows
# float32 and the probabilities become NaN; above it, sampling is uniform noise.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SunoFiles(Strict):
    """File names of the original Suno checkpoints inside ``model.source``."""

    semantic: str = "text_2.pt"
    coarse: str = "coarse_2.pt"
    fine: str = "fine_2.pt"


class ModelConfig(Strict):
    """Where the weights come from.

    ``format: hf`` reads a Hugging Face checkpoint in the layout of ``suno/bark``
    (a hub id or a local directory). ``format: suno`` reads Suno's original
    ``text/coarse/fine`` ``.pt`` files from a local directory, with EnCodec 24 kHz
    from the ``encodec`` package and the BERT tokenizer named by ``tokenizer``.
    """

    source: str
    format: Literal["hf", "suno"] = "hf"
    revision: str | None = None
    suno_files: SunoFiles = SunoFiles()
    tokenizer: str | None = Field(
        default=None,
        description="hub id or directory of the text tokenizer; default: the checkpoint's "
        "own (hf) or bert-base-multilingual-cased (suno)",
    )
    codec_checkpoint: str | None = Field(
        default=None,
        description="suno format only: an encodec 24 kHz state-dict file; default: the "
        "encodec package's pretrained download",
    )
    make_tiny_if_missing: bool = Field(
        default=False,
        description="create a random-weight tiny checkpoint at `source` when it does not exist",
    )


class StageConfig(Strict):
    """How one stage is deployed and run."""

    replicas: int = Field(default=1, ge=1)
    num_gpus: float | Literal["auto"] = Field(
        default="auto",
        description="GPU share per replica; 'auto' asks for one GPU when the cluster has GPUs, none otherwise",
    )
    num_cpus: float = Field(default=0.0, ge=0)
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per replica, e.g. {coarse_node: 1} to pin a node type"
    )
    batch_size: int = Field(default=8, ge=1, description="most chunks one forward pass carries (slots, for semantic and coarse)")
    max_wait_ms: float = Field(
        default=10.0, ge=0, description="how long a stage holds a partial batch open for more chunks to arrive"
    )
    continuous: bool = Field(
        default=True,
        description="semantic and coarse: a finished chunk leaves the batch and a waiting one takes its slot "
        "at once (false: a batch is admitted only into an empty engine and runs to its longest member)",
    )
    decode_compile: DecodeCompile = Field(
        default="off",
        description="semantic and coarse: compile the fixed-shape decode step (torch_compile) or capture it "
        "as a CUDA graph and replay it (cuda_graphs, GPU only)",
    )
    dtype: DType = "float32"
    attn_implementation: AttentionImpl = Field(
        default="sdpa",
        description="eager: transformers' own arithmetic (matmul, softmax, matmul); sdpa: torch's "
        "scaled_dot_product_attention, which picks its flash or memory-efficient kernels on a GPU",
    )
    torch_threads: int | None = Field(default=None, ge=1)
    max_restarts: int = Field(default=3, ge=-1)
    max_task_retries: int = Field(
        default=-1,
        ge=-1,
        description="retries of a chunk whose actor died (-1: until the actor is back, bounded by max_restarts); "
        "until Ray notices a crashed node every call fails at once, so a small number runs out",
    )

    @model_validator(mode="after")
    def _gpu_share(self) -> StageConfig:
        if self.num_gpus != "auto" and not (0 <= self.num_gpus and (self.num_gpus <= 1 or self.num_gpus == int(self.num_gpus))):
            raise ValueError("num_gpus must be 'auto', a fraction in [0, 1], or a whole number")
        return self


def _check_temperature(value: float) -> float:
    if value != 0 and not MIN_TEMPERATURE <= value <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be 0 (greedy) or between {MIN_TEMPERATURE} and {MAX_TEMPERATURE}")
    return value


class SamplingConfig(Strict):
    """Sampling for one autoregressive stage, in Suno's order: top-p over the untempered
    logits, then top-k, then softmax at the temperature. ``temperature: 0`` is greedy."""

    temperature: float = Field(ge=0)
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)

    _temperature_range = field_validator("temperature")(_check_temperature)


class SemanticSampling(SamplingConfig):
    temperature: float = Field(default=0.7, ge=0)
    min_eos_p: float | None = Field(
        default=0.2,
        gt=0,
        le=1,
        description="stop once P(EOS) in the distribution sampled from reaches this (Suno's rule); null: only on EOS",
    )
    stop_at_eos: bool = Field(
        default=True, description="false: always generate max_new_tokens (fixed lengths, for benchmarks)"
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, description="default: the checkpoint's generation config (768)"
    )


class CoarseSampling(SamplingConfig):
    temperature: float = Field(default=0.7, ge=0)


class FineSampling(Strict):
    temperature: float = Field(default=0.5, ge=0)

    _temperature_range = field_validator("temperature")(_check_temperature)


class SamplingSet(Strict):
    """Upstream Bark's defaults: text 0.7, coarse 0.7, fine 0.5."""

    semantic: SemanticSampling = SemanticSampling()
    coarse: CoarseSampling = CoarseSampling()
    fine: FineSampling = FineSampling()
