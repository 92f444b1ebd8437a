"""Top-k next-token predictions of every layer at one position of a prompt."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from torch import nn

from tunedlens.arch.points import block_rows, check_points
from tunedlens.engine.core import readout
from tunedlens.engine.inputs import encode_prompt
from tunedlens.lenses.lens import Lens, LogitLens


@dataclass(frozen=True)
class TokenProb:
    """One candidate token."""

    token: str
    id: int
    prob: float


@dataclass(frozen=True)
class LayerPrediction:
    """The top tokens decoded from one layer (``"3.mid"``: a mid point; ``"output"``: the model)."""

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
    if not layers:
        raise ValueError(
            f"the layer selection {spec!r} selects no layer; this model has layers 0..{n_layers - 1}"
        )
    return sorted(set(layers))


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
        layers: Layers ``0..L-1`` to decode; default: all. A lens on mid points reads ``ℓ.mid``
            for layer ``ℓ`` (both points: ``ℓ`` and ``ℓ.mid``).
        top_k: Tokens per layer.
        position: Token position (negative counts from the end).
    """
    lens = lens or LogitLens(model)
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    input_ids = encode_prompt(tokenizer, prompt, model)
    length = input_ids.shape[1]
    if isinstance(position, bool) or not isinstance(position, int) or not -length <= position < length:
        raise IndexError(
            f"position {position!r} (--position) is outside the prompt's {length} tokens; use "
            f"0..{length - 1}, or -{length}..-1 counting from the end."
        )
    chosen = range(lens.n_layers) if layers is None else block_rows(lens.points, layers)
    rows = [*chosen, lens.n_layers]
    result = readout(model, {"lens": lens}, input_ids, rows=rows, positions=position, stats=(),
                     top_k=top_k)["lens"]  # fmt: skip
    predictions = []
    for index, row in enumerate(rows):
        ids, probs = result.top_ids[0, index, 0].tolist(), result.top_probs[0, index, 0].tolist()
        top = [TokenProb(tokenizer.decode([i]), i, p) for i, p in zip(ids, probs, strict=True)]
        label = row if lens.points == "block" and row < lens.n_layers else lens.row_label(row)
        predictions.append(LayerPrediction(label, top))
    return predictions


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
        """``{"model", "prompt", "lens", "position", "layers": [...]}`` (the ``--json`` payload)."""
        return {
            "model": self.model,
            "prompt": self.prompt,
            "lens": self.lens,
            "position": self.position,
            "layers": [row.to_dict() for row in self.rows],
        }

    def table(self):
        """A rich table: one row per layer, one column per rank."""
        import json

        from rich.table import Table

        name = f"{self.kind} lens" + ("" if self.lens == self.kind else f" {self.lens}")
        table = Table(title=f"{name} · {self.model} · position {self.position}")
        table.add_column("layer", justify="right")
        for rank in range(1, len(self.rows[0].top) + 1):
            table.add_column(f"#{rank}")
        for row in self.rows:
            cells = [f"{json.dumps(t.token, ensure_ascii=False)} {t.prob:.2f}" for t in row.top]
            table.add_row(str(row.layer), *cells, style="bold" if row.layer == "output" else None)
        return table


def run_predict(model_spec: str, prompt: str, *, lens: str = "logit", layers: str | None = None,
                top_k: int = 5, position: int = -1, dtype: str = "float32", device: str | None = None,
                tokenizer: str | None = None, strict: bool = True, points: str | None = None) -> PredictRun:  # fmt: skip
    """Load the model and lens, then :func:`predict_layers` (what ``tunedlens predict`` does).

    ``points`` (``block``, ``mid``, ``both``) makes the logit lens read sub-layer points; a
    trained lens reads the points it was trained on.
    """
    from tunedlens.lenses.io.load import align_points, check_location, load_lens
    from tunedlens.models import load_model, need_tokenizer

    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    check_location(lens)
    loaded, loaded_tokenizer = load_model(model_spec, dtype=dtype, device=device, tokenizer=tokenizer)
    need_tokenizer(loaded_tokenizer, model_spec)
    if points is not None:
        check_points(points)
    chosen = load_lens(lens, loaded, strict=strict)
    chosen = align_points({"lens": chosen}, loaded, points)["lens"]
    rows = predict_layers(loaded, loaded_tokenizer, prompt, chosen,
                          layers=parse_layers(layers, chosen.n_blocks), top_k=top_k,
                          position=position)  # fmt: skip
    return PredictRun(model_spec, prompt, lens, position, rows, chosen.kind)
