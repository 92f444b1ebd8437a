"""The architecture registry: the only place that knows where modules live in a model.

Entries are keyed by ``config.model_type``. A new architecture costs one line here and one
tiny config in ``tests/tiny_models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


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


_GPT2_LIKE = ArchSpec("transformer.h", "transformer.ln_f")
_LLAMA_LIKE = ArchSpec("model.layers", "model.norm")

ARCHS: dict[str, ArchSpec] = {
    "gpt2": _GPT2_LIKE,
    "gpt_bigcode": _GPT2_LIKE,
    "gpt_neo": _GPT2_LIKE,
    "gptj": _GPT2_LIKE,
    "bloom": _GPT2_LIKE,
    "falcon": _GPT2_LIKE,
    "gpt_neox": ArchSpec("gpt_neox.layers", "gpt_neox.final_layer_norm"),
    "opt": ArchSpec(
        "model.decoder.layers",
        "model.decoder.final_layer_norm",
        pre_unembed=("model.decoder.project_out",),
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
    "gemma2": ArchSpec("model.layers", "model.norm", logit_softcap="final_logit_softcapping"),
    "gemma3_text": ArchSpec("model.layers", "model.norm", logit_softcap="final_logit_softcapping"),
    # The multimodal wrapper applies no soft-cap (Gemma3ForConditionalGeneration.forward).
    "gemma3": ArchSpec("model.language_model.layers", "model.language_model.norm"),
    "phi": ArchSpec("model.layers", "model.final_layernorm"),
    "phi3": _LLAMA_LIKE,
    "phimoe": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "olmo3": _LLAMA_LIKE,
    "olmoe": _LLAMA_LIKE,
    "stablelm": _LLAMA_LIKE,
    "starcoder2": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "cohere": ArchSpec("model.layers", "model.norm", logit_scale="logit_scale"),
    "cohere2": ArchSpec("model.layers", "model.norm", logit_scale="logit_scale"),
    "granite": ArchSpec("model.layers", "model.norm", logit_divisor="logits_scaling"),
    "exaone4": _LLAMA_LIKE,
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
        raise TypeError(f"spec must be an ArchSpec, got {type(spec).__name__}")
    if model_type in ARCHS and not overwrite:
        raise ValueError(
            f"model_type={model_type!r} is already registered as {ARCHS[model_type]}; "
            "pass overwrite=True to replace it."
        )
    ARCHS[model_type] = spec
