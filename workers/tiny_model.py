"""A random-weight Bark checkpoint in the real layouts, made locally.

No model weights can be downloaded here, yet the real loading code (hub layout
of ``suno/bark``, or Suno's original ``.pt`` files) must run end to end. This
module writes a tiny model in exactly those layouts: small widths and depths,
but the real vocabularies, special-token ids, codec rates and generation
constants, so every offset and shape in the pipeline is the real one.

The weights are random but scaled so that greedy decoding yields varied tokens
and the semantic stage stops on EOS after a text-dependent number of steps.

``size`` also writes random weights at the real shapes of ``suno/bark-small``
and ``suno/bark`` (widths, depths, heads, block sizes, no biases, EnCodec 24 kHz
as released), for benchmarks: the compute per step is the real one, the tokens
are noise. Those keep transformers' own initialisation (std 0.02) and are not
calibrated to stop on EOS (random semantic heads almost never choose it; the
benchmarks turn EOS off anyway).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import unicodedata
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import BarkConfig, BarkModel, BertTokenizerFast, EncodecConfig
from transformers.utils import logging as transformers_logging

from workers.config import SemanticSampling, SunoFiles
from workers.layouts import CAUSAL_MASK_SUFFIX, SUNO_STATE_PREFIX, hf_to_suno_key
from workers.settings import GENERATION_CONFIG_FILE, BarkSettings

MARKER_FILE = "tiny_model.json"
"""Written last; marks a directory as a tiny model that may be re-made in place."""

# Widths and depths: small enough to run anywhere in well under a second per step.
TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_HEADS = 2
BLOCK_SIZE = 1024

# Vocabulary sizes of the real suno/bark sub-models (they include padding rows,
# so they are not all derivable from the generation constants).
SEMANTIC_VOCAB = {"input_vocab_size": 129_600, "output_vocab_size": 10_048}
COARSE_VOCAB = {"input_vocab_size": 12_096, "output_vocab_size": 12_096}
FINE_VOCAB = {"input_vocab_size": 1_056, "output_vocab_size": 1_056}
FINE_CODES_GIVEN = 1  # the fine model has heads for codebooks 1..7

# EnCodec 24 kHz: hop 8*5*4*2 = 320 samples -> 75 frames/s; 10 bits per codebook,
# so 8 codebooks = 6 kbps. Only the widths are shrunk.
CODEC_UPSAMPLING_RATIOS = [8, 5, 4, 2]
CODEC_TARGET_BANDWIDTHS = [1.5, 3.0, 6.0, 12.0, 24.0]
TINY_CODEC = {"num_filters": 4, "hidden_size": 16, "num_lstm_layers": 1}

# Random-weight scales: large enough that logits vary by several units, so
# greedy decoding does not lock onto one token.
WEIGHT_STD = 0.3
CODEBOOK_STD = 1.0
# The semantic EOS row is calibrated so that generation stops after about this
# many steps (~2.4 s of audio), sooner or later depending on the text.
TARGET_SEMANTIC_STEPS = 120
EOS_PROBE_TEXTS = 8
# The coarse head's pad/infer ids get this logit, through a hidden channel held at 1.
CONSTANT_CHANNEL = 0
FORBIDDEN_LOGIT = -1.0e4

# Tokenizer: ids of bert-base-multilingual-cased's special tokens.
BERT_REAL_VOCAB_SIZE = 119_547
BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
# Unicode blocks whose characters get a token (and a ## continuation).
TOKENIZER_CHAR_RANGES = (
    (0x0021, 0x007E),  # ASCII
    (0x00A1, 0x00FF),  # Latin-1
    (0x0100, 0x024F),  # Latin Extended-A/B
    (0x0370, 0x03FF),  # Greek
    (0x0400, 0x04FF),  # Cyrillic
    (0x0590, 0x05FF),  # Hebrew
    (0x0600, 0x06FF),  # Arabic
    (0x0900, 0x097F),  # Devanagari
    (0x0E00, 0x0E7F),  # Thai
    (0x2010, 0x205E),  # General punctuation (dashes, quotes, ellipsis)
    (0x3001, 0x303F),  # CJK symbols and punctuation
    (0x3041, 0x30FF),  # Hiragana, Katakana
    (0xAC00, 0xD7A3),  # Hangul syllables
    (0xFF01, 0xFF5E),  # Fullwidth forms
)
# BERT splits every CJK ideograph into its own word, so these need no ## form.
CJK_IDEOGRAPHS = (0x4E00, 0x9FFF)
COMMON_WORDS = """
the of and to in is was that for it with as his on be at by he had not are but from or
have an they which one you were her all she there would their we him been has when who
will more no if out so said what up its about into than them can only other new some
could time these two may then do first any my now such like our over man me even most
made after also did many before must through back years where much your way well down
should because each just those people how too little state good very make world still
own see men work long get here between both life being under never day same another know
while last might us great old year off come since against go came right used take three
hello this test speech voice audio text sentence chapter book story read said says say
think thought look looked want wanted give gave tell told ask asked feel felt seem
house home night morning water light hand hands eyes head face mother father child
children friend friends name place room door word words something nothing everything
always often again once upon began begin end young small large high every without
""".split()


@dataclass(frozen=True)
class ModelSize:
    """The shape of one random-weight checkpoint; vocabularies and constants are always Bark's."""

    hidden_size: int
    num_layers: int
    num_heads: int
    bias: bool
    block_size: int = BLOCK_SIZE
    codec: dict = field(default_factory=dict)  # EncodecConfig overrides; empty: EnCodec 24 kHz as released
    calibrated: bool = False  # tiny: scaled weights and a calibrated semantic EOS row


# suno/bark-small and suno/bark: their config.json (and Suno's model_args) say
# 768/12/12 and 1024/24/16 for all three GPTs, block_size 1024, bias false.
MODEL_SIZES = {
    "tiny": ModelSize(TINY_HIDDEN, TINY_LAYERS, TINY_HEADS, bias=True, codec=TINY_CODEC, calibrated=True),
    "bark-small": ModelSize(hidden_size=768, num_layers=12, num_heads=12, bias=False),
    "bark": ModelSize(hidden_size=1024, num_layers=24, num_heads=16, bias=False),
}

# Bias-free real shapes have no layer-norm bias to pin a constant channel with
# (see _forbid_coarse_non_codebook_ids); the residual stream carries it instead:
# every input embedding holds this value in the constant channel, and no layer writes to it.
PINNED_RESIDUAL = 100.0

SUNO_CODEC_FILE = "encodec_24khz.th"
"""suno format: pass ``ModelConfig(codec_checkpoint=<dir>/encodec_24khz.th)`` to use it."""


class TinyModelExists(FileExistsError):
    """The target directory holds something that is not a tiny model."""


def make_tiny_model(
    directory: Path, *, seed: int = 0, fmt: str = "hf", overwrite: bool = False, size: str = "tiny"
) -> Path:
    """Write a random-weight Bark checkpoint (``fmt`` "hf" or "suno") into ``directory``.

    ``size``: "tiny", or the real shapes "bark-small" (~1.6 GB in float32) and
    "bark" (~4.5 GB). Deterministic given ``seed`` and ``size``. Files are staged next to ``directory`` and moved
    in one by one with the marker last, so a reader never sees a half-made model
    marked as complete. A non-empty directory that is not a tiny model is left
    alone unless ``overwrite``.
    """
    if fmt not in ("hf", "suno"):
        raise ValueError(f"fmt must be 'hf' or 'suno', not {fmt!r}")
    if size not in MODEL_SIZES:
        raise ValueError(f"size must be one of {', '.join(MODEL_SIZES)}, not {size!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _previous_files(directory)
    if previous is None and any(directory.iterdir()) and not overwrite:
        raise TinyModelExists(f"{directory} is not empty and holds no tiny model; pass overwrite=True")

    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        if MODEL_SIZES[size].calibrated:
            with _one_thread():
                bark = build_tiny_bark(seed)
        else:
            bark = build_random_bark(seed, size)
        if fmt == "hf":
            written = _write_hf(bark, staging)
        else:
            written = _write_suno(bark, staging, seed)
        written += _write_tokenizer(staging)
        (staging / MARKER_FILE).write_text(
            json.dumps({"seed": seed, "format": fmt, "size": size, "files": sorted(written)}, indent=2),
            encoding="utf-8",
        )
        for stale in set(previous or ()) - set(written):
            (directory / stale).unlink(missing_ok=True)
        for name in sorted(written) + [MARKER_FILE]:
            os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


@contextmanager
def _one_thread():
    """Tiny tensors run fastest on one thread, and many times slower on a busy machine with more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _previous_files(directory: Path) -> list[str] | None:
    """Files of a tiny model already in ``directory``; None when it holds none."""
    marker = directory / MARKER_FILE
    if not marker.is_file():
        return None
    try:
        return list(json.loads(marker.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError):
        return []


def tiny_bark_config(size: str = "tiny") -> BarkConfig:
    """The widths and depths of ``size``, real vocabularies and codec rates."""
    settings = BarkSettings()
    spec = MODEL_SIZES[size]
    shape = {
        "hidden_size": spec.hidden_size,
        "num_layers": spec.num_layers,
        "num_heads": spec.num_heads,
        "block_size": spec.block_size,
    }
    if not spec.bias:  # the tiny model keeps BarkConfig's default (biases on)
        shape["bias"] = False
    codec = EncodecConfig(
        sampling_rate=settings.sample_rate,
        codebook_size=settings.codebook_size,
        upsampling_ratios=CODEC_UPSAMPLING_RATIOS,
        target_bandwidths=CODEC_TARGET_BANDWIDTHS,
        **spec.codec,
    )
    return BarkConfig(
        semantic_config={**shape, **SEMANTIC_VOCAB},
        coarse_acoustics_config={**shape, **COARSE_VOCAB},
        fine_acoustics_config={
            **shape,
            **FINE_VOCAB,
            "n_codes_total": settings.fine.n_fine_codebooks,
            "n_codes_given": FINE_CODES_GIVEN,
        },
        codec_config=codec.to_dict(),
    )


def build_tiny_bark(seed: int = 0) -> BarkModel:
    """The tiny BarkModel with its random weights, without touching the global RNG."""
    settings = BarkSettings()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bark = BarkModel(tiny_bark_config()).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in (bark.semantic, bark.coarse_acoustics, bark.fine_acoustics):
            for _, param in sub.named_parameters():  # tied weights appear once
                if param.dim() == 2:
                    param.copy_(torch.randn(param.shape, generator=generator) * WEIGHT_STD)
        # transformers initialises EnCodec codebooks to zeros: all codes would decode alike.
        for name, buffer in bark.codec_model.named_buffers():
            if name.endswith("codebook.embed"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * CODEBOOK_STD)
    _calibrate_semantic_eos(bark.semantic, settings.semantic, generator)
    _forbid_coarse_non_codebook_ids(bark.coarse_acoustics, settings)
    return bark


def build_random_bark(seed: int, size: str) -> BarkModel:
    """A BarkModel at a real shape with transformers' own random init; the codec's codebooks
    random too, and the coarse head kept off its pad/infer ids. No EOS calibration."""
    settings = BarkSettings()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bark = BarkModel(tiny_bark_config(size)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in bark.codec_model.named_buffers():
            if name.endswith("codebook.embed"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * CODEBOOK_STD)
    _forbid_coarse_non_codebook_ids(bark.coarse_acoustics, settings)
    return bark


@torch.no_grad()
def _pin_residual_channel(gpt) -> None:
    """Hold the residual stream's CONSTANT_CHANNEL at PINNED_RESIDUAL in every position,
    so that the final layer norm (without a bias) still gives it a large, steady value."""
    gpt.input_embeds_layer.weight[:, CONSTANT_CHANNEL] = PINNED_RESIDUAL
    gpt.position_embeds_layer.weight[:, CONSTANT_CHANNEL] = 0.0
    for block in gpt.layers:
        block.attn.out_proj.weight[CONSTANT_CHANNEL] = 0.0
        block.mlp.out_proj.weight[CONSTANT_CHANNEL] = 0.0
    gpt.layernorm_final.weight[CONSTANT_CHANNEL] = 1.0


@torch.no_grad()
def _forbid_coarse_non_codebook_ids(coarse, settings: BarkSettings) -> None:
    """Make the coarse head never choose its pad/infer ids, as a trained model never does.

    transformers' coarse generation leaves those ids open on every second step,
    and a random head picks them now and then; the codec cannot decode them.
    One hidden channel is pinned to 1 by the final layer norm (or, without a
    layer-norm bias, to a large steady value through the residual stream), and
    only the rows of those ids weigh it, strongly negative.
    """
    if coarse.layernorm_final.bias is not None:
        coarse.layernorm_final.weight[CONSTANT_CHANNEL] = 0.0
        coarse.layernorm_final.bias[CONSTANT_CHANNEL] = 1.0
        weight = FORBIDDEN_LOGIT
    else:
        _pin_residual_channel(coarse)
        # The normalised channel is then about sqrt(hidden): keep the logit near FORBIDDEN_LOGIT.
        weight = FORBIDDEN_LOGIT / math.sqrt(coarse.config.hidden_size)
    head = coarse.lm_head.weight
    head[:, CONSTANT_CHANNEL] = 0.0
    first_invalid = settings.semantic.semantic_vocab_size + settings.codebook_size * settings.coarse.n_coarse_codebooks
    head[first_invalid:, CONSTANT_CHANNEL] = weight


@torch.no_grad()
def _calibrate_semantic_eos(semantic, config, generator: torch.Generator) -> None:
    """Set the EOS row of the semantic head so probe texts stop after ~TARGET_SEMANTIC_STEPS.

    A random EOS row either ends every text at once or never ends any. Until EOS
    is chosen, a greedy path does not depend on the EOS row, so one run with EOS
    out of reach tells, for each step, how large the row (along a random
    direction) must be for EOS to win there: by argmax, or by ``min_eos_p``.
    """
    eos, n_semantic = config.eos_token_id, config.semantic_vocab_size
    head = semantic.lm_head.weight
    head[eos] = 0.0  # logit 0: far below the best of 10 000 random logits

    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = semantic.lm_head.register_forward_hook(
        lambda _module, inputs, logits: steps.append((inputs[0][:, -1], logits[:, -1, :n_semantic]))
    )
    width = config.max_input_semantic_length
    first_text_id, n_text_ids = BERT_SPECIAL_IDS["[MASK]"] + 1, len(tiny_vocab())
    ids = torch.randint(first_text_id, n_text_ids, (EOS_PROBE_TEXTS, width), generator=generator)
    lengths = torch.linspace(4, width // 2, EOS_PROBE_TEXTS).long()
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    greedy = type(config)(
        **{**config.to_dict(), "do_sample": False, "min_eos_p": None, "max_new_tokens": TARGET_SEMANTIC_STEPS}
    )
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # generate() warns about its own placeholder ids
    try:
        semantic.generate(ids, attention_mask=mask, semantic_generation_config=greedy)
    finally:
        hook.remove()
        transformers_logging.set_verbosity(verbosity)

    hidden = torch.stack([h for h, _ in steps], dim=1)  # (probes, steps, hidden)
    logits = torch.stack([z for _, z in steps], dim=1)  # (probes, steps, semantic vocab)
    min_eos_p = SemanticSampling().min_eos_p
    needed_logit = torch.minimum(  # EOS wins as argmax, or once its probability passes min_eos_p
        logits.max(-1).values, logits.logsumexp(-1) + math.log(min_eos_p / (1 - min_eos_p))
    )
    direction = torch.randn(hidden.shape[-1], generator=generator)
    if (hidden @ direction).mean() < 0:  # point it where the hidden states mostly are
        direction = -direction
    along = hidden @ (direction / direction.norm())
    scale_to_stop = torch.where(along > 0, needed_logit / along, torch.inf)
    # The scale at which each probe has stopped by the target step; take the median probe.
    per_probe = scale_to_stop.min(dim=1).values
    scale = per_probe[per_probe.isfinite()].median()
    head[eos] = scale * direction / direction.norm()


def _write_hf(bark: BarkModel, directory: Path) -> list[str]:
    """The ``suno/bark`` hub layout: config.json, model.safetensors, nested generation config."""
    # BarkModel starts with a plain GenerationConfig; a BarkGenerationConfig would break save_pretrained.
    bark.save_pretrained(directory, safe_serialization=True)
    (directory / GENERATION_CONFIG_FILE).write_text(
        json.dumps(BarkSettings().to_dict(), indent=2, sort_keys=True), encoding="utf-8"
    )
    return [p.name for p in directory.iterdir() if p.is_file()]


def _suno_model_args(config, *, fine: bool = False) -> dict:
    """nanoGPT's ``model_args`` for one Bark sub-config."""
    args = {
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "n_embd": config.hidden_size,
        "block_size": config.block_size,
        "input_vocab_size": config.input_vocab_size,
        "output_vocab_size": config.output_vocab_size,
        "bias": bool(config.bias),
        "dropout": float(config.dropout),
    }
    if fine:
        args.update(n_codes_total=config.n_codes_total, n_codes_given=config.n_codes_given)
    return args


def _suno_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sub-model's weights under Suno's names (compiled-model prefix, no causal masks).

    Like Suno's FineGPT, tied embeddings and heads appear under both names.
    """
    state = {}
    for key, tensor in module.state_dict(keep_vars=False).items():
        if key.endswith(CAUSAL_MASK_SUFFIX):
            continue
        state[SUNO_STATE_PREFIX + hf_to_suno_key(key)] = tensor.detach()
    return state


def _write_suno(bark: BarkModel, directory: Path, seed: int) -> list[str]:
    """Suno's original files: three nanoGPT checkpoints and an encodec 24 kHz state dict."""
    subs = {"semantic": bark.semantic, "coarse": bark.coarse_acoustics, "fine": bark.fine_acoustics}
    names = SunoFiles()
    for stage, module in subs.items():
        checkpoint = {
            "model_args": _suno_model_args(module.config, fine=stage == "fine"),
            "model": _suno_state(module),
            "best_val_loss": torch.tensor(0.0),  # Suno's own loader logs it
        }
        torch.save(checkpoint, directory / getattr(names, stage))
    torch.save(_random_encodec_state(seed), directory / SUNO_CODEC_FILE)
    return [getattr(names, stage) for stage in subs] + [SUNO_CODEC_FILE]


def _random_encodec_state(seed: int) -> dict[str, torch.Tensor]:
    """A complete, random state dict for ``encodec_model_24khz``, about 17 MB on disk.

    The real architecture holds 23 M values (93 MB). Every tensor here is a window
    into one shared random pool; ``torch.save`` writes a shared storage once, so
    the file stays small while ``load_state_dict(strict=True)`` still sees every key.
    """
    import encodec  # imports torchaudio: only needed for the suno format

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # encodec's old weight_norm API
        reference = encodec.EncodecModel.encodec_model_24khz(pretrained=False).state_dict()
    generator = torch.Generator().manual_seed(seed)
    largest = max(t.numel() for t in reference.values())
    pool = torch.randn(2 * largest, generator=generator) * WEIGHT_STD
    state = {}
    for key, tensor in reference.items():
        if key.endswith("_codebook.inited") or not tensor.is_floating_point():
            state[key] = tensor.clone()
            continue
        start = int(torch.randint(0, pool.numel() - tensor.numel() + 1, (1,), generator=generator))
        state[key] = pool[start : start + tensor.numel()].view(tensor.shape)
    return state


def tiny_vocab() -> dict[str, int]:
    """WordPiece vocab with mBERT's special ids, every character of common scripts and a few words."""
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(1, BERT_SPECIAL_IDS["[UNK]"])]
    tokens += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [
        chr(code)
        for low, high in TOKENIZER_CHAR_RANGES
        for code in range(low, high + 1)
        if not unicodedata.category(chr(code)).startswith(("C", "Z"))  # unassigned, control, space
    ]
    tokens += chars
    tokens += [f"##{c}" for c in chars]
    tokens += [chr(code) for code in range(CJK_IDEOGRAPHS[0], CJK_IDEOGRAPHS[1] + 1)]
    seen = set(tokens)
    words = [form for word in COMMON_WORDS for form in (word, word.capitalize())]
    tokens += [w for w in dict.fromkeys(words) if w not in seen]
    vocab = {token: index for index, token in enumerate(tokens)}
    assert all(vocab[t] == i for t, i in BERT_SPECIAL_IDS.items()) and len(vocab) == len(tokens)
    assert len(vocab) <= BERT_REAL_VOCAB_SIZE
    return vocab


def build_tiny_tokenizer() -> BertTokenizerFast:
    """A cased BERT WordPiece tokenizer, ids compatible with bert-base-multilingual-cased."""
    return BertTokenizerFast(
        vocab=tiny_vocab(),
        do_lower_case=False,
        strip_accents=False,
        tokenize_chinese_chars=True,
        model_max_length=512,
    )


def _write_tokenizer(directory: Path) -> list[str]:
    before = {p.name for p in directory.iterdir()}
    build_tiny_tokenizer().save_pretrained(directory)
    return sorted({p.name for p in directory.iterdir() if p.is_file()} - before)
