"""What a readout returns: per lens x row x position grids, and how they are filled."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from tunedlens.arch.points import Points, output_row, row_label
from tunedlens.engine.kernel import BlockedHead
from tunedlens.lenses.lens import Lens

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
    """The rows read, in order: a lens row, or ``(state_row, lens_row)`` for a transfer."""
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
    """Each lens's statistics, by the name it was given (also ``readout[name]``)."""
    n_blocks: int
    """Number of decoder blocks ``L`` of the model."""
    head: BlockedHead | None = field(default=None, repr=False, compare=False)
    """The float32 blocked head the readout decoded with, kept for :func:`divergences`."""
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
