"""Top-k next-token predictions of every layer at one position of a prompt."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from tunedlens.arch.residuals import collect_residuals
from tunedlens.lenses.lens import Lens, LogitLens


@dataclass(frozen=True)
class TokenProb:
    """One candidate token."""

    token: str
    id: int
    prob: float


@dataclass(frozen=True)
class LayerPrediction:
    """The top tokens decoded from one layer; ``layer == "output"`` is the model's own output."""

    layer: int | str
    top: list[TokenProb]

    def to_dict(self) -> dict:
        """JSON-ready form: ``{"layer": i, "top": [{"token", "id", "prob"}, ...]}``."""
        return asdict(self)


def parse_layers(spec: str | None, n_layers: int) -> list[int]:
    """Parse a layer selection: ``None``/``"all"``, ``"0,5,10"``, ``"4-8"`` or ``"0:30:5"``.

    Layers are ``0..L-1`` (``hidden_states`` indices); the output row is always added separately.
    """
    if spec is None or spec.strip() in ("", "all"):
        return list(range(n_layers))
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if re.fullmatch(r"-?\d+", part):  # negative indices count from the last layer
            index = int(part)
            layers.append(index + n_layers if -n_layers <= index < 0 else index)
        elif match := re.fullmatch(r"(\d+)-(\d+)", part):
            layers.extend(range(int(match[1]), int(match[2]) + 1))
        elif match := re.fullmatch(r"(\d*):(\d*)(?::(\d+))?", part):
            start, stop, step = (int(g) if g else None for g in match.groups())
            layers.extend(range(n_layers)[slice(start, stop, step)])
        else:
            raise ValueError(
                f"cannot parse layer selection {part!r}; use e.g. 'all', '0,5,10', '4-8' or '0:30:5'"
            )
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: this model has layers 0..{n_layers - 1}")
    return sorted(set(layers))


def encode_prompt(tokenizer, prompt: str, model: nn.Module) -> torch.Tensor:
    """Tokenise a prompt to ``(1, seq)`` ids, refusing empty prompts and over-long ones."""
    if not prompt:
        raise ValueError("the prompt is empty; pass some text to look at.")
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    if input_ids.shape[1] == 0:
        raise ValueError(f"the prompt {prompt!r} tokenises to no tokens; pass some text.")
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if limit is not None and input_ids.shape[1] > limit:
        raise ValueError(
            f"the prompt is {input_ids.shape[1]} tokens long, longer than the model's context of "
            f"{limit}; shorten it."
        )
    return input_ids


def _top(probs: torch.Tensor, tokenizer, top_k: int) -> list[TokenProb]:
    values, indices = probs.topk(top_k)
    return [
        TokenProb(tokenizer.decode([int(i)]), int(i), float(p))
        for p, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def predict_layers(
    model: nn.Module,
    tokenizer,
    prompt: str,
    lens: Lens | None = None,
    *,
    layers: list[int] | None = None,
    top_k: int = 5,
    position: int = -1,
) -> list[LayerPrediction]:
    """Each layer's top-k next tokens at ``position``, then the model's own (the output row).

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer.
        prompt: The text.
        lens: A lens for ``model``; default: the logit lens.
        layers: Layers ``0..L-1`` to decode; default: all.
        top_k: Tokens per layer.
        position: Token position (negative counts from the end).
    """
    lens = lens or LogitLens(model)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    input_ids = encode_prompt(tokenizer, prompt, model).to(lens.unembed.device)
    residuals = collect_residuals(model, input_ids, arch=lens.unembed.arch)
    top_k = min(top_k, lens.unembed.vocab_size)
    rows = []
    with torch.no_grad():
        for layer in range(lens.n_layers) if layers is None else layers:
            logits = lens(residuals.hidden[layer][0, position], layer)
            rows.append(LayerPrediction(layer, _top(logits.softmax(-1), tokenizer, top_k)))
        output = residuals.logits[0, position].float().softmax(-1)
    rows.append(LayerPrediction("output", _top(output, tokenizer, top_k)))
    return rows
