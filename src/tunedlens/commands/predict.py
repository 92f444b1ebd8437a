"""``tunedlens predict``: each layer's top-k next tokens at one position of a prompt."""

from __future__ import annotations

from dataclasses import dataclass

from tunedlens.commands.common import open_model_and_lenses
from tunedlens.predict import LayerPrediction, check_top_k, parse_layers, predict_layers


@dataclass(frozen=True)
class PredictRun:
    """What ``tunedlens predict`` computed, ready to print as a table or JSON."""

    model: str
    prompt: str
    lens: str
    position: int
    rows: list[LayerPrediction]
    kind: str = "logit"

    def to_dict(self) -> dict:
        """``{"model", "prompt", "lens", "position", "rows": [...]}`` (the ``--json`` payload)."""
        return {
            "model": self.model,
            "prompt": self.prompt,
            "lens": self.lens,
            "position": self.position,
            "rows": [row.to_dict() for row in self.rows],
        }


def run(
    model_spec: str,
    prompt: str,
    *,
    lens: str = "logit",
    layers: str | None = None,
    top_k: int = 5,
    position: int = -1,
    dtype: str = "float32",
    device: str | None = None,
    tokenizer: str | None = None,
    strict: bool = True,
    points: str | None = None,
) -> PredictRun:
    """Load the model and lens, then :func:`~tunedlens.predict.predict_layers`.

    ``points`` (``block``, ``mid``, ``both``) makes the logit lens read sub-layer points; a
    trained lens reads the points it was trained on.
    """
    check_top_k(top_k, "--top-k")
    opened = open_model_and_lenses(
        model_spec,
        [lens],
        dtype=dtype,
        device=device,
        tokenizer=tokenizer,
        strict=strict,
        points=points,
        with_logit=lens == "logit",
    )
    (chosen,) = opened.lenses.values()
    rows = predict_layers(
        opened.model,
        opened.tokenizer,
        prompt,
        chosen,
        layers=parse_layers(layers, chosen.n_blocks),
        top_k=top_k,
        position=position,
    )
    return PredictRun(model_spec, prompt, lens, position, rows, chosen.kind)
