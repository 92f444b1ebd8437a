"""Top-k next-token predictions of every layer at one position of a prompt."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import nn

from tunedlens.arch.points import block_rows, row_label
from tunedlens.engine.core import readout
from tunedlens.engine.inputs import encode_prompt
from tunedlens.engine.result import LensReadout
from tunedlens.errors import InputError, OutOfRange
from tunedlens.lenses.lens import Lens, LogitLens


@dataclass(frozen=True)
class TokenProb:
    """One candidate token."""

    token: str
    id: int
    prob: float


@dataclass(frozen=True)
class LayerPrediction:
    """The top tokens decoded from one row of the lens (see :mod:`tunedlens.arch.points`)."""

    row: int
    """The lens's row (``0..output_row``)."""
    label: str
    """How the row is shown: ``"3"``, ``"3.mid"`` (a mid point) or ``"output"`` (the model)."""
    top: list[TokenProb]

    def to_dict(self) -> dict:
        """JSON-ready form: ``{"row": i, "label": "i", "top": [{"token", "id", "prob"}, ...]}``."""
        return asdict(self)


def parse_layers(spec: str | None, n_blocks: int) -> list[int]:
    """Parse a layer selection: ``None``/``"all"``, ``"0,5,10"``, ``"4-8"`` or ``"0:30:5"``.

    ``A-B`` is inclusive (``4-8`` is 4, 5, 6, 7, 8); ``A:B[:STEP]`` is a Python slice, end
    excluded (``20:30`` is 20..29). Layers are blocks ``0..L-1`` (``hidden_states`` indices); the
    output row is always added separately.
    """
    if spec is None or spec.strip() in ("", "all"):
        return list(range(n_blocks))
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if re.fullmatch(r"-?\d+", part):  # negative indices count from the last layer
            index = int(part)
            layers.append(index + n_blocks if -n_blocks <= index < 0 else index)
        elif match := re.fullmatch(r"(\d+)-(\d+)", part):
            if int(match[2]) < int(match[1]):
                raise InputError(
                    f"layer range {part!r} runs backwards; A-B includes both ends "
                    f"(e.g. '{match[2]}-{match[1]}')"
                )
            layers.extend(range(int(match[1]), int(match[2]) + 1))
        elif match := re.fullmatch(r"(\d*):(\d*)(?::(\d+))?", part):
            start, stop, step = (int(g) if g else None for g in match.groups())
            layers.extend(range(n_blocks)[slice(start, stop, step)])
        else:
            raise InputError(
                f"cannot parse layer selection {part!r}; use e.g. 'all', '0,5,10', '4-8' "
                "(both ends included) or '0:30:5' (a slice, end excluded)"
            )
    bad = [layer for layer in layers if not 0 <= layer < n_blocks]
    if bad:
        raise InputError(
            f"layers {bad} are out of range: this model has layers 0..{n_blocks - 1} ('A-B' "
            "includes B; the output row is always shown)"
        )
    if not layers:
        raise InputError(
            f"the layer selection {spec!r} selects no layer; this model has layers "
            f"0..{n_blocks - 1} ('A:B' excludes B, 'A-B' includes it)"
        )
    return sorted(set(layers))


def check_top_k(top_k: int, what: str = "top_k") -> int:
    """``top_k`` itself if it is a whole number >= 1 (``what`` names it in the error)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"{what} must be at least 1, got {top_k!r}")
    return top_k


def check_position(position: int, length: int) -> int:
    """``position`` counted from the start, if it is inside a prompt of ``length`` tokens.

    Negative positions count from the end; an IndexError says which positions exist.
    """
    if (
        isinstance(position, bool)
        or not isinstance(position, int)
        or not -length <= position < length
    ):
        raise OutOfRange(
            f"position {position!r} (--position) is outside the prompt's {length} tokens; use "
            f"0..{length - 1}, or -{length}..-1 counting from the end."
        )
    return position % length


def layer_rows(lens: Lens, layers: Sequence[int] | None = None) -> list[int]:
    """The rows :func:`predict_layers` reads: blocks ``layers`` (default all), then the output row."""
    chosen = range(lens.output_row) if layers is None else block_rows(lens.points, layers)
    return [*chosen, lens.output_row]


def row_labels(lens: Lens, rows: Sequence[int]) -> list[str]:
    """Each row's label (:func:`~tunedlens.arch.points.row_label`): ``"3"``, ``"3.mid"``, ``"output"``."""
    return [row_label(lens.points, row, lens.n_blocks) for row in rows]


def layer_predictions(
    result: LensReadout,
    rows: Sequence[int],
    labels: Sequence[str],
    tokenizer,
    *,
    batch: int = 0,
    position: int = 0,
    top_k: int | None = None,
) -> list[LayerPrediction]:
    """One position of a lens's :func:`~tunedlens.readout`, in :func:`predict_layers`' shape.

    Args:
        result: The lens's readout, made with ``top_k`` >= 1.
        rows: The row of each of the readout's rows.
        labels: How each is shown (see :func:`row_labels`).
        tokenizer: Decodes the token ids.
        batch: The sequence of the readout's batch.
        position: The index among the readout's positions.
        top_k: Keep this many tokens (default all the readout has).
    """
    if result.top_ids is None or result.top_ids.shape[-1] == 0:
        raise InputError("the readout holds no top tokens; make it with top_k >= 1")
    k = result.top_ids.shape[-1] if top_k is None else check_top_k(top_k)
    if k > result.top_ids.shape[-1]:
        raise InputError(
            f"top_k={k} but the readout kept {result.top_ids.shape[-1]} tokens per cell"
        )
    ids = result.top_ids[batch, :, position, :k].tolist()
    probs = result.top_probs[batch, :, position, :k].tolist()
    return [
        LayerPrediction(
            row,
            label,
            [
                TokenProb(tokenizer.decode([i]), i, p)
                for i, p in zip(row_ids, row_probs, strict=True)
            ],
        )
        for row, label, row_ids, row_probs in zip(rows, labels, ids, probs, strict=True)
    ]


def predict_layers(
    model: nn.Module,
    tokenizer,
    prompt: str,
    lens: Lens | None = None,
    *,
    layers: Sequence[int] | None = None,
    top_k: int = 5,
    position: int = -1,
) -> list[LayerPrediction]:
    """Each layer's top-k next tokens at ``position``, then the model's own (the output row).

    The high-level way to ask "what does each layer predict here"; :func:`tunedlens.readout` is
    the low-level one (many lenses, positions and statistics at once).

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer.
        prompt: The text.
        lens: A lens for ``model``; default: the logit lens.
        layers: Layers ``0..L-1`` to decode; default: all. A lens on mid points reads ``ℓ.mid``
            for layer ``ℓ`` (both points: ``ℓ`` and ``ℓ.mid``).
        top_k: Tokens per layer.
        position: Token position (negative counts from the end).

    Returns:
        One :class:`LayerPrediction` per row, labelled ``"0"``, ``"1"``, ... (``"3.mid"`` for a
        mid point) and ``"output"`` last.
    """
    lens = lens or LogitLens(model)
    check_top_k(top_k)
    input_ids = encode_prompt(tokenizer, prompt, model)
    check_position(position, input_ids.shape[1])
    rows = layer_rows(lens, layers)
    result = readout(
        model, {"lens": lens}, input_ids, rows=rows, positions=position, stats=(), top_k=top_k
    )["lens"]
    return layer_predictions(result, rows, row_labels(lens, rows), tokenizer)
