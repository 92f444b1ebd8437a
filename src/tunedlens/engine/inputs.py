"""Prompts into token ids for a readout, checked against the model's context."""

from __future__ import annotations

import torch
from torch import nn

from tunedlens.errors import InputError, TunedLensError


def encode_prompt(tokenizer, prompt: str, model: nn.Module) -> torch.Tensor:
    """Tokenise a prompt to ``(1, seq)`` ids, refusing empty prompts and over-long ones."""
    if tokenizer is None:
        raise TunedLensError(
            "this model has no tokenizer, so text cannot be turned into tokens; pass one "
            "(CLI: --tokenizer ID_OR_DIR; Python: load_model(spec, tokenizer=...))."
        )
    if not prompt:
        raise InputError("the prompt is empty; pass some text to look at.")
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    if input_ids.shape[1] == 0:
        raise InputError(f"the prompt {prompt!r} tokenises to no tokens; pass some text.")
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    if limit is not None and input_ids.shape[1] > limit:
        raise InputError(
            f"the prompt is {input_ids.shape[1]} tokens long, longer than the model's context of "
            f"{limit}; shorten it."
        )
    return input_ids
