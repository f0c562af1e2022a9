"""Weight names in the two checkpoint layouts: Suno's nanoGPT files and transformers' Bark.

Both the loader (:mod:`workers.checkpoints`) and the tiny-model writer
(:mod:`workers.tiny_model`) translate between them, so the rules live here once.
"""

from __future__ import annotations

SUNO_STATE_PREFIX = "_orig_mod."  # left by torch.compile in Suno's checkpoints

# nanoGPT names -> transformers Bark names. Prefix rules apply at the start of a
# key, block rules anywhere after it; each side is unique, so the map inverts.
_SUNO_PREFIX_RULES = (
    ("transformer.wtes.", "input_embeds_layers."),
    ("transformer.wte.", "input_embeds_layer."),
    ("transformer.wpe.", "position_embeds_layer."),
    ("transformer.ln_f.", "layernorm_final."),
    ("transformer.h.", "layers."),
)
_SUNO_BLOCK_RULES = (
    (".ln_1.", ".layernorm_1."),
    (".ln_2.", ".layernorm_2."),
    (".attn.c_attn.", ".attn.att_proj."),
    (".attn.c_proj.", ".attn.out_proj."),
    (".mlp.c_fc.", ".mlp.in_proj."),
    (".mlp.c_proj.", ".mlp.out_proj."),
)
_HF_PREFIX_RULES = tuple((new, old) for old, new in _SUNO_PREFIX_RULES)
_HF_BLOCK_RULES = tuple((new, old) for old, new in _SUNO_BLOCK_RULES)
CAUSAL_MASK_SUFFIX = ".attn.bias"  # a buffer, not a weight: recomputed when a file lacks it


def _rename(key: str, prefix_rules, block_rules) -> str:
    for old, new in prefix_rules:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    for old, new in block_rules:
        key = key.replace(old, new)
    return key


def suno_to_hf_key(key: str) -> str:
    """``transformer.h.0.attn.c_attn.weight`` -> ``layers.0.attn.att_proj.weight``."""
    return _rename(key.removeprefix(SUNO_STATE_PREFIX), _SUNO_PREFIX_RULES, _SUNO_BLOCK_RULES)


def hf_to_suno_key(key: str) -> str:
    """The inverse of :func:`suno_to_hf_key` (without the compile prefix)."""
    return _rename(key, _HF_PREFIX_RULES, _HF_BLOCK_RULES)
