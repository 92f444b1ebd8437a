"""``readout``: what every lens predicts at every requested layer row and position, exactly.

This is the one mechanism behind ``predict``, ``show`` and trajectories, the notebook facade,
the prompt suite, ``evaluate`` and training validation. Given token ids (a batch of prompts,
padded with an attention mask) or residual states, it decodes each requested row with each lens
and reduces the full-vocabulary distribution in blocks (:class:`BlockedHead`): memory does not
grow with the vocabulary or the number of rows beyond a fixed budget, and every number is exact.
The model's own distribution is computed once, in one way: the float32 head on the last block's
output (row ``L``), which reproduces the model's logits.

Rows: ``0..L-1`` are ``hidden_states[i]`` (``0`` = embeddings), ``L`` is the output row. A row
may also be a pair ``(state_row, lens_row)``: the states of one row read with the lens's map of
another (the transfer matrix of ``evaluate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from tunedlens.arch.residuals import Residuals, collect_residuals
from tunedlens.errors import LensMismatch
from tunedlens.lenses.lens import Lens, LogitLens
from tunedlens.lenses.unembed import Unembed
from tunedlens.readout.kernel import BlockedHead, Extras, FinalChunk, head_input
from tunedlens.readout.stats import PAIR_STATS, STAT_NAMES, Stat, check_stats

Row = int | tuple[int, int]
DEFAULT_STATS: tuple[Stat, ...] = ("entropy", "kl", "ce", "max-prob", "rank", "prob")
DEFAULT_BUDGET = 512 * 2**20
"""Bytes for vocabulary-sized work tensors (sets the positions per chunk)."""


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
        scales = self.scales if rows is None else tuple(self.scales[i] for i in _indices(rows, len(self.scales)))
        return replace(self, values={k: pick(v) for k, v in self.values.items()}, scales=scales,
                       **changes)  # fmt: skip


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
    """The model's own ``entropy`` and ``ce`` (nats) ``(batch, positions)``."""
    lenses: dict[str, LensReadout]
    n_layers: int
    head: BlockedHead | None = field(default=None, repr=False, compare=False)

    @property
    def valid(self) -> torch.Tensor:
        """``(batch, positions)`` True where a cell holds a real token."""
        return self.positions >= 0

    @property
    def row_labels(self) -> list[str]:
        """``"0"``, ..., ``"output"`` for row ``L``; ``"i@j"`` for lens row i on the states of j."""
        return [row_label(row, self.n_layers) for row in self.rows]

    def __getitem__(self, name: str) -> LensReadout:
        if name not in self.lenses:
            raise KeyError(f"no lens named {name!r} in this readout; it has {', '.join(self.lenses)}")
        return self.lenses[name]

    def take(self, rows=None, positions=None) -> Readout:
        """The readout restricted to some row and/or position indices (slices or lists)."""
        pick = lambda t: t if positions is None else t[:, positions]  # noqa: E731
        kept_rows = self.rows if rows is None else [self.rows[i] for i in _indices(rows, len(self.rows))]
        return replace(
            self, rows=kept_rows, positions=pick(self.positions), targets=pick(self.targets),
            model={k: pick(v) for k, v in self.model.items()},
            lenses={k: v.take(rows, positions) for k, v in self.lenses.items()},
        )  # fmt: skip


def row_label(row: Row, n_layers: int) -> str:
    """How a row is shown: its layer index, ``output`` for ``L``, ``i@j`` for a transfer pair."""
    if isinstance(row, tuple):
        return f"{row[1]}@{row[0]}"
    return "output" if row == n_layers else str(row)


def name_lenses(lenses: Lens | Sequence[Lens] | Mapping[str, Lens] | None) -> dict[str, Lens]:
    """Give every lens a unique name: mapping keys, or each lens's kind (``tuned``, ``tuned-1``)."""
    if lenses is None:
        return {}
    if isinstance(lenses, Lens):
        lenses = [lenses]
    if isinstance(lenses, Mapping):
        named = dict(lenses)
    else:
        named = {}
        for lens in lenses:
            name, index = lens.kind, 0
            while name in named:
                index += 1
                name = f"{lens.kind}-{index}"
            named[name] = lens
    for name, lens in named.items():
        if not isinstance(lens, Lens):
            raise TypeError(f"lens {name!r} is a {type(lens).__name__}, not a tunedlens Lens")
    return named


def blocked_head(unembed: Unembed, *, cosine: bool) -> BlockedHead:
    """The blocked head of ``unembed``'s unembedding, built once per model and settings.

    Its float64 moments (for the cosine) cost a pass over the unembedding; caching them makes
    repeated readouts of one model (a notebook, a server) pay it once.
    """
    head = BlockedHead(unembed, cosine=False)
    key = (cosine, head.numpy_matmul, head.workers, str(head.weight.device))
    # Kept on the unembedding module itself, so it lives exactly as long as the model.
    cache = unembed.unembedding.__dict__.setdefault("_tunedlens_blocked_heads", {})
    cached = cache.get(key)
    if cached is None or cached.weight.data_ptr() != head.weight.data_ptr():
        cached = cache[key] = BlockedHead(unembed, cosine=True) if cosine else head
    return cached


def chunk_positions(vocab: int, budget_bytes: int) -> int:
    """Positions per chunk so that vocabulary-sized work fits ``budget_bytes``."""
    # About three (vocab x n) float32 tensors live per chunk: the model's probabilities, its
    # logits while they are being reduced, and (non-linear heads) their centred copy.
    return int(max(16, min(1024, budget_bytes // (3 * 4 * vocab))))


def readout(
    model: nn.Module | None,
    lenses: Lens | Sequence[Lens] | Mapping[str, Lens] | None = None,
    input_ids: torch.Tensor | Sequence[Sequence[int]] | Sequence[int] | None = None,
    *,
    states: Residuals | Sequence[torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
    rows: Sequence[Row] | None = None,
    positions: int | Sequence[int] | None = None,
    stats: Sequence[Stat] = DEFAULT_STATS,
    top_k: int = 10,
    tokens: torch.Tensor | Sequence[int] | None = None,
    targets: torch.Tensor | None = None,
    logprobs: bool = False,
    keep_inputs: bool = False,
    memory_budget: int = DEFAULT_BUDGET,
) -> Readout:
    """Read every lens at every requested row and position, exactly, over the full vocabulary.

    Args:
        model: The causal LM (its blocks run unless ``states`` are given; ``None`` with states).
        lenses: A lens, a list (named by kind: ``logit``, ``tuned``, ``tuned-1``) or a mapping
            name -> lens; default: the logit lens.
        input_ids: ``(batch, seq)`` or ``(seq,)`` ids, or a list of sequences of different
            lengths (padded on the right, with the attention mask made for you).
        states: Residual states instead of running the model: a :class:`Residuals` or ``L + 1``
            tensors ``(batch, seq, d_model)`` (e.g. from a TransformerLens cache).
        attention_mask: ``(batch, seq)``, 1 for real tokens, 0 for padding.
        rows: Rows ``0..L`` (``L`` = the output row) or ``(state_row, lens_row)`` pairs; default
            every row ``0..L``.
        positions: Token positions of each sequence (negative counts from its end); default all.
        stats: Names from :data:`tunedlens.readout.stats.STATS`.
        top_k: Most likely tokens per cell (0: none).
        tokens: Tokens whose probability and rank are wanted in every cell: ``(m,)``, per
            sequence ``(batch, m)``, or per position ``(batch, seq, m)``.
        targets: ``(batch, seq)`` token each position's ``ce``, ``rank`` and ``prob`` refer to
            (``-1``: none); default the next token.
        logprobs: Also return full ``(batch, rows, positions, vocab)`` log-probabilities.
        keep_inputs: Keep the head inputs, for :func:`divergences` between two readouts.
        memory_budget: Bytes for vocabulary-sized work tensors.

    Returns:
        A :class:`Readout`.

    Raises:
        LensMismatch: a lens decodes with another model's head.
        ValueError, IndexError: bad rows, positions, statistics or shapes (before any work).
    """
    stats = check_stats(stats)
    if model is None and not lenses:
        raise ValueError("pass the lenses to read when no model is given")
    named = name_lenses(lenses) or {"logit": LogitLens(model)}
    first = next(iter(named.values()))
    if model is None and states is None:
        raise ValueError("pass the model (or states to read without running it)")
    head_module = first.unembed.unembedding if model is None else model.get_output_embeddings()
    for name, lens in named.items():
        if lens.unembed.unembedding is not head_module:
            raise LensMismatch(
                f"lens {name!r} decodes with another model's head; load it for this model "
                "(load_lens(location, model))."
            )
    n_layers = first.n_layers
    rows = _check_rows(rows, n_layers)
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    plan = _plan(model, first, input_ids, states, attention_mask, positions, targets, tokens)
    unembed = Unembed.from_arch(first.unembed.arch)
    head = blocked_head(unembed, cosine="cos" in stats)
    top_k = min(top_k, head.vocab_size)
    grids = {name: _Grids.empty(plan, len(rows), stats, top_k, head, logprobs, keep_inputs)
             for name in named}  # fmt: skip
    model_stats = {k: torch.full(plan.shape, torch.nan) for k in ("entropy", "ce")}
    cells = plan.cells()
    chunk = chunk_positions(head.vocab_size, memory_budget)
    device = head.weight.device
    for part in torch.split(torch.arange(cells.shape[0]), chunk):
        where = cells[part]
        states_at = [state[where[:, 0], where[:, 1]] for state in plan.states]
        targets_at = plan.targets[where[:, 0], where[:, 1]].to(device)
        # The model's own distribution: its float32 head on the last block's output.
        final = head.final(unembed.head_input(states_at[n_layers]), targets_at)
        model_stats["entropy"][where[:, 0], where[:, 2]] = final.entropy.float().cpu()
        model_stats["ce"][where[:, 0], where[:, 2]] = torch.where(
            targets_at >= 0, final.cross_entropy, torch.nan).float().cpu()  # fmt: skip
        extra_tokens = None if plan.tokens is None else plan.tokens[where[:, 0], where[:, 1]].T.to(device)
        # Few positions (prompts): several rows share one pass over the unembedding, which is
        # read once per pass; many positions (evaluation): one row at a time, as before.
        group = max(1, chunk // len(part))
        for name, lens in named.items():
            for first_row in range(0, len(rows), group):
                _read_rows(head, lens, grids[name], rows[first_row : first_row + group], first_row,
                           states_at, where, final, extra_tokens, stats, top_k, logprobs)  # fmt: skip
    return Readout(
        rows=rows,
        input_ids=plan.input_ids,
        positions=plan.positions,
        targets=plan.targets_grid,
        model=model_stats,
        lenses={name: grids[name].finish(name, lens) for name, lens in named.items()},
        n_layers=n_layers,
        head=head,
    )


def _read_rows(head: BlockedHead, lens: Lens, grids: _Grids, rows: list[Row], first_row: int,
               states_at, where, final: FinalChunk, tokens, stats, top_k: int, logprobs: bool) -> None:  # fmt: skip
    """One lens at several rows of one chunk of positions, in one pass of the kernel."""
    inputs, scales = [], []
    for row in rows:
        state_row, lens_row = row if isinstance(row, tuple) else (row, row)
        row_inputs, scale = head_input(lens, states_at[state_row], lens_row)
        inputs.append(row_inputs)
        scales.append(scale)
    n, times = len(where), len(rows)
    scale = 1.0
    if any(value != 1.0 for value in scales):
        scale = torch.tensor(scales, dtype=torch.float64, device=head.weight.device).repeat_interleave(n)
    buffer = torch.empty(n * times, head.vocab_size, device=head.weight.device) if logprobs else None
    extras = Extras(
        tokens=None if tokens is None else tokens.clamp_min(0).repeat(1, times),
        rank_target="rank" in stats, top_k=top_k, logprobs=buffer,
    )  # fmt: skip
    result = head.stats(torch.cat(inputs), final.repeat(times, with_probs=not head.linear), scale,
                        extras)  # fmt: skip
    has_target = final.next_ids.cpu() >= 0
    for index in range(times):
        part = slice(index * n, (index + 1) * n)
        values = {key: value[part] for key, value in result.items()}
        grids.write(first_row + index, where, values, has_target, inputs[index], scales[index],
                    None if buffer is None else buffer[part], tokens)  # fmt: skip


def _check_rows(rows, n_layers: int) -> list[Row]:
    if rows is None:
        return list(range(n_layers + 1))
    checked: list[Row] = []
    for row in rows:
        pair = row if isinstance(row, tuple) else (row,)
        if not pair or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= n_layers
                               for r in pair):  # fmt: skip
            raise IndexError(
                f"row {row!r} is outside 0..{n_layers} (0 = embeddings, {n_layers} = the output "
                "row); pass layer indices of this model"
            )
        checked.append(tuple(pair) if isinstance(row, tuple) else row)
    if not checked:
        raise IndexError("no rows selected; pass at least one row in 0..{n_layers}")
    return checked


@dataclass
class _Plan:
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
        return tuple(self.positions.shape)  # type: ignore[return-value]

    def cells(self) -> torch.Tensor:
        """``(n, 3)`` rows of (sequence, state column, grid column) of every real cell."""
        batch, column = torch.nonzero(self.positions >= 0, as_tuple=True)
        return torch.stack([batch, self.columns[batch, column], column], -1)


def _as_ids(input_ids, attention_mask):
    if isinstance(input_ids, torch.Tensor):
        ids = input_ids.long()
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
    else:
        sequences = [list(s) for s in input_ids] if input_ids and not isinstance(input_ids[0], int) else [list(input_ids)]
        if attention_mask is not None:
            raise ValueError("pass attention_mask only with a (batch, seq) tensor of ids")
        length = max((len(s) for s in sequences), default=0)
        ids = torch.zeros(len(sequences), length, dtype=torch.long)
        attention_mask = torch.zeros(len(sequences), length, dtype=torch.long)
        for index, sequence in enumerate(sequences):
            ids[index, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            attention_mask[index, : len(sequence)] = 1
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, seq) and not empty, got {tuple(ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(ids.shape):
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} does not match input_ids {tuple(ids.shape)}"
        )
    return ids, attention_mask


def _plan(model, lens: Lens, input_ids, states, attention_mask, positions, targets, tokens) -> _Plan:
    if input_ids is None and states is None:
        raise ValueError("pass input_ids (token ids) or states (residuals) to read")
    ids = None
    if input_ids is not None:
        ids, attention_mask = _as_ids(input_ids, attention_mask)
        vocab = lens.unembed.vocab_size
        if int(ids.min()) < 0 or int(ids.max()) >= vocab:
            raise ValueError(f"input_ids must lie in 0..{vocab - 1} (the model's vocabulary)")
    if states is not None:
        hidden = list(states.hidden if isinstance(states, Residuals) else states)
        if len(hidden) != lens.n_layers + 1:
            raise ValueError(f"states must hold {lens.n_layers + 1} tensors (rows 0..L), got {len(hidden)}")
        hidden = [h if h.dim() == 3 else h.unsqueeze(0) for h in hidden]
        batch, seq = hidden[0].shape[:2]
        if ids is not None and tuple(ids.shape) != (batch, seq):
            raise ValueError(f"input_ids {tuple(ids.shape)} do not match the states' {(batch, seq)}")
    else:
        batch, seq = ids.shape
    mask = torch.ones(batch, seq, dtype=torch.bool) if attention_mask is None else attention_mask.bool().cpu()
    lengths = mask.sum(1)
    if int(lengths.min()) == 0:
        raise ValueError("a sequence has no tokens (its attention mask is all zeros)")
    index = [torch.nonzero(mask[b], as_tuple=True)[0] for b in range(batch)]  # real positions
    grid = _grid_positions(positions, index)
    if targets is None:
        next_ids = torch.full((batch, seq), -1, dtype=torch.long)
        if ids is not None:
            for b, where in enumerate(index):
                next_ids[b, where[:-1]] = ids[b, where[1:]]
    else:
        next_ids = torch.as_tensor(targets).long()
        next_ids = next_ids.unsqueeze(0) if next_ids.dim() == 1 else next_ids
        if tuple(next_ids.shape) != (batch, seq):
            raise ValueError(f"targets {tuple(next_ids.shape)} must match input_ids {(batch, seq)}")
    token_grid = _token_grid(tokens, batch, seq, lens.unembed.vocab_size)
    if states is None:
        # Only the requested positions' states are kept (gathered inside the hooks).
        gather = grid.clamp_min(0)
        residuals = collect_residuals(
            model, ids.to(lens.unembed.device), attention_mask=None if attention_mask is None
            else attention_mask.to(lens.unembed.device), arch=lens.unembed.arch,
            positions=gather, with_logits=False,
        )  # fmt: skip
        hidden, columns = list(residuals.hidden), torch.arange(grid.shape[1]).expand_as(grid)
        targets_cols = next_ids.gather(1, gather)
        token_grid = None if token_grid is None else token_grid.gather(1, gather[..., None].expand(-1, -1, token_grid.shape[-1]))
    else:
        columns, targets_cols = grid.clamp_min(0), next_ids
    targets_grid = torch.where(grid >= 0, next_ids.gather(1, grid.clamp_min(0)), -1)
    return _Plan(ids, hidden, grid, columns, targets_cols, targets_grid, token_grid)


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
        raise IndexError("no positions selected; pass at least one position")
    grid = torch.empty(len(index), len(wanted), dtype=torch.long)
    for b, where in enumerate(index):
        for column, position in enumerate(wanted):
            if isinstance(position, bool) or not isinstance(position, int) or not -len(where) <= position < len(where):
                raise IndexError(
                    f"position {position!r} is outside the {len(where)} tokens of sequence {b}; "
                    f"use 0..{len(where) - 1}, or -1 for the last token"
                )
            grid[b, column] = where[position]
    return grid


def _token_grid(tokens, batch: int, seq: int, vocab: int) -> torch.Tensor | None:
    if tokens is None:
        return None
    grid = torch.as_tensor(tokens).long()
    if grid.dim() == 1:
        grid = grid.expand(batch, -1)
    if grid.dim() == 2:
        grid = grid[:, None, :].expand(batch, seq, grid.shape[-1])
    if grid.dim() != 3 or tuple(grid.shape[:2]) != (batch, seq):
        raise ValueError(f"tokens must be (m,), (batch, m) or (batch, seq, m), got {tuple(torch.as_tensor(tokens).shape)}")
    if grid.numel() and (int(grid.min()) < -1 or int(grid.max()) >= vocab):
        raise ValueError(f"tokens must lie in 0..{vocab - 1} (-1: none)")
    return grid


@dataclass
class _Grids:
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
    def empty(cls, plan: _Plan, n_rows: int, stats, top_k, head, logprobs, keep_inputs) -> _Grids:
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

    def write(self, row: int, where, result: dict, has_target, inputs, scale, buffer,
              tokens) -> None:  # fmt: skip
        b, c = where[:, 0], where[:, 2]
        computed = {
            "entropy": result["entropy"],
            "kl": result["kl"],
            "ce": result["ce"],
            "max-prob": result["confidence"],
            "rank": result.get("target_rank"),
            "prob": (-result["ce"].double()).exp().float(),
            "model-rank": result["rank"],
            "cos": result["cos"],
        }
        for name, grid in self.values.items():
            value = computed[name].cpu()
            if name in ("ce", "rank", "prob"):
                value = torch.where(has_target, value, torch.nan)
            grid[b, row, c] = value
        if self.top_ids is not None:
            self.top_ids[b, row, c] = result["top_ids"].cpu()
            self.top_probs[b, row, c] = result["top_probs"].cpu()
        if self.token_logprobs is not None:
            missing = (tokens < 0).T.cpu()  # -1: no token asked for in this cell
            self.token_logprobs[b, row, c] = result["token_logprob"].cpu().masked_fill(missing, torch.nan)
            self.token_ranks[b, row, c] = result["token_rank"].cpu().masked_fill(missing, torch.nan)
        if self.logprobs is not None:
            self.logprobs[b, row, c] = buffer.cpu()
        if self.inputs is not None:
            self.inputs[b, row, c] = inputs.cpu()
        self.scales[row] = scale

    def finish(self, name: str, lens: Lens) -> LensReadout:
        return LensReadout(
            name=name, kind=lens.kind, values=self.values, top_ids=self.top_ids,
            top_probs=self.top_probs, token_logprobs=self.token_logprobs, token_ranks=self.token_ranks,
            logprobs=self.logprobs, inputs=self.inputs, scales=tuple(self.scales),
        )  # fmt: skip


def divergences(first: Readout, second: Readout, lens: str | None = None,
                other_lens: str | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Jensen–Shannon, KL(first ‖ second) and total variation per cell of two readouts (nats).

    Both readouts need ``keep_inputs=True`` and the same grid shape: two prompts of equal token
    length through one lens, or two lenses on one prompt.

    Returns:
        ``{"js", "kl", "tv"}`` float32 grids ``(batch, rows, positions)`` (see ``PAIR_STATS``).
    """
    a = first[lens or next(iter(first.lenses))]
    b = second[other_lens or lens or next(iter(second.lenses))]
    if a.inputs is None or b.inputs is None:
        raise ValueError("divergences need readouts made with keep_inputs=True")
    if a.inputs.shape != b.inputs.shape:
        raise ValueError(
            f"the readouts differ in shape {tuple(a.inputs.shape[:3])} vs "
            f"{tuple(b.inputs.shape[:3])}: compare prompts of the same token length"
        )
    head = first.head
    valid = (first.valid & second.valid)[:, None, :].expand(a.inputs.shape[:3])
    out = {name: torch.full(a.inputs.shape[:3], torch.nan) for name in PAIR_STATS}
    device = head.weight.device
    for row in range(a.inputs.shape[1]):
        cells = valid[:, row]
        if not cells.any():
            continue
        result = head.divergences(a.inputs[:, row][cells].to(device), a.scales[row],
                                  b.inputs[:, row][cells].to(device), b.scales[row])  # fmt: skip
        for name in PAIR_STATS:
            out[name][:, row][cells] = result[name].cpu()
    return out


def layer_kl(lens: Lens, model: nn.Module, tokens: torch.Tensor, *, batch_size: int = 8,
             chunk_rows: int = 1024) -> torch.Tensor:  # fmt: skip
    """Mean KL(output row ‖ lens) in nats for every layer ``0..L-1``, over every token.

    Training validation: one :func:`readout` per batch of sequences, KL only.

    Args:
        lens: The lens to evaluate.
        model: Its model.
        tokens: ``(n_sequences, seq_len)`` token ids.
        batch_size: Sequences per forward pass.
        chunk_rows: Positions per vocabulary-sized computation.

    Returns:
        ``(L,)`` float64 tensor of mean KL per layer, in nats.
    """
    n_layers = lens.n_layers
    totals = torch.zeros(n_layers, dtype=torch.float64)
    budget = chunk_rows * 3 * 4 * lens.unembed.vocab_size
    for start in range(0, tokens.shape[0], batch_size):
        result = readout(model, {"lens": lens}, tokens[start : start + batch_size],
                         rows=range(n_layers), stats=("kl",), top_k=0, memory_budget=budget)  # fmt: skip
        totals += result["lens"]["kl"].double().sum((0, 2))
    return totals / tokens.numel()


__all__ = [
    "DEFAULT_STATS",
    "STAT_NAMES",
    "LensReadout",
    "Readout",
    "blocked_head",
    "divergences",
    "layer_kl",
    "name_lenses",
    "readout",
    "row_label",
]
