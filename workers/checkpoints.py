"""Load one Bark stage's sub-model, and nothing else, from a checkpoint.

Each Ray actor hosts one stage, so it reads only that stage's weights: with
safetensors just the tensors under the stage's prefix (and only the shards that
hold them), with Suno's original layout just the stage's own ``.pt`` file.

Two layouts are understood:

* ``hf``: the hub layout of ``suno/bark`` / ``suno/bark-small`` (a hub id or a
  local directory): ``config.json`` is a ``BarkConfig``; weights under the
  prefixes ``semantic.``, ``coarse_acoustics.``, ``fine_acoustics.``,
  ``codec_model.`` in ``model.safetensors`` (maybe sharded) or ``pytorch_model.bin``.
* ``suno``: Suno's nanoGPT checkpoints (``text_2.pt`` ...) in a local directory,
  with EnCodec 24 kHz from the ``encodec`` package.

Nothing is ever unpickled: ``.bin`` and ``.pt`` files load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    BarkCoarseConfig,
    BarkCoarseModel,
    BarkConfig,
    BarkFineConfig,
    BarkFineModel,
    BarkSemanticConfig,
    BarkSemanticModel,
    EncodecModel,
)

from workers.config import STAGE_NAMES, ModelConfig
from workers.errors import UserError
from workers.layouts import CAUSAL_MASK_SUFFIX, suno_to_hf_key
from workers.settings import BarkSettings, load_settings
from workers.tiny_model import MARKER_FILE, MODEL_SIZES, build_tiny_tokenizer, make_tiny_model

SUNO_TOKENIZER = "bert-base-multilingual-cased"

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
_HUB_FILES = ["*.json", "*.txt", "*.safetensors"]  # configs, tokenizer, weights
_HUB_BIN_FILES = [*_HUB_FILES, "pytorch_model*.bin"]
_HUB_TEXT_FILES = ["*.json", "*.txt"]  # configs and tokenizer: what planning reads, no weights


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded; the message is one line naming the path."""


@dataclass(frozen=True)
class _GptStage:
    prefix: str  # key prefix inside a BarkModel checkpoint
    config_attr: str  # sub-config attribute of BarkConfig
    config_cls: type
    model_cls: type


_GPT_STAGES = {
    "semantic": _GptStage("semantic.", "semantic_config", BarkSemanticConfig, BarkSemanticModel),
    "coarse": _GptStage("coarse_acoustics.", "coarse_acoustics_config", BarkCoarseConfig, BarkCoarseModel),
    "fine": _GptStage("fine_acoustics.", "fine_acoustics_config", BarkFineConfig, BarkFineModel),
}
_CODEC_PREFIX = "codec_model."

# ---------------------------------------------------------------- where and what


def resolve_checkpoint_dir(model: ModelConfig) -> Path:
    """The local directory of the checkpoint: ``source`` itself, or a hub snapshot of it."""
    directory = _locate(model, weights=True)
    assert directory is not None  # with weights, a missing tiny model is made
    return directory


def resolve_text_dir(model: ModelConfig) -> Path:
    """The local directory holding the checkpoint's configs and tokenizer: what the driver reads.

    From the hub only those files are fetched, never the weights (the stage actors fetch
    theirs on their own nodes); a local directory is itself. A tiny model that is missing
    is made whole, once, here, so the stage actors do not race to make it.
    """
    directory = _locate(model, weights=False)
    return directory if directory is not None else resolve_checkpoint_dir(model)


def _locate(model: ModelConfig, *, weights: bool) -> Path | None:
    """``source`` itself, or a hub snapshot of it (without ``weights``: its configs and tokenizer only).
    A tiny model that is missing is made, or, without ``weights``, None: nothing is there yet."""
    local = Path(model.source).expanduser()
    if local.is_dir():
        return local
    if model.make_tiny_if_missing:
        return make_tiny_model(local, fmt=model.format) if weights else None
    if model.format == "suno":
        raise CheckpointError(f"suno checkpoint directory {model.source} does not exist (suno format is local only)")
    if local.is_absolute() or model.source.startswith((".", "~")) or model.source.count("/") > 1:
        raise CheckpointError(f"checkpoint directory {model.source} does not exist")
    try:
        return _download(model.source, model.revision, weights=weights)
    except Exception as exc:  # offline, unknown repo, bad revision: all mean "cannot get it"
        raise CheckpointError(
            f"cannot fetch {model.source!r} from the Hugging Face hub: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc


def _download(repo_id: str, revision: str | None, *, weights: bool = True) -> Path:
    """Snapshot of the files this loader reads; ``.bin`` weights only when there are no safetensors.

    ``suno/bark`` also holds Suno's original ``.pt`` files and speaker
    embeddings (many GB) that the hf layout never reads.
    """
    from huggingface_hub import snapshot_download

    if not weights:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_TEXT_FILES))
    directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES))
    if not (directory / SAFETENSORS_FILE).is_file() and not (directory / SAFETENSORS_INDEX).is_file():
        directory = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_BIN_FILES))
    return directory


def load_settings_for(model: ModelConfig) -> BarkSettings:
    """Generation constants: the checkpoint's own (hf), upstream Bark's (suno files carry none)."""
    if model.format == "suno":
        return BarkSettings()
    return load_settings(resolve_text_dir(model))


def load_tokenizer(model: ModelConfig):
    """The text tokenizer: ``model.tokenizer``, else the checkpoint's own (hf) or mBERT (suno)."""
    if model.tokenizer is None and model.format == "hf":
        return _tokenizer_from(str(resolve_text_dir(model)))
    return _tokenizer_from(model.tokenizer or SUNO_TOKENIZER)


def _tokenizer_from(name: str):
    try:
        return AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load tokenizer {name}: {_first_line(exc)}") from exc


@dataclass(frozen=True)
class TextSide:
    """What splitting texts needs of a checkpoint, and no weights: its generation constants and tokenizer."""

    settings: BarkSettings
    tokenizer: object
    shape: dict[str, int] | None  # see :func:`model_shape`


def load_text_side(model: ModelConfig) -> TextSide:
    """The checkpoint's constants, tokenizer and shape, loading no model and making or fetching no weights
    (a hub checkpoint: its configs and tokenizer only), so a job can be planned before it runs. A tiny
    model not made yet is what :func:`make_tiny_model` would write: upstream constants and its tokenizer."""
    directory = _locate(model, weights=False)
    settings = BarkSettings() if model.format == "suno" else load_settings(directory)
    if model.tokenizer is None and model.format == "hf":
        tokenizer = _tokenizer_from(str(directory)) if directory is not None else build_tiny_tokenizer()
    else:
        tokenizer = _tokenizer_from(model.tokenizer or SUNO_TOKENIZER)
    shape = model_shape(directory) if directory is not None else _size_shape("tiny")
    return TextSide(settings, tokenizer, shape)


def model_shape(directory: Path) -> dict[str, int] | None:
    """The semantic GPT's width, depth and heads (Bark's three GPTs share them): what a stage's speed
    depends on, whatever the weights. From ``config.json`` (hf), else a random checkpoint's marker;
    None for Suno's own files (their shape is inside the pickled checkpoints)."""
    config = directory / CONFIG_FILE
    if config.is_file():
        semantic = json.loads(config.read_text(encoding="utf-8")).get("semantic_config", {})
        shape = {key: semantic.get(key) for key in ("hidden_size", "num_layers", "num_heads")}
        return shape if all(isinstance(v, int) for v in shape.values()) else None
    marker = directory / MARKER_FILE
    if marker.is_file():
        return _size_shape(json.loads(marker.read_text(encoding="utf-8")).get("size", "tiny"))
    return None


def _size_shape(size: str) -> dict[str, int] | None:
    spec = MODEL_SIZES.get(size)
    return None if spec is None else {"hidden_size": spec.hidden_size, "num_layers": spec.num_layers, "num_heads": spec.num_heads}


# ---------------------------------------------------------------- stage models


def load_stage_model(
    model: ModelConfig,
    stage: str,
    device: torch.device | str,
    dtype: torch.dtype,
    attn_implementation: str = "eager",
) -> nn.Module:
    """One stage's sub-model in eval mode on ``device``.

    semantic / coarse / fine: ``BarkSemanticModel`` / ``BarkCoarseModel`` /
    ``BarkFineModel``; codec: a :class:`CodecDecoder` around either EnCodec.
    ``dtype`` applies to the three GPTs and to the codec too (its LSTM and
    convolutions run in half precision on GPUs; :class:`CodecDecoder` always
    returns float32 audio). ``attn_implementation`` applies to the GPTs.
    """
    if stage not in STAGE_NAMES:
        raise ValueError(f"stage must be one of {', '.join(STAGE_NAMES)}, not {stage!r}")
    directory = resolve_checkpoint_dir(model)
    if stage == "codec":
        settings = load_settings(directory) if model.format == "hf" else BarkSettings()
        codec = _load_hf_codec(directory) if model.format == "hf" else _load_suno_codec(model, directory, settings)
        module = CodecDecoder(codec, settings.sample_rate)
    elif model.format == "hf":
        module = _load_hf_gpt(directory, _GPT_STAGES[stage], attn_implementation)
    else:
        module = _load_suno_gpt(directory / getattr(model.suno_files, stage), _GPT_STAGES[stage], attn_implementation)
    return module.to(device=device, dtype=dtype).eval()


def _bark_config(directory: Path) -> BarkConfig:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a Bark checkpoint in the suno/bark layout")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if raw.get("model_type") != BarkConfig.model_type:
        raise CheckpointError(f"{path} has model_type {raw.get('model_type')!r}, expected {BarkConfig.model_type!r}")
    return BarkConfig.from_dict(raw)


def _load_hf_gpt(directory: Path, spec: _GptStage, attn_implementation: str) -> nn.Module:
    sub_config = getattr(_bark_config(directory), spec.config_attr)
    state = _read_prefixed(directory, spec.prefix)
    return _build_and_load(spec.model_cls, sub_config, state, attn_implementation, where=directory)


def _load_hf_codec(directory: Path) -> nn.Module:
    codec_config = _bark_config(directory).codec_config
    state = _read_prefixed(directory, _CODEC_PREFIX)
    # Built for real, not on the meta device: EnCodec keeps its conv strides in
    # non-persistent buffers that no checkpoint holds. It is small.
    return _build_and_load(EncodecModel, codec_config, state, None, where=directory, on_meta=False)


def _load_suno_gpt(path: Path, spec: _GptStage, attn_implementation: str) -> nn.Module:
    checkpoint = _torch_load(path, mmap=False)
    if not isinstance(checkpoint, dict) or "model_args" not in checkpoint or "model" not in checkpoint:
        raise CheckpointError(f"{path} is not a Suno checkpoint: expected keys 'model_args' and 'model'")
    sub_config = spec.config_cls(**_suno_config_kwargs(checkpoint["model_args"], path))
    state = {
        suno_to_hf_key(key): tensor
        for key, tensor in checkpoint["model"].items()
        if not key.endswith(CAUSAL_MASK_SUFFIX)  # nanoGPT's mask may be float; use ours
    }
    return _build_and_load(spec.model_cls, sub_config, state, attn_implementation, where=path)


def _suno_config_kwargs(args: dict, path: Path) -> dict:
    """nanoGPT ``model_args`` -> Bark sub-config kwargs (old files have one ``vocab_size``)."""
    try:
        kwargs = {
            "num_layers": args["n_layer"],
            "num_heads": args["n_head"],
            "hidden_size": args["n_embd"],
            "block_size": args["block_size"],
            "input_vocab_size": args.get("input_vocab_size", args.get("vocab_size")),
            "output_vocab_size": args.get("output_vocab_size", args.get("vocab_size")),
        }
    except KeyError as exc:
        raise CheckpointError(f"{path}: model_args lacks {exc.args[0]!r}") from None
    if kwargs["input_vocab_size"] is None:
        raise CheckpointError(f"{path}: model_args has neither input_vocab_size nor vocab_size")
    for name in ("bias", "dropout", "n_codes_total", "n_codes_given"):
        if name in args:
            kwargs[name] = args[name]
    return kwargs


def _load_suno_codec(model: ModelConfig, directory: Path, settings: BarkSettings) -> nn.Module:
    """The ``encodec`` package's 24 kHz model, set to the bandwidth of Bark's codebooks."""
    import encodec  # imports torchaudio; only the suno format needs it

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # encodec still uses the old weight_norm API
        if model.codec_checkpoint is None:
            try:
                codec = encodec.EncodecModel.encodec_model_24khz(pretrained=True)
            except Exception as exc:
                raise CheckpointError(
                    "cannot download the encodec 24 kHz weights (set model.codec_checkpoint to a local "
                    f"state-dict file): {_first_line(exc)}"
                ) from exc
        else:
            path = Path(model.codec_checkpoint).expanduser()
            if not path.is_absolute() and not path.exists() and (directory / path).exists():
                path = directory / path
            codec = encodec.EncodecModel.encodec_model_24khz(pretrained=False)
            state = _torch_load(path, mmap=False)
            try:
                codec.load_state_dict(state, strict=True)
            except (RuntimeError, AttributeError) as exc:
                raise CheckpointError(f"{path} is not an encodec 24 kHz state dict: {_first_line(exc)}") from exc
    # Decoding ignores the bandwidth, but set it so encode() would use Bark's codebooks too.
    bits_per_codebook = math.log2(settings.codebook_size)
    kbps = settings.fine.n_fine_codebooks * bits_per_codebook * settings.coarse.coarse_rate_hz / 1000
    codec.set_target_bandwidth(kbps)
    return codec


# ---------------------------------------------------------------- reading weights


def _read_prefixed(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors under ``prefix`` with the prefix stripped, reading nothing else that can be skipped."""
    if (directory / SAFETENSORS_INDEX).is_file():
        state = _read_sharded(directory, directory / SAFETENSORS_INDEX, prefix, _read_safetensors)
    elif (directory / SAFETENSORS_FILE).is_file():
        state = _read_safetensors(directory / SAFETENSORS_FILE, prefix)
    elif (directory / BIN_INDEX).is_file():
        state = _read_sharded(directory, directory / BIN_INDEX, prefix, _read_bin)
    elif (directory / BIN_FILE).is_file():
        state = _read_bin(directory / BIN_FILE, prefix)
    else:
        raise CheckpointError(f"{directory} has no weights: expected {SAFETENSORS_FILE} or {BIN_FILE}")
    if not state:
        raise CheckpointError(f"{directory} holds no weights under '{prefix}'")
    return state


def _read_safetensors(path: Path, prefix: str, keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        wanted = [k for k in f.keys() if k.startswith(prefix) and (keys is None or k in keys)]
        return {k[len(prefix) :]: f.get_tensor(k) for k in wanted}


def _read_bin(path: Path, prefix: str, keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    state = _torch_load(path, mmap=True)  # mmap: pages of other stages are never read
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and (keys is None or k in keys)}


def _read_sharded(directory: Path, index: Path, prefix: str, read_one) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{index} is not a shard index: {_first_line(exc)}") from exc
    shards: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        if key.startswith(prefix):
            shards.setdefault(shard, set()).add(key)
    state = {}
    for shard, keys in sorted(shards.items()):
        if not (directory / shard).is_file():
            raise CheckpointError(f"{directory / shard} is missing (named in {index.name})")
        state.update(read_one(directory / shard, prefix, keys))
    return state


def _torch_load(path: Path, *, mmap: bool):
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # a pickle that needs code, a truncated file, not a torch file
        raise CheckpointError(f"{path} cannot be read as plain tensors: {_first_line(exc)}") from exc


# ---------------------------------------------------------------- building


def _build_and_load(
    model_cls, config, state: dict, attn_implementation: str | None, *, where: Path, on_meta: bool = True
) -> nn.Module:
    """Build ``model_cls`` and load ``state`` into it strictly.

    ``on_meta`` builds it on the meta device, so no time or memory goes to random
    weights that the checkpoint replaces. Causal masks are recomputed when the
    file has none, and tied weights that the file stores once are filled in from
    their source.
    """
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with torch.device("meta" if on_meta else "cpu"):
        model = model_cls._from_config(config, **kwargs)  # what AutoModel.from_config calls
    expected = model.state_dict()
    state = _adapt_legacy_weight_norm(dict(state), expected)
    for key, buffer in expected.items():
        if key.endswith(CAUSAL_MASK_SUFFIX) and key not in state:
            state[key] = _causal_mask(buffer.shape[-1])
    tied = _tied_pairs(model)
    for target, source in tied.items():
        if target not in state and source in state:
            state[target] = state[source]

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weights (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise CheckpointError(f"{where}: {model_cls.__name__} does not match the checkpoint: {'; '.join(parts)}")
    mismatched = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if mismatched:
        key = mismatched[0]
        raise CheckpointError(
            f"{where}: {key} has shape {tuple(state[key].shape)}, config expects {tuple(expected[key].shape)}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    _retie(model, tied)
    return model


def _tied_pairs(model: nn.Module) -> dict[str, str]:
    """``{tied key: source key}``: BarkFineModel's heads reuse the next codebook's embedding."""
    if not isinstance(model, BarkFineModel) or not getattr(model.config, "tie_word_embeddings", True):
        return {}
    config = model.config
    return {
        f"lm_heads.{i}.weight": f"input_embeds_layers.{i + 1}.weight"
        for i in range(config.n_codes_total - config.n_codes_given)
    }


def _retie(model: nn.Module, tied: dict[str, str]) -> None:
    """``assign=True`` gives every key its own Parameter; make tied ones one Parameter again."""
    for target, source in tied.items():
        head_path, _, _ = target.rpartition(".")
        source_path, _, _ = source.rpartition(".")
        model.get_submodule(head_path).weight = model.get_submodule(source_path).weight


def _causal_mask(block_size: int) -> torch.Tensor:
    return torch.tril(torch.ones(block_size, block_size, dtype=torch.bool)).view(1, 1, block_size, block_size)


def _adapt_legacy_weight_norm(state: dict, expected: dict) -> dict:
    """Older EnCodec checkpoints name weight-norm parts ``weight_g`` / ``weight_v``."""
    renames = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}
    for key in list(state):
        for old, new in renames.items():
            if key.endswith(old) and key not in expected:
                candidate = key[: -len(old)] + new
                if candidate in expected:
                    state[candidate] = state.pop(key)
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- codec adapter


class CodecDecoder(nn.Module):
    """Codes -> waveform, the same for transformers' and the encodec package's EnCodec.

    Both keep a residual quantizer whose ``decode`` takes ``(n_codebooks, batch,
    frames)`` and a convolutional ``decoder`` on its embedding; this is what
    ``BarkModel.codec_decode`` does.
    """

    def __init__(self, codec: nn.Module, sample_rate: int):
        super().__init__()
        self.codec = codec
        self.sample_rate = sample_rate

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes`` (batch, n_codebooks, frames) -> float32 audio (batch, samples)."""
        device = next(self.codec.parameters()).device
        embeddings = self.codec.quantizer.decode(codes.to(device=device, dtype=torch.long).transpose(0, 1))
        audio = self.codec.decoder(embeddings)  # (batch, channels=1, samples)
        return audio.squeeze(1).float()

    forward = decode
