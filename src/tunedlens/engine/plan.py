"""Which cells a readout reads: rows, positions (per sequence, padding aware), targets, tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunedlens.arch.residuals import Residuals, collect_residuals, token_ids
from tunedlens.engine.result import Row
from tunedlens.errors import InputError, OutOfRange
from tunedlens.lenses.lens import Lens


def check_rows(rows, output_row: int) -> list[Row]:
    """Rows as given (default ``0..output_row``), each checked to lie in ``0..output_row``."""
    if rows is None:
        return list(range(output_row + 1))
    checked: list[Row] = []
    for row in rows:
        pair = row if isinstance(row, tuple) else (row,)
        if not pair or not all(
            isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= output_row for r in pair
        ):
            raise OutOfRange(
                f"row {row!r} is outside 0..{output_row} (0 = embeddings, {output_row} = the output "
                "row); pass layer indices of this model"
            )
        checked.append(tuple(pair) if isinstance(row, tuple) else row)
    if not checked:
        raise OutOfRange(f"no rows selected; pass at least one row in 0..{output_row}")
    return checked


@dataclass
class Plan:
    """Which cells to read, the states they come from, and their targets and tokens."""

    input_ids: torch.Tensor | None
    states: list[torch.Tensor]
    """``L + 1`` tensors ``(batch, columns, d)`` indexed by :attr:`columns`."""
    positions: torch.Tensor  # (batch, P) sequence index, -1 padding
    columns: torch.Tensor  # (batch, P) index into the states' second dimension
    targets: torch.Tensor  # (batch, columns) for the states' columns
    targets_grid: torch.Tensor  # (batch, P)
    tokens: torch.Tensor | None  # (batch, columns, m)

    @property
    def shape(self) -> tuple[int, int]:
        """``(batch, positions)`` of the output grids."""
        return tuple(self.positions.shape)  # type: ignore[return-value]

    def cells(self) -> torch.Tensor:
        """``(n, 3)`` rows of (sequence, state column, grid column) of every real cell."""
        batch, column = torch.nonzero(self.positions >= 0, as_tuple=True)
        return torch.stack([batch, self.columns[batch, column], column], -1)


def _as_ids(input_ids, attention_mask):
    if not isinstance(input_ids, (list, tuple)):
        ids = token_ids(input_ids)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
    else:
        nested = bool(input_ids) and isinstance(input_ids[0], (list, tuple, torch.Tensor))
        sequences = [list(s) for s in input_ids] if nested else [list(input_ids)]
        if attention_mask is not None:
            raise InputError("pass attention_mask only with a (batch, seq) tensor of ids")
        length = max((len(s) for s in sequences), default=0)
        ids = torch.zeros(len(sequences), length, dtype=torch.long)
        attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
        for index, sequence in enumerate(sequences):
            ids[index, : len(sequence)] = token_ids(sequence)
            attention_mask[index, : len(sequence)] = 1
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"input_ids must be (batch, seq) and not empty, got {tuple(ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(ids.shape):
        raise InputError(
            f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(ids.shape)}"
        )
    return ids, attention_mask


def make_plan(
    model, lens: Lens, input_ids, states, attention_mask, positions, targets, tokens
) -> Plan:
    """The cells to read and their states, running the model unless ``states`` are given."""
    if input_ids is None and states is None:
        raise InputError("pass input_ids (token ids) or states (residuals) to read")
    ids = None
    if input_ids is not None:
        ids, attention_mask = _as_ids(input_ids, attention_mask)
        vocab = lens.unembed.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise InputError(f"input_ids must lie in 0..{vocab - 1} (the model's vocabulary)")
    if states is not None:
        hidden = list(states.hidden if isinstance(states, Residuals) else states)
        if len(hidden) != lens.output_row + 1:
            raise InputError(
                f"states must hold {lens.output_row + 1} tensors (rows 0..{lens.output_row}, "
                f"{lens.points} points), got {len(hidden)}"
            )
        if isinstance(states, Residuals) and states.points != lens.points:
            raise InputError(
                f"the states hold {states.points} points, the lens reads {lens.points} points"
            )
        hidden = [h if h.dim() == 3 else h.unsqueeze(0) for h in hidden]
        d_model = lens.unembed.d_model
        for row, state in enumerate(hidden):
            if (
                state.dim() != 3
                or state.shape[-1] != d_model
                or state.shape[:2] != hidden[0].shape[:2]
            ):
                raise InputError(
                    f"states[{row}] has shape {tuple(state.shape)}; every state must be "
                    f"(batch, seq, {d_model}) (the model's width) with the same batch and seq"
                )
        batch, seq = hidden[0].shape[:2]
        if ids is not None and tuple(ids.shape) != (batch, seq):
            raise InputError(
                f"input_ids {tuple(ids.shape)} do not match the states' {(batch, seq)}"
            )
    else:
        batch, seq = ids.shape
    mask = (
        torch.ones(batch, seq, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.bool().cpu()
    )
    lengths = mask.sum(1)
    if int(lengths.min()) == 0:
        raise InputError("a sequence has no tokens (its attention mask is all zeros)")
    index = [torch.nonzero(mask[b], as_tuple=True)[0] for b in range(batch)]  # real positions
    grid = _grid_positions(positions, index)
    if targets is None:
        next_ids = torch.full((batch, seq), -1, dtype=torch.long)
        if ids is not None:
            for b, where in enumerate(index):
                next_ids[b, where[:-1]] = ids[b, where[1:]]
    else:
        next_ids = token_ids(targets, "targets")
        next_ids = next_ids.unsqueeze(0) if next_ids.dim() == 1 else next_ids
        if tuple(next_ids.shape) != (batch, seq):
            raise InputError(f"targets {tuple(next_ids.shape)} must match input_ids {(batch, seq)}")
    token_grid = _token_grid(tokens, batch, seq, lens.unembed.vocab_size)
    if states is None:
        # Only the requested positions' states are kept (gathered inside the hooks).
        gather = grid.clamp_min(0)
        residuals = collect_residuals(
            model,
            ids.to(lens.unembed.device),
            attention_mask=None
            if attention_mask is None
            else attention_mask.to(lens.unembed.device),
            arch=lens.unembed.arch,
            positions=gather,
            with_logits=False,
            points=lens.points,
        )
        hidden, columns = list(residuals.hidden), torch.arange(grid.shape[1]).expand_as(grid)
        targets_cols = next_ids.gather(1, gather)
        token_grid = (
            None
            if token_grid is None
            else token_grid.gather(1, gather[..., None].expand(-1, -1, token_grid.shape[-1]))
        )
    else:
        columns, targets_cols = grid.clamp_min(0), next_ids
    targets_grid = torch.where(grid >= 0, next_ids.gather(1, grid.clamp_min(0)), -1)
    return Plan(ids, hidden, grid, columns, targets_cols, targets_grid, token_grid)


def _grid_positions(positions, index: list[torch.Tensor]) -> torch.Tensor:
    """``(batch, P)`` sequence positions of each column, ``-1`` where a sequence is shorter."""
    if positions is None:
        width = max(len(where) for where in index)
        grid = torch.full((len(index), width), -1, dtype=torch.long)
        for b, where in enumerate(index):
            grid[b, : len(where)] = where
        return grid
    wanted = [positions] if isinstance(positions, int) else list(positions)
    if not wanted:
        raise OutOfRange("no positions selected; pass at least one position")
    grid = torch.empty(len(index), len(wanted), dtype=torch.long)
    for b, where in enumerate(index):
        for column, position in enumerate(wanted):
            if (
                isinstance(position, bool)
                or not isinstance(position, int)
                or not -len(where) <= position < len(where)
            ):
                raise OutOfRange(
                    f"position {position!r} is outside the {len(where)} tokens of sequence {b}; "
                    f"use 0..{len(where) - 1}, or -1 for the last token"
                )
            grid[b, column] = where[position]
    return grid


def _token_grid(tokens, batch: int, seq: int, vocab: int) -> torch.Tensor | None:
    if tokens is None:
        return None
    grid = token_ids(tokens, "tokens")
    if grid.dim() == 1:
        grid = grid.expand(batch, -1)
    if grid.dim() == 2:
        grid = grid[:, None, :].expand(batch, seq, grid.shape[-1])
    if grid.dim() != 3 or tuple(grid.shape[:2]) != (batch, seq):
        raise InputError(
            f"tokens must be (m,), (batch, m) or (batch, seq, m), got {tuple(torch.as_tensor(tokens).shape)}"
        )
    if grid.numel() and (int(grid.min()) < -1 or int(grid.max()) >= vocab):
        raise InputError(f"tokens must lie in 0..{vocab - 1} (-1: none)")
    return grid
