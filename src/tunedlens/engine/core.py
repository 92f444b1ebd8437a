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

import torch
from torch import nn

from tunedlens.arch.residuals import Residuals
from tunedlens.engine.kernel import BlockedHead, Extras, FinalChunk, head_input
from tunedlens.engine.plan import check_rows, make_plan
from tunedlens.engine.result import Grids, LensReadout, Readout, Row
from tunedlens.engine.stats import PAIR_STATS, STAT_NAMES, Stat, check_stats
from tunedlens.errors import InputError, InputTypeError, LensMismatch
from tunedlens.lenses.lens import Lens, LogitLens
from tunedlens.lenses.unembed import Unembed

DEFAULT_STATS: tuple[Stat, ...] = ("entropy", "kl", "ce", "max-prob", "rank", "prob")
DEFAULT_BUDGET = 512 * 2**20
"""Bytes for vocabulary-sized work tensors (sets the positions per chunk)."""


def name_lenses(lenses: Lens | Sequence[Lens] | Mapping[str, Lens] | None) -> dict[str, Lens]:
    """Give every lens a unique name: mapping keys, or each lens's kind (``tuned``, ``tuned-1``)."""
    if lenses is None:
        return {}
    if isinstance(lenses, Lens):
        lenses = [lenses]
    if isinstance(lenses, (str, bytes)) or not isinstance(lenses, (Mapping, Sequence)):
        raise InputTypeError(
            f"lenses must be a Lens, a list of lenses or a name -> lens mapping, got "
            f"{type(lenses).__name__} (load a lens location with load_lens(location, model))"
        )
    if isinstance(lenses, Mapping):
        named = dict(lenses)
    else:
        named = {}
        for lens in lenses:
            if not isinstance(lens, Lens):
                raise InputTypeError(f"{lens!r} is a {type(lens).__name__}, not a tunedlens Lens")
            name, index = lens.kind, 0
            while name in named:
                index += 1
                name = f"{lens.kind}-{index}"
            named[name] = lens
    for name, lens in named.items():
        if not isinstance(lens, Lens):
            raise InputTypeError(f"lens {name!r} is a {type(lens).__name__}, not a tunedlens Lens")
    return named


def blocked_head(unembed: Unembed, *, cosine: bool) -> BlockedHead:
    """The blocked head of ``unembed``'s unembedding.

    Its float64 moments (for the cosine) are computed once per model: see
    :func:`~tunedlens.engine.kernel.weight_moments`.
    """
    return BlockedHead(unembed, cosine=cosine)


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
        stats: Names from :data:`tunedlens.engine.stats.STATS`.
        top_k: Most likely tokens per cell (0: none).
        tokens: Tokens whose probability and rank are wanted in every cell: ``(m,)``, per
            sequence ``(batch, m)``, or per position ``(batch, seq, m)``.
        targets: ``(batch, seq)`` token each position's ``ce``, ``rank`` and ``prob`` refer to
            (``-1``: none); default the next token.
        logprobs: Also return full ``(batch, rows, positions, vocab)`` log-probabilities.
        keep_inputs: Keep the head inputs, for :func:`divergences` between two readouts.
        memory_budget: Bytes for vocabulary-sized work tensors.

    Returns:
        A :class:`Readout`. Its tensors hold entropy, KL and cross-entropy in **nats** (the
        natural unit of the math; ``Readout.units`` names each statistic's unit); views and
        reports show bits. ``result.to_frame()`` (pandas) or ``result.to_rows()`` give one row
        per lens, row and position with bits in columns named ``kl_bits``, ``entropy_bits``, ...

    Raises:
        LensMismatch: a lens decodes with another model's head.
        ValueError, IndexError: bad rows, positions, statistics or shapes (before any work).
    """
    stats = check_stats(stats)
    if model is None and not lenses:
        raise InputError("pass the lenses to read when no model is given")
    named = name_lenses(lenses) or {"logit": LogitLens(model)}
    first = next(iter(named.values()))
    if model is None and states is None:
        raise InputError("pass the model (or states to read without running it)")
    head_module = first.unembed.unembedding if model is None else model.get_output_embeddings()
    for name, lens in named.items():
        if lens.unembed.unembedding is not head_module:
            raise LensMismatch(
                f"lens {name!r} decodes with another model's head; load it for this model "
                "(load_lens(location, model))."
            )
    points = {lens.points for lens in named.values()}
    if len(points) > 1:
        raise InputError(
            "the lenses read different points of the blocks ("
            + ", ".join(f"{name}: {lens.points}" for name, lens in named.items())
            + "); read lenses of one kind of point together (a logit lens reads any: "
            "LogitLens(model, points=...))."
        )
    output_row = first.output_row
    rows = check_rows(rows, output_row)
    if top_k < 0:
        raise InputError(f"top_k must be >= 0, got {top_k}")
    plan = make_plan(model, first, input_ids, states, attention_mask, positions, targets, tokens)
    unembed = Unembed.from_arch(first.unembed.arch)
    head = blocked_head(unembed, cosine="cos" in stats)
    needs_final = bool({"kl", "cos", "model-rank"} & set(stats))
    top_k = min(top_k, head.vocab_size)
    grids = {
        name: Grids.empty(plan, len(rows), stats, top_k, head, logprobs, keep_inputs)
        for name in named
    }
    model_stats = {k: torch.full(plan.shape, torch.nan) for k in ("entropy", "ce")}
    cells = plan.cells()
    chunk = chunk_positions(head.vocab_size, memory_budget)
    device = head.weight.device
    for part in torch.split(torch.arange(cells.shape[0]), chunk):
        where = cells[part]
        states_at = [state[where[:, 0], where[:, 1]] for state in plan.states]
        targets_at = plan.targets[where[:, 0], where[:, 1]].to(device)
        # The model's own distribution: its float32 head on the last block's output (skipped
        # when no requested statistic compares with it: then the model's own stats are NaN).
        if not needs_final:
            final = FinalChunk.light(targets_at, head.weight.shape[1])
        else:
            final = head.final(unembed.head_input(states_at[output_row]), targets_at)
            model_stats["entropy"][where[:, 0], where[:, 2]] = final.entropy.float().cpu()
            model_stats["ce"][where[:, 0], where[:, 2]] = (
                torch.where(targets_at >= 0, final.cross_entropy, torch.nan).float().cpu()
            )
        extra_tokens = (
            None if plan.tokens is None else plan.tokens[where[:, 0], where[:, 1]].T.to(device)
        )
        # Few positions (prompts): several rows share one pass over the unembedding, which is
        # read once per pass; many positions (evaluation): one row at a time.
        group = max(1, chunk // len(part))
        for name, lens in named.items():
            for first_row in range(0, len(rows), group):
                _read_rows(
                    head,
                    lens,
                    grids[name],
                    rows[first_row : first_row + group],
                    first_row,
                    states_at,
                    where,
                    final,
                    extra_tokens,
                    stats,
                    top_k,
                    logprobs,
                )
    return Readout(
        rows=rows,
        input_ids=plan.input_ids,
        positions=plan.positions,
        targets=plan.targets_grid,
        model=model_stats,
        lenses={name: grids[name].finish(name, lens) for name, lens in named.items()},
        n_blocks=first.n_blocks,
        head=head,
        points=first.points,
    )


def _read_rows(
    head: BlockedHead,
    lens: Lens,
    grids: Grids,
    rows: list[Row],
    first_row: int,
    states_at,
    where,
    final: FinalChunk,
    tokens,
    stats,
    top_k: int,
    logprobs: bool,
) -> None:
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
        scale = torch.tensor(
            scales, dtype=torch.float64, device=head.weight.device
        ).repeat_interleave(n)
    buffer = (
        torch.empty(n * times, head.vocab_size, device=head.weight.device) if logprobs else None
    )
    extras = Extras(
        tokens=None if tokens is None else tokens.clamp_min(0).repeat(1, times),
        rank_model="model-rank" in stats,
        rank_target="rank" in stats,
        top_k=top_k,
        need_target=bool({"ce", "prob"} & set(stats)),
        logprobs=buffer,
    )
    joined = inputs[0] if times == 1 else torch.cat(inputs)
    result = head.stats(joined, final.repeat(times, with_probs=not head.linear), scale, extras)
    has_target = final.next_ids.cpu() >= 0
    for index in range(times):
        part = slice(index * n, (index + 1) * n)
        values = {key: value[part] for key, value in result.items()}
        grids.write(
            first_row + index,
            where,
            values,
            has_target,
            inputs[index],
            scales[index],
            None if buffer is None else buffer[part],
            tokens,
        )


def divergences(
    first: Readout, second: Readout, lens: str | None = None, other_lens: str | None = None
) -> dict[str, torch.Tensor]:
    """Jensen–Shannon, KL(first ‖ second) and total variation per cell of two readouts (nats).

    Both readouts need ``keep_inputs=True`` and the same grid shape: two prompts of equal token
    length through one lens, or two lenses on one prompt.

    Returns:
        ``{"js", "kl", "tv"}`` float32 grids ``(batch, rows, positions)`` (see ``PAIR_STATS``).
    """
    a = first[lens or next(iter(first.lenses))]
    b = second[other_lens or lens or next(iter(second.lenses))]
    if a.inputs is None or b.inputs is None:
        raise InputError("divergences need readouts made with keep_inputs=True")
    if a.inputs.shape != b.inputs.shape:
        raise InputError(
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
        result = head.divergences(
            a.inputs[:, row][cells].to(device),
            a.scales[row],
            b.inputs[:, row][cells].to(device),
            b.scales[row],
        )
        for name in PAIR_STATS:
            out[name][:, row][cells] = result[name].cpu()
    return out


def layer_kl(
    lens: Lens,
    model: nn.Module,
    tokens: torch.Tensor,
    *,
    batch_size: int = 8,
    chunk_rows: int = 1024,
) -> torch.Tensor:
    """Mean KL(output row ‖ lens) in nats for every layer ``0..L-1``, over every token.

    Training validation: one :func:`readout` per batch of sequences, KL only.

    Args:
        lens: The lens to evaluate.
        model: Its model.
        tokens: ``(n_sequences, seq_len)`` token ids.
        batch_size: Sequences per forward pass.
        chunk_rows: Positions per vocabulary-sized computation.

    Returns:
        ``(output_row,)`` float64 tensor of mean KL per row below the output row, in nats.
    """
    output_row = lens.output_row
    totals = torch.zeros(output_row, dtype=torch.float64)
    budget = chunk_rows * 3 * 4 * lens.unembed.vocab_size
    for start in range(0, tokens.shape[0], batch_size):
        result = readout(
            model,
            {"lens": lens},
            tokens[start : start + batch_size],
            rows=range(output_row),
            stats=("kl",),
            top_k=0,
            memory_budget=budget,
        )
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
]
