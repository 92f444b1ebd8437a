"""What a readout returns: per lens x row x position grids, and how they are filled."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from tunedlens.arch.points import Points, output_row, row_label
from tunedlens.engine.kernel import BlockedHead
from tunedlens.engine.stats import STATS
from tunedlens.errors import InputError
from tunedlens.lenses.lens import Lens
from tunedlens.metrics.divergence import NATS_TO_BITS

NATS = ("entropy", "kl", "ce")
"""The statistics that are information quantities: in nats in the tensors, bits in the views."""
UNITS = {name: "nats" if name in NATS else info.units for name, info in STATS.items()}
"""Statistic -> the unit of its values in a readout's tensors."""


RANKS = ("rank", "model_rank")


def _shape(tensor) -> str:
    return "×".join(map(str, tensor.shape)) if tensor is not None else "-"


def column_name(stat: str, unit: str = "bits") -> str:
    """The column of ``stat`` in :meth:`Readout.to_rows`: ``kl_bits``, ``max_prob``, ..."""
    name = stat.replace("-", "_")
    return f"{name}_{unit}" if stat in NATS else name


Row = int | tuple[int, int]
"""A row ``0..output_row`` or a ``(state_row, lens_row)`` pair."""


@dataclass(frozen=True)
class LensReadout:
    """One lens's readout: grids ``(batch, rows, positions)``; NaN / ``-1`` in padding cells."""

    name: str
    kind: str
    values: dict[str, torch.Tensor]
    """Statistic name -> float32 grid. Information quantities are in nats (see ``STATS``)."""
    top_ids: torch.Tensor | None = None
    """``(batch, rows, positions, k)`` most likely tokens, most likely first."""
    top_probs: torch.Tensor | None = None
    token_logprobs: torch.Tensor | None = None
    """``(batch, rows, positions, m)`` log-probability of each requested token."""
    token_ranks: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    """``(batch, rows, positions, vocab)`` full log-probabilities, when requested."""
    inputs: torch.Tensor | None = None
    """``(batch, rows, positions, d)`` what the lens fed the unembedding (``keep_inputs``)."""
    scales: tuple[float, ...] = ()
    """The lens's logit scale per row."""

    @property
    def token_probs(self) -> torch.Tensor | None:
        """``(batch, rows, positions, m)`` probability of each requested token."""
        return None if self.token_logprobs is None else self.token_logprobs.exp()

    @property
    def units(self) -> dict[str, str]:
        """Statistic -> unit of its grid: ``nats`` for entropy, KL and cross-entropy."""
        return {name: UNITS[name] for name in self.values}

    def __repr__(self) -> str:
        grid = next(iter(self.values.values()), self.top_ids)
        stats = ", ".join(f"{name} [{UNITS[name]}]" for name in self.values)
        extras = [
            f"{name} {_shape(getattr(self, name))}"
            for name in _GRIDS
            if getattr(self, name) is not None
        ]
        return (
            f"LensReadout({self.name!r}, {self.kind} lens, grids (batch, rows, positions) "
            f"{_shape(grid)}: {stats or 'no statistics'}"
            + (f"; {', '.join(extras)}" if extras else "")
            + ")"
        )

    def __getitem__(self, stat: str) -> torch.Tensor:
        if stat not in self.values:
            raise KeyError(
                f"statistic {stat!r} was not computed; pass stats=(..., {stat!r}) to readout"
            )
        return self.values[stat]

    def take(self, rows=None, positions=None) -> LensReadout:
        """A readout restricted to row indices and/or position indices (into this readout)."""

        def pick(tensor):
            if tensor is None:
                return None
            if rows is not None:
                tensor = tensor[:, rows]
            return tensor if positions is None else tensor[:, :, positions]

        changes = {name: pick(getattr(self, name)) for name in _GRIDS}
        scales = (
            self.scales
            if rows is None
            else tuple(self.scales[i] for i in _indices(rows, len(self.scales)))
        )
        return replace(
            self, values={k: pick(v) for k, v in self.values.items()}, scales=scales, **changes
        )


_KERNEL_RESULT = {
    "entropy": lambda r: r["entropy"],
    "kl": lambda r: r["kl"],
    "ce": lambda r: r["ce"],
    "max-prob": lambda r: r["confidence"],
    "rank": lambda r: r["target_rank"],
    "prob": lambda r: (-r["ce"].double()).exp().float(),
    "model-rank": lambda r: r["rank"],
    "cos": lambda r: r["cos"],
}
"""How each statistic is read from :meth:`BlockedHead.stats`'s result (only requested ones are)."""
_GRIDS = ("top_ids", "top_probs", "token_logprobs", "token_ranks", "logprobs", "inputs")


def _indices(selection, length: int) -> list[int]:
    return list(range(length))[selection] if isinstance(selection, slice) else list(selection)


@dataclass(frozen=True)
class Readout:
    """What :func:`readout` returns: per lens × row × position statistics, plus the model's own."""

    rows: list[Row]
    input_ids: torch.Tensor | None
    """``(batch, seq)`` the ids the model ran on (``None`` when read from given states)."""
    positions: torch.Tensor
    """``(batch, positions)`` index of each column in its sequence; ``-1`` in padding cells."""
    targets: torch.Tensor
    """``(batch, positions)`` the token each cell's cross-entropy and rank refer to; ``-1``: none."""
    model: dict[str, torch.Tensor]
    """The model's own ``entropy`` and ``ce`` (nats) ``(batch, positions)``; NaN unless a
    requested statistic compares with the model (``kl``, ``cos``, ``model-rank``)."""
    lenses: dict[str, LensReadout]
    n_blocks: int
    """Number of decoder blocks ``L`` of the model."""
    head: BlockedHead | None = field(default=None, repr=False, compare=False)
    points: Points = "block"
    """Which points of each block the rows read (see :mod:`tunedlens.arch.points`)."""

    @property
    def output_row(self) -> int:
        """The index of the output row: ``L``, or ``2L`` for lenses reading both points."""
        return output_row(self.points, self.n_blocks)

    @property
    def valid(self) -> torch.Tensor:
        """``(batch, positions)`` True where a cell holds a real token."""
        return self.positions >= 0

    @property
    def row_labels(self) -> list[str]:
        """``"0"``, ..., ``"output"`` for the output row (``"3.mid"``: mid points).

        ``"i@j"`` is the lens's row ``i`` read on the states of row ``j`` (a transfer).
        """
        label = lambda row: row_label(self.points, row, self.n_blocks)  # noqa: E731
        return [
            f"{label(row[1])}@{label(row[0])}" if isinstance(row, tuple) else label(row)
            for row in self.rows
        ]

    @property
    def units(self) -> dict[str, str]:
        """Statistic -> unit of its values in the tensors (``nats``: entropy, KL, cross-entropy).

        ``to_rows(unit="bits")`` / ``to_frame()`` convert; ``STATS[name].scale`` is the factor.
        """
        first = next(iter(self.lenses.values()), None)
        return {} if first is None else first.units

    def __repr__(self) -> str:
        labels = self.row_labels
        rows = f"{labels[0]}..{labels[-1]}" if len(labels) > 2 else ", ".join(labels)
        batch, positions = self.positions.shape
        first = next(iter(self.lenses.values()), None)
        stats = ", ".join(f"{n} [{u}]" for n, u in self.units.items()) or "none"
        top = first.top_ids.shape[-1] if first is not None and first.top_ids is not None else 0
        return (
            f"Readout(lenses {', '.join(self.lenses)}; rows {rows} ({len(labels)}); "
            f"batch {batch} × {positions} positions; stats {stats}; top-{top} tokens. "
            "to_frame() or to_rows() for a table in bits)"
        )

    def to_rows(self, unit: str = "bits") -> list[dict]:
        """One dict per lens, sequence, row and position (real tokens only), in ``unit``.

        Keys: ``lens``, ``batch``, ``row`` (``0..output_row``), ``row_label`` (``"output"`` for the model's
        row), ``position``, ``token_id`` (the input token, when known), ``target_id``, then one
        key per statistic, information quantities named with their unit (``kl_bits``,
        ``entropy_bits``, ``ce_bits``; ``_nats`` with ``unit="nats"``), and ``top1_id`` /
        ``top1_prob`` when top tokens were read.
        """
        if unit not in ("bits", "nats"):
            raise InputError(f"unit must be 'bits' or 'nats', got {unit!r}")
        scale = NATS_TO_BITS if unit == "bits" else 1.0
        labels = self.row_labels
        records = []
        batch_size, n_positions = self.positions.shape
        for name, lens in self.lenses.items():
            values = {
                column_name(stat, unit): grid.double() * (scale if stat in NATS else 1.0)
                for stat, grid in lens.values.items()
            }
            for b in range(batch_size):
                for r, label in enumerate(labels):
                    for p in range(n_positions):
                        position = int(self.positions[b, p])
                        if position < 0:
                            continue
                        record = {
                            "lens": name,
                            "batch": b,
                            "row": self.rows[r],
                            "row_label": label,
                            "position": position,
                            "token_id": None
                            if self.input_ids is None
                            else int(self.input_ids[b, position]),
                            "target_id": int(self.targets[b, p]),
                        }
                        for column, grid in values.items():
                            value = float(grid[b, r, p])
                            if column in RANKS:  # no target token: no rank
                                value = None if math.isnan(value) else int(value)
                            record[column] = value
                        if lens.top_ids is not None and lens.top_ids.shape[-1]:
                            record["top1_id"] = int(lens.top_ids[b, r, p, 0])
                            record["top1_prob"] = float(lens.top_probs[b, r, p, 0])
                        records.append(record)
        return records

    def to_frame(self, unit: str = "bits"):
        """:meth:`to_rows` as a pandas DataFrame (needs pandas: ``pip install pandas``)."""
        from tunedlens.errors import require

        pandas = require("pandas", "frame", pip_name="pandas")
        return pandas.DataFrame.from_records(self.to_rows(unit))

    def __getitem__(self, name: str) -> LensReadout:
        if name not in self.lenses:
            raise KeyError(
                f"no lens named {name!r} in this readout; it has {', '.join(self.lenses)}"
            )
        return self.lenses[name]

    def take(self, rows=None, positions=None) -> Readout:
        """The readout restricted to some row and/or position indices (slices or lists)."""
        pick = lambda t: t if positions is None else t[:, positions]  # noqa: E731
        kept_rows = (
            self.rows if rows is None else [self.rows[i] for i in _indices(rows, len(self.rows))]
        )
        return replace(
            self,
            rows=kept_rows,
            positions=pick(self.positions),
            targets=pick(self.targets),
            model={k: pick(v) for k, v in self.model.items()},
            lenses={k: v.take(rows, positions) for k, v in self.lenses.items()},
        )


@dataclass
class Grids:
    """Output tensors of one lens, filled chunk by chunk."""

    values: dict[str, torch.Tensor]
    top_ids: torch.Tensor | None
    top_probs: torch.Tensor | None
    token_logprobs: torch.Tensor | None
    token_ranks: torch.Tensor | None
    logprobs: torch.Tensor | None
    inputs: torch.Tensor | None
    scales: list[float]

    @classmethod
    def empty(cls, plan, n_rows: int, stats, top_k, head, logprobs, keep_inputs) -> Grids:
        """NaN-filled grids for the cells of ``plan`` (``-1`` for token ids)."""
        batch, width = plan.shape
        shape = (batch, n_rows, width)
        nan = lambda *extra: torch.full((*shape, *extra), torch.nan)  # noqa: E731
        m = 0 if plan.tokens is None else plan.tokens.shape[-1]
        d_model = plan.states[0].shape[-1]
        return cls(
            values={name: nan() for name in stats},
            top_ids=torch.full((*shape, top_k), -1, dtype=torch.long) if top_k else None,
            top_probs=nan(top_k) if top_k else None,
            token_logprobs=nan(m) if m else None,
            token_ranks=nan(m) if m else None,
            logprobs=nan(head.vocab_size) if logprobs else None,
            inputs=nan(d_model) if keep_inputs else None,
            scales=[1.0] * n_rows,
        )

    def write(
        self, row: int, where, result: dict, has_target, inputs, scale, buffer, tokens
    ) -> None:
        """Write one row's kernel results for the cells ``where`` (sequence, state, column)."""
        b, c = where[:, 0], where[:, 2]
        for name, grid in self.values.items():
            value = _KERNEL_RESULT[name](result).cpu()
            if name in ("ce", "rank", "prob"):
                value = torch.where(has_target, value, torch.nan)
            grid[b, row, c] = value
        if self.top_ids is not None:
            self.top_ids[b, row, c] = result["top_ids"].cpu()
            self.top_probs[b, row, c] = result["top_probs"].cpu()
        if self.token_logprobs is not None:
            missing = (tokens < 0).T.cpu()  # -1: no token asked for in this cell
            self.token_logprobs[b, row, c] = (
                result["token_logprob"].cpu().masked_fill(missing, torch.nan)
            )
            self.token_ranks[b, row, c] = result["token_rank"].cpu().masked_fill(missing, torch.nan)
        if self.logprobs is not None:
            self.logprobs[b, row, c] = buffer.cpu()
        if self.inputs is not None:
            self.inputs[b, row, c] = inputs.cpu()
        self.scales[row] = scale

    def finish(self, name: str, lens: Lens) -> LensReadout:
        """The filled grids as the lens's :class:`LensReadout`."""
        return LensReadout(
            name=name,
            kind=lens.kind,
            values=self.values,
            top_ids=self.top_ids,
            top_probs=self.top_probs,
            token_logprobs=self.token_logprobs,
            token_ranks=self.token_ranks,
            logprobs=self.logprobs,
            inputs=self.inputs,
            scales=tuple(self.scales),
        )
