"""The architecture registry: the only place that knows where modules live in a model.

Entries are keyed by ``config.model_type``. A new architecture costs one line here and one
tiny config in ``tests/tiny_models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunedlens.errors import InputError, InputTypeError


@dataclass(frozen=True)
class ArchSpec:
    """Where a causal LM keeps the modules a lens needs.

    Paths are dotted attribute paths from the ``*ForCausalLM`` model, e.g. ``"model.layers"``.
    """

    layers: str
    """Path to the ``ModuleList`` of decoder blocks."""
    final_norm: str | None
    """Path to the final norm applied before the unembedding; ``None`` if the model has none.
    A path whose attribute exists but holds ``None`` (OPT-350m) also means "no norm"."""
    unembed: str | None = None
    """Path to the unembedding ``Linear``; ``None`` means ``model.get_output_embeddings()``."""
    pre_unembed: tuple[str, ...] = ()
    """Modules applied after the norm and before the unembedding, in order (OPT ``project_out``).
    Attributes that exist but hold ``None`` are skipped."""
    logit_softcap: str | None = None
    """Config attribute holding a final logit soft-cap ``c``: ``logits = c * tanh(logits / c)``."""
    logit_scale: str | None = None
    """Config attribute holding a multiplier applied to the logits (Cohere ``logit_scale``)."""
    logit_divisor: str | None = None
    """Config attribute holding a divisor applied to the logits (Granite ``logits_scaling``)."""
    mid: str | None = "post_attention_layernorm"
    """Path, inside a decoder block, to the module whose *input* is the residual stream after
    attention and before the MLP (the ``ℓ.mid`` point). ``None``: the block runs attention and
    the MLP in parallel on the same input, so no such state exists."""
    no_mid_if: tuple[str, ...] = ()
    """Config flags under which the block has no mid point: ``"flag"`` when it is true (a parallel
    block, GPT-NeoX ``use_parallel_residual``), ``"!flag"`` when it is false (post-norm OPT)."""


_GPT2_LIKE = ArchSpec("transformer.h", "transformer.ln_f", mid="ln_2")
_LLAMA_LIKE = ArchSpec("model.layers", "model.norm")
# Parallel blocks: attention and the MLP both read the block's input.
_PARALLEL = ArchSpec("transformer.h", "transformer.ln_f", mid=None)
# Gemma 2/3 normalise the attention output before adding it; the MLP's own pre-norm reads the sum.
_GEMMA2_LIKE = dict(mid="pre_feedforward_layernorm")
# OLMo 2/3 and EXAONE 4 normalise each branch's output (no pre-norm): the MLP reads the sum.
_POST_NORM = ArchSpec("model.layers", "model.norm", mid="mlp")

ARCHS: dict[str, ArchSpec] = {
    "gpt2": _GPT2_LIKE,
    "gpt_bigcode": _GPT2_LIKE,
    "gpt_neo": _GPT2_LIKE,
    "gptj": _PARALLEL,
    "bloom": ArchSpec("transformer.h", "transformer.ln_f"),
    "falcon": ArchSpec(
        "transformer.h", "transformer.ln_f", no_mid_if=("parallel_attn", "new_decoder_architecture")
    ),
    "gpt_neox": ArchSpec(
        "gpt_neox.layers", "gpt_neox.final_layer_norm", no_mid_if=("use_parallel_residual",)
    ),
    "opt": ArchSpec(
        "model.decoder.layers",
        "model.decoder.final_layer_norm",
        pre_unembed=("model.decoder.project_out",),
        mid="final_layer_norm",
        no_mid_if=("!do_layer_norm_before",),
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "ministral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen2_moe": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": ArchSpec(
        "model.layers", "model.norm", logit_softcap="final_logit_softcapping", **_GEMMA2_LIKE
    ),
    "gemma3_text": ArchSpec(
        "model.layers", "model.norm", logit_softcap="final_logit_softcapping", **_GEMMA2_LIKE
    ),
    # The multimodal wrapper applies no soft-cap (Gemma3ForConditionalGeneration.forward).
    "gemma3": ArchSpec("model.language_model.layers", "model.language_model.norm", **_GEMMA2_LIKE),
    "phi": ArchSpec("model.layers", "model.final_layernorm", mid=None),
    "phi3": _LLAMA_LIKE,
    "phimoe": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _POST_NORM,
    "olmo3": _POST_NORM,
    "olmoe": _LLAMA_LIKE,
    "stablelm": ArchSpec("model.layers", "model.norm", no_mid_if=("use_parallel_residual",)),
    "starcoder2": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "cohere": ArchSpec("model.layers", "model.norm", logit_scale="logit_scale", mid=None),
    "cohere2": ArchSpec("model.layers", "model.norm", logit_scale="logit_scale", mid=None),
    "granite": ArchSpec("model.layers", "model.norm", logit_divisor="logits_scaling"),
    "exaone4": _POST_NORM,
    "glm": _LLAMA_LIKE,
    "glm4": _LLAMA_LIKE,
}


def register_arch(model_type: str, spec: ArchSpec, *, overwrite: bool = False) -> None:
    """Teach tunedlens a new architecture.

    Args:
        model_type: The ``config.model_type`` string of the model.
        spec: Where its modules live.
        overwrite: Replace an existing entry instead of raising.
    """
    if not isinstance(spec, ArchSpec):
        raise InputTypeError(f"spec must be an ArchSpec, got {type(spec).__name__}")
    if model_type in ARCHS and not overwrite:
        raise InputError(
            f"model_type={model_type!r} is already registered as {ARCHS[model_type]}; "
            "pass overwrite=True to replace it."
        )
    ARCHS[model_type] = spec
