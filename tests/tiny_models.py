"""Seeded tiny random models for every registered architecture (no downloads).

Each config is shrunk to 2 layers, width 32, vocabulary 128; :func:`tiny_model` asserts that the
sizes took effect, so a "tiny" model can never silently be full-size.
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

N_LAYERS, D_MODEL, VOCAB = 2, 32, 128

_COMMON = dict(
    hidden_size=D_MODEL,
    num_hidden_layers=N_LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=VOCAB,
    max_position_embeddings=64,
    head_dim=8,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)

# Per-family overrides on top of _COMMON (None removes a key the config cannot take).
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(n_positions=64),
    "gpt_bigcode": dict(n_positions=64),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]], window_size=16),
    "gptj": dict(n_positions=64, rotary_dim=4),
    "bloom": {},
    "falcon": dict(head_dim=None, new_decoder_architecture=False),
    "gpt_neox": dict(rotary_pct=0.5),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=16),
    "llama": {},
    "mistral": {},
    "ministral": {},
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "qwen2": {},
    "qwen2_moe": dict(num_experts=4, shared_expert_intermediate_size=32, **_MOE),
    "qwen3": {},
    "qwen3_moe": dict(num_experts=4, **_MOE),
    "gemma": {},
    "gemma2": dict(final_logit_softcapping=3.0, sliding_window=16),
    "gemma3_text": dict(final_logit_softcapping=3.0, sliding_window=16),
    "gemma3": {},  # multimodal wrapper, built by _gemma3_config
    "phi": dict(partial_rotary_factor=0.5),
    "phi3": {},
    "phimoe": dict(num_local_experts=4, num_experts_per_tok=2),
    "olmo": {},
    "olmo2": {},
    "olmo3": {},
    "olmoe": dict(num_experts=4, num_experts_per_tok=2),
    "stablelm": {},
    "starcoder2": {},
    "smollm3": {},
    "cohere": dict(logit_scale=0.5),
    "cohere2": dict(logit_scale=0.5),
    "granite": dict(logits_scaling=0.25),
    "exaone4": {},
    "glm": {},
    "glm4": {},
}


def _gemma3_config():
    text = {**_COMMON, "final_logit_softcapping": 3.0, "sliding_window": 16}
    vision = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
    )
    return AutoConfig.for_model(
        "gemma3",
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=VOCAB - 1,
        boi_token_index=VOCAB - 2,
        eoi_token_index=VOCAB - 3,
    )


def tiny_config(model_type: str, **changes):
    """The tiny config of ``model_type`` (``changes`` override any field)."""
    if model_type == "gemma3":
        return _gemma3_config()
    overrides = {**_COMMON, **TINY_CONFIGS[model_type], **changes}
    return AutoConfig.for_model(model_type, **{k: v for k, v in overrides.items() if v is not None})


def tiny_model(model_type: str, seed: int = 0, *, logit_gain: float = 30.0, **changes):
    """A seeded random tiny model of ``model_type`` in eval mode.

    ``logit_gain`` scales the unembedding so that logits are O(1): random init gives nearly
    uniform distributions, which would hide mistakes in soft-capping or logit scaling.
    ``changes`` override config fields (e.g. ``initializer_range`` for blocks that matter).
    """
    transformers.logging.set_verbosity_error()
    torch.manual_seed(seed)
    config = tiny_config(model_type, **changes)
    model = AutoModelForCausalLM.from_config(config).eval()
    text = config.get_text_config()
    assert text.num_hidden_layers == N_LAYERS and text.hidden_size == D_MODEL
    assert text.vocab_size == VOCAB, f"{model_type}: vocab {text.vocab_size}"
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(logit_gain)
    return model


def random_lens(model, scale: float = 0.2):
    """A tuned lens of ``model`` with random (non-identity) translators."""
    from tunedlens import TunedLens

    lens = TunedLens.from_model(model)
    with torch.no_grad():
        for parameter in lens.translator.parameters():
            parameter.normal_(0, scale)
    return lens


def tiny_tokenizer():
    """A word-level tokenizer over the tiny vocabulary (128 tokens), saved like a real one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(124)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def word_text(path, count: int = 6000, *, seed: int = 0):
    """``count`` seeded random words of the tiny vocabulary (``w4 w17 ...``) written to ``path``."""
    import torch

    ids = torch.randint(4, 128, (count,), generator=torch.Generator().manual_seed(seed)).tolist()
    path.write_text(" ".join(f"w{i}" for i in ids))
    return path
