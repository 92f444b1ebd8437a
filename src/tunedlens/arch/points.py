"""Where in a decoder block a lens reads: block boundaries, the mid point, or both.

The vocabulary of rows, used by lenses, residuals, readouts, trajectories, reports and files:
``n_blocks`` is ``L``, the number of decoder blocks; a lens reading ``points`` has rows
``0..output_row``, where

- ``"block"``: row ``i`` (``0..L-1``) is the input of block ``i`` (``0`` = embeddings);
- ``"mid"``: row ``i`` is block ``i``'s residual stream after attention and before the MLP
  (label ``"i.mid"``);
- ``"both"``: the two interleaved, ``0, 0.mid, 1, 1.mid, ..., L-1, L-1.mid`` (``2L`` rows).

In every case the row after these, :func:`output_row` (``L``, or ``2L`` for both), is the output
row: the last block's output, decoded by the bare model head, labelled ``"output"``. Rows are
indices in data; :func:`row_label` is the one way to name them in views.

Families whose blocks run attention and the MLP in parallel on the same input (GPT-J, Phi-1/2,
Cohere, GPT-NeoX and StableLM with ``use_parallel_residual``, parallel Falcon) have no mid point:
asking for one is an error.
"""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from tunedlens.arch.resolve import ResolvedArch, get_path, text_config
from tunedlens.errors import InputError, OutOfRange

Points = Literal["block", "mid", "both"]
POINTS: tuple[str, ...] = get_args(Points)


class NoMidPoint(InputError):
    """The model's blocks have no state between attention and the MLP (or it is not known where)."""


def check_points(points: str) -> Points:
    """``points`` itself, or a ValueError listing the choices."""
    if points not in POINTS:
        raise InputError(f"points must be one of {', '.join(POINTS)}, got {points!r}")
    return points  # type: ignore[return-value]


def output_row(points: Points, n_blocks: int) -> int:
    """The output row's index: ``L`` (``n_blocks``) for block or mid points, ``2L`` for both."""
    return 2 * n_blocks if check_points(points) == "both" else n_blocks


def blocks_of(points: Points, output_row: int) -> int:
    """``n_blocks`` of a lens reading ``points`` whose output row is ``output_row``."""
    return output_row // 2 if check_points(points) == "both" else output_row


def row_point(points: Points, row: int) -> tuple[int, bool]:
    """``(block, is_mid)`` of a row below the output row."""
    if points == "both":
        return row // 2, bool(row % 2)
    return row, points == "mid"


def block_rows(points: Points, blocks) -> list[int]:
    """The rows that read blocks ``blocks``: ``ℓ`` and ``ℓ.mid`` for ``both``, one row otherwise."""
    if points == "both":
        return [row for block in blocks for row in (2 * block, 2 * block + 1)]
    return list(blocks)


def row_label(points: Points, row: int, n_blocks: int) -> str:
    """How a row of a lens reading ``points`` is shown: ``"3"``, ``"3.mid"`` or ``"output"``."""
    if row == output_row(points, n_blocks):
        return "output"
    block, mid = row_point(points, row)
    return f"{block}.mid" if mid else str(block)


def parse_point(label: str | int, points: Points, n_blocks: int) -> int:
    """The row a user names (``"3"``, ``"3.mid"``, ``"output"`` or an int row), or an IndexError.

    For arguments a person types or a page sends; data carries row indices, never labels.
    """
    labels = [row_label(points, row, n_blocks) for row in range(output_row(points, n_blocks) + 1)]
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(labels):
        return label
    if str(label) in labels:
        return labels.index(str(label))
    shown = labels if len(labels) <= 6 else [*labels[:3], "...", *labels[-2:]]
    raise OutOfRange(
        f"{label!r} is not a row of a lens reading {points!r} points of {n_blocks} blocks; its rows "
        f"are {', '.join(shown)}"
    )


def mid_modules(arch: ResolvedArch, model: nn.Module) -> list[nn.Module]:
    """Per block, the module whose input is the mid point (see :class:`ArchSpec.mid`).

    Raises:
        NoMidPoint: parallel blocks, or a block without the module the spec names.
    """
    spec, config = arch.spec, text_config(model)
    model_type = getattr(config, "model_type", "this model")
    if spec.mid is None:
        raise NoMidPoint(
            f"{model_type} blocks run attention and the MLP in parallel on the same input, so "
            "there is no state between them: read block points (--points block)."
        )
    for flag in spec.no_mid_if:
        name, negated = flag.lstrip("!"), flag.startswith("!")
        value = bool(getattr(config, name, False))
        if value != negated:
            what = (
                f"{name}=False (a post-norm block: the MLP reads a normalised state)"
                if negated
                else f"{name}=True (attention and the MLP run in parallel on the same input)"
            )
            raise NoMidPoint(
                f"this {model_type} model has {what}, so its blocks have no mid point: read block "
                "points (--points block)."
            )
    modules = []
    for index, block in enumerate(arch.layers):
        try:
            module = get_path(block, spec.mid)
        except AttributeError:
            raise NoMidPoint(
                f"block {index} of this {model_type} model has no {spec.mid!r} submodule, whose "
                "input would be the mid point; register the family with ArchSpec(mid=...) naming "
                "the module that reads the residual stream after attention."
            ) from None
        modules.append(module)
    return modules


__all__ = [
    "POINTS",
    "NoMidPoint",
    "Points",
    "block_rows",
    "blocks_of",
    "check_points",
    "mid_modules",
    "output_row",
    "parse_point",
    "row_label",
    "row_point",
]
