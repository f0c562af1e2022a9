"""Stage loading from the tiny random-weight checkpoint, in both layouts (no Ray)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import safetensors
import torch
from safetensors.torch import load_file, save_file
from transformers import BarkModel
from transformers.models.bark.generation_configuration_bark import BarkSemanticGenerationConfig

from workers.config import STAGE_NAMES, ModelConfig, SunoFiles
from workers.checkpoints import (
    BIN_FILE,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    CheckpointError,
    CodecDecoder,
    load_settings_for,
    load_stage_model,
    load_tokenizer,
    resolve_checkpoint_dir,
)
from workers.settings import BarkSettings
from workers.tiny_model import (
    BERT_REAL_VOCAB_SIZE,
    BERT_SPECIAL_IDS,
    MARKER_FILE,
    SUNO_CODEC_FILE,
    TinyModelExists,
    make_tiny_model,
)

GPT_STAGES = ("semantic", "coarse", "fine")
SUB_MODEL = {"semantic": "semantic", "coarse": "coarse_acoustics", "fine": "fine_acoustics", "codec": "codec_model"}
SENTENCES = {
    "en": "Hello, world! It was the best of times, it was the worst of times.",
    "ru": "Привет, мир! Это была лучшая из всех времён.",
    "ja": "こんにちは、世界。これは日本語のテストです。",
}


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "hf")


@pytest.fixture(scope="module")
def suno_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "suno", fmt="suno")


@pytest.fixture(scope="module")
def hf_model(hf_dir):
    return ModelConfig(source=str(hf_dir))


@pytest.fixture(scope="module")
def suno_model(suno_dir):
    return ModelConfig(
        source=str(suno_dir), format="suno", tokenizer=str(suno_dir), codec_checkpoint=str(suno_dir / SUNO_CODEC_FILE)
    )


@pytest.fixture(scope="module")
def reference(hf_dir):
    """The whole model, loaded the plain transformers way."""
    return BarkModel.from_pretrained(hf_dir, dtype=torch.float32).eval()


def assert_same_weights(actual: torch.nn.Module, expected: torch.nn.Module):
    got, want = actual.state_dict(), expected.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


# ---------------------------------------------------------------- hf layout


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_each_stage_loads_alone_and_matches_bark_model(hf_model, reference, stage):
    module = load_stage_model(hf_model, stage, "cpu", torch.float32)
    assert not module.training
    assert all(t.device.type == "cpu" for t in [*module.parameters(), *module.buffers()])
    if stage == "codec":
        assert isinstance(module, CodecDecoder)
        assert_same_weights(module.codec, reference.codec_model)
    else:
        assert module.config._attn_implementation == "eager"
        assert_same_weights(module, getattr(reference, SUB_MODEL[stage]))


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_a_stage_reads_only_its_own_tensors(hf_model, monkeypatch, stage):
    read: list[str] = []
    real_safe_open = safetensors.safe_open

    class RecordingSafeOpen:
        def __init__(self, *args, **kwargs):
            self._inner = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self._file = self._inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self._inner.__exit__(*exc)

        def keys(self):
            return self._file.keys()

        def get_tensor(self, key):
            read.append(key)
            return self._file.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", RecordingSafeOpen)
    load_stage_model(hf_model, stage, "cpu", torch.float32)
    assert read and all(key.startswith(SUB_MODEL[stage] + ".") for key in read)


def test_fine_heads_stay_tied_to_embeddings(hf_model, reference):
    fine = load_stage_model(hf_model, "fine", "cpu", torch.float32)
    for i, head in enumerate(fine.lm_heads):
        assert head.weight is fine.input_embeds_layers[i + 1].weight
    codes = torch.randint(0, 1024, (2, 64, 8))
    with torch.no_grad():
        assert torch.equal(fine(3, codes).logits, reference.fine_acoustics(3, codes).logits)


def test_dtype_applies_and_masks_stay_boolean(hf_model):
    semantic = load_stage_model(hf_model, "semantic", "cpu", torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in semantic.parameters())
    assert all(b.dtype == torch.bool for name, b in semantic.named_buffers() if name.endswith("attn.bias"))


def test_sharded_safetensors_and_pytorch_bin_load_the_same(hf_dir, hf_model, tmp_path):
    state = load_file(hf_dir / SAFETENSORS_FILE)
    expected = load_stage_model(hf_model, "coarse", "cpu", torch.float32)

    sharded = tmp_path / "sharded"
    shutil.copytree(hf_dir, sharded)
    (sharded / SAFETENSORS_FILE).unlink()
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for i, (key, tensor) in enumerate(sorted(state.items())):
        shards[sorted(shards)[i % 2]][key] = tensor.contiguous()
    weight_map = {}
    for name, part in shards.items():
        save_file(part, sharded / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (sharded / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same_weights(load_stage_model(ModelConfig(source=str(sharded)), "coarse", "cpu", torch.float32), expected)

    as_bin = tmp_path / "bin"
    shutil.copytree(hf_dir, as_bin)
    (as_bin / SAFETENSORS_FILE).unlink()
    torch.save(state, as_bin / BIN_FILE)
    assert_same_weights(load_stage_model(ModelConfig(source=str(as_bin)), "coarse", "cpu", torch.float32), expected)


def test_settings_read_back_equal_the_defaults(hf_model, suno_model):
    assert load_settings_for(hf_model) == BarkSettings()
    assert load_settings_for(suno_model) == BarkSettings()


# ---------------------------------------------------------------- suno layout


@pytest.mark.parametrize("stage", GPT_STAGES)
def test_suno_files_load_to_the_hf_weights(suno_model, reference, stage):
    module = load_stage_model(suno_model, stage, "cpu", torch.float32)
    assert_same_weights(module, getattr(reference, SUB_MODEL[stage]))


@pytest.mark.parametrize("stage", GPT_STAGES)
def test_suno_files_fit_suno_own_model_classes(suno_dir, suno_model, stage):
    """The tiny files really are in Suno's layout: bark's own GPT computes what our loaded model does."""
    suno_gpt = pytest.importorskip("bark.model")
    suno_fine = pytest.importorskip("bark.model_fine")
    checkpoint = torch.load(suno_dir / getattr(SunoFiles(), stage), weights_only=True)
    if stage == "fine":
        original = suno_fine.FineGPT(suno_fine.FineGPTConfig(**checkpoint["model_args"]))
    else:
        original = suno_gpt.GPT(suno_gpt.GPTConfig(**checkpoint["model_args"]))
    state = {key.removeprefix("_orig_mod."): value for key, value in checkpoint["model"].items()}
    missing, unexpected = original.load_state_dict(state, strict=False)
    assert not unexpected and all(key.endswith(".attn.bias") for key in missing)
    original.eval()

    ours = load_stage_model(suno_model, stage, "cpu", torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if stage == "fine":
            codes = torch.randint(0, 1024, (2, 32, 8), generator=generator)
            assert torch.allclose(original(3, codes), ours(3, codes).logits, atol=1e-4)
        else:
            ids = torch.randint(0, ours.config.output_vocab_size, (2, 16), generator=generator)
            assert torch.allclose(original(ids)[0][:, -1], ours(ids).logits[:, -1], atol=1e-4)


def test_suno_files_with_one_vocab_size_load(suno_dir, suno_model, reference, tmp_path):
    """Older Suno checkpoints name a single ``vocab_size``."""
    old = tmp_path / "old"
    shutil.copytree(suno_dir, old)
    path = old / SunoFiles().coarse
    checkpoint = torch.load(path, weights_only=True)
    args = checkpoint["model_args"]
    args["vocab_size"] = args.pop("input_vocab_size")
    del args["output_vocab_size"]
    torch.save(checkpoint, path)
    module = load_stage_model(suno_model.model_copy(update={"source": str(old)}), "coarse", "cpu", torch.float32)
    assert_same_weights(module, reference.coarse_acoustics)


# ---------------------------------------------------------------- codec


@pytest.mark.parametrize("layout", ["hf", "suno"])
def test_codec_decodes_codes_to_samples(hf_model, suno_model, layout):
    model = hf_model if layout == "hf" else suno_model
    settings = load_settings_for(model)
    codec = load_stage_model(model, "codec", "cpu", torch.float32)
    frames, n_codebooks = 10, settings.fine.n_fine_codebooks
    codes = torch.randint(0, settings.codebook_size, (2, n_codebooks, frames))
    audio = codec.decode(codes)
    assert audio.shape == (2, frames * settings.samples_per_frame) == (2, 3200)
    assert audio.dtype == torch.float32 and torch.isfinite(audio).all()
    assert codec.sample_rate == settings.sample_rate


def test_hf_codec_decode_matches_bark_model(hf_model, reference):
    codes = torch.randint(0, 1024, (2, 8, 10))
    codec = load_stage_model(hf_model, "codec", "cpu", torch.float32)
    with torch.no_grad():
        assert torch.allclose(codec.decode(codes), reference.codec_decode(codes))


def test_codec_in_bfloat16_still_returns_float32(hf_model):
    codec = load_stage_model(hf_model, "codec", "cpu", torch.bfloat16)
    assert codec.decode(torch.randint(0, 1024, (1, 8, 4))).dtype == torch.float32


# ---------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("layout", ["hf", "suno"])
def test_tokenizer_has_mbert_ids_and_covers_scripts(hf_model, suno_model, layout):
    tokenizer = load_tokenizer(hf_model if layout == "hf" else suno_model)
    for token, index in BERT_SPECIAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == index
    assert tokenizer.pad_token_id == 0 and tokenizer.unk_token_id == 100
    assert tokenizer.cls_token_id == 101 and tokenizer.sep_token_id == 102 and tokenizer.mask_token_id == 103
    assert len(tokenizer) <= BERT_REAL_VOCAB_SIZE
    for language, sentence in SENTENCES.items():
        ids = tokenizer.encode(sentence, add_special_tokens=False)
        assert ids and tokenizer.unk_token_id not in ids, language
        assert max(ids) < BERT_REAL_VOCAB_SIZE
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("Hello", add_special_tokens=False))[0] == "Hello"


# ---------------------------------------------------------------- errors


def test_missing_suno_file_names_it(suno_dir, suno_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(suno_dir, broken)
    (broken / SunoFiles().coarse).unlink()
    model = suno_model.model_copy(update={"source": str(broken)})
    with pytest.raises(CheckpointError, match=SunoFiles().coarse):
        load_stage_model(model, "coarse", "cpu", torch.float32)
    load_stage_model(model, "semantic", "cpu", torch.float32)  # the other stages do not care


def test_missing_hf_weights_or_config_are_named(hf_dir, tmp_path):
    no_weights = tmp_path / "no_weights"
    shutil.copytree(hf_dir, no_weights)
    (no_weights / SAFETENSORS_FILE).unlink()
    with pytest.raises(CheckpointError, match=SAFETENSORS_FILE):
        load_stage_model(ModelConfig(source=str(no_weights)), "semantic", "cpu", torch.float32)
    no_config = tmp_path / "no_config"
    shutil.copytree(hf_dir, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        load_stage_model(ModelConfig(source=str(no_config)), "fine", "cpu", torch.float32)


def test_checkpoint_with_other_shapes_is_rejected(hf_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(hf_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["semantic_config"]["hidden_size"] = 64
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        load_stage_model(ModelConfig(source=str(other)), "semantic", "cpu", torch.float32)


def test_hub_id_offline_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="example-org/no-such-bark"):
        resolve_checkpoint_dir(ModelConfig(source="example-org/no-such-bark"))


def test_hub_download_skips_suno_files_and_falls_back_to_bin(hf_dir, tmp_path, monkeypatch):
    """``suno/bark`` also holds GBs of Suno's .pt files: the hf layout must not fetch them."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, list(allow_patterns)))
        snapshot = tmp_path / f"snapshot{len(calls)}"
        shutil.copytree(hf_dir, snapshot)
        if not any(pattern.endswith(".bin") for pattern in allow_patterns):
            (snapshot / SAFETENSORS_FILE).unlink()  # a repo with only pytorch_model.bin
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    directory = resolve_checkpoint_dir(ModelConfig(source="org/bark-like", revision="abc"))
    assert directory == tmp_path / "snapshot2"
    assert [c[:2] for c in calls] == [("org/bark-like", "abc")] * 2
    assert not any(pattern.endswith(".pt") or pattern == "*" for _, _, patterns in calls for pattern in patterns)


def test_missing_local_directories_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint_dir(ModelConfig(source=str(tmp_path / "nowhere"), format="suno"))
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint_dir(ModelConfig(source=str(tmp_path / "nowhere")))


def test_unknown_stage_is_rejected(hf_model):
    with pytest.raises(ValueError, match="stage"):
        load_stage_model(hf_model, "vocoder", "cpu", torch.float32)


# ---------------------------------------------------------------- tiny model


def test_tiny_model_is_deterministic_and_small(hf_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again")
    first, second = load_file(hf_dir / SAFETENSORS_FILE), load_file(again / SAFETENSORS_FILE)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other_seed = load_file(make_tiny_model(tmp_path / "seed1", seed=1) / SAFETENSORS_FILE)
    assert not torch.equal(first["semantic.lm_head.weight"], other_seed["semantic.lm_head.weight"])
    assert sum(p.stat().st_size for p in hf_dir.iterdir()) < 50 * 2**20


def test_tiny_model_refuses_a_foreign_directory(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(TinyModelExists):
        make_tiny_model(foreign)
    assert make_tiny_model(foreign, overwrite=True) == foreign
    assert (foreign / "notes.txt").exists() and (foreign / MARKER_FILE).exists()


def test_tiny_model_is_remade_in_place_across_formats(tmp_path):
    target = make_tiny_model(tmp_path / "m", fmt="suno")
    make_tiny_model(target, fmt="hf")
    assert not (target / SunoFiles().semantic).exists() and (target / SAFETENSORS_FILE).exists()


def test_make_tiny_if_missing(tmp_path):
    model = ModelConfig(source=str(tmp_path / "made"), make_tiny_if_missing=True)
    assert (resolve_checkpoint_dir(model) / SAFETENSORS_FILE).is_file()


def test_tiny_semantic_model_yields_varied_tokens_and_stops(hf_model):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: one thread is fastest, and immune to a busy machine
    try:
        _check_semantic_generation(hf_model)
    finally:
        torch.set_num_threads(threads)


def _check_semantic_generation(hf_model):
    tokenizer = load_tokenizer(hf_model)
    settings = load_settings_for(hf_model)
    semantic = load_stage_model(hf_model, "semantic", "cpu", torch.float32)
    batch = tokenizer(
        list(SENTENCES.values()) + ["One.", "The quick brown fox jumps over the lazy dog."],
        padding="max_length",
        max_length=settings.semantic.max_input_semantic_length,
        add_special_tokens=False,
        return_tensors="pt",
    )
    greedy = {"do_sample": False, "min_eos_p": 0.2, "max_new_tokens": 400}
    config = BarkSemanticGenerationConfig(**{**settings.semantic.to_dict(), **greedy})
    tokens = semantic.generate(batch.input_ids, attention_mask=batch.attention_mask, semantic_generation_config=config)
    eos = settings.semantic.eos_token_id
    lengths = [int((row == eos).nonzero()[0]) if (row == eos).any() else row.numel() for row in tokens]
    assert any(length < config.max_new_tokens for length in lengths), lengths
    assert len(set(lengths)) > 1 and min(lengths) > 1, lengths
    for row, length in zip(tokens, lengths):
        assert len(set(row[:length].tolist())) > min(5, length // 2)


def _hub_cache_without_weights(root, checkpoint) -> str:
    """A Hugging Face cache as a download of the driver's files leaves it: the repo's tree listing
    (huggingface_hub's documented ``trees/<commit>.json``) names every file of ``checkpoint``, weights
    included, but the snapshot holds only its configs and tokenizer."""
    commit = "1" * 40
    repo = root / "hub" / "models--example--bark-like"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    files = {}
    for path in sorted(checkpoint.iterdir()):
        files[path.name] = {"size": path.stat().st_size, "blob_id": f"{len(files):040x}"}
        if path.suffix in (".json", ".txt"):
            shutil.copy(path, snapshot / path.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    (repo / "trees").mkdir()
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": files}))
    assert SAFETENSORS_FILE in files and not (snapshot / SAFETENSORS_FILE).exists()
    return commit


def test_the_driver_reads_a_hub_checkpoint_without_its_weights(hf_dir, tmp_path):
    """Offline, on a cached snapshot that lacks the weights the tree listing names: the driver's whole
    start-up (the command's checks, settings, tokenizer, fingerprints, the job's records) goes through,
    while the stage side's loader refuses the snapshot as incomplete. No network here: this shows the
    driver asks huggingface_hub for configs and tokenizer only, not what it would download online."""
    import subprocess
    import sys

    from tests.conftest import REPO

    commit = _hub_cache_without_weights(tmp_path / "hf", hf_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "RAY_ADDRESS"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    config = tmp_path / "job.yaml"
    config.write_text("model: {source: example/bark-like, format: hf}\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "r1", "text": ""}\n')  # an item that fails unread: the job never needs Ray

    run = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--config", str(config), "--input", str(rows), "--output", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 1 and run.stdout.startswith("done: 0 ok, 1 failed"), run.stderr
    [entry] = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert entry["id"] == "r1" and entry["status"] == "failed"

    stage_side = subprocess.run(
        [sys.executable, "-c", "import sys; from workers.config import ModelConfig; from workers.checkpoints import "
         "resolve_checkpoint_dir, resolve_text_dir; m = ModelConfig(source='example/bark-like'); print(resolve_text_dir(m)); "
         "resolve_checkpoint_dir(m)"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert stage_side.stdout.strip().endswith(f"snapshots/{commit}")
    assert stage_side.returncode != 0 and "cannot fetch 'example/bark-like'" in stage_side.stderr
    assert "incomplete" in stage_side.stderr.lower()


def test_a_hub_checkpoints_identity_is_its_commit_not_what_the_cache_holds(hf_dir, tmp_path):
    """The driver's snapshot holds configs and tokenizer; a stage on the same machine may add the weights
    to it. Neither changes the model's part of the fingerprint (a rerun would redo every item); another
    commit does."""
    from pipeline.config import JobConfig
    from pipeline.fingerprint import model_identity

    commit = _hub_cache_without_weights(tmp_path / "hf", hf_dir)
    snapshot = tmp_path / "hf" / "hub" / "models--example--bark-like" / "snapshots" / commit
    config = JobConfig.model_validate({"model": {"source": "example/bark-like"}})
    before = model_identity(config, snapshot)
    shutil.copy(hf_dir / SAFETENSORS_FILE, snapshot / SAFETENSORS_FILE)
    assert model_identity(config, snapshot) == before
    other = snapshot.parent / ("2" * 40)
    snapshot.rename(other)
    assert model_identity(config, other) != before
