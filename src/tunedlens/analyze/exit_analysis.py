"""``early_exit``: stop a token at the first row whose lens reading is confident, measured honestly.

Teacher-forced: every position that has a next token is read at every row ``0..L`` by every lens
(the logit lens always among them) with the one readout engine, exactly over the full vocabulary.
From those readings each confidence measure (:mod:`tunedlens.analyze.exit_rules`) gives each
token an exit row for each threshold; the report gives, per lens x measure x threshold, the mean
rows used, the MACs per token and the compute saved net of every check and of the K/V
propagation of skipped blocks (:mod:`tunedlens.analyze.compute`), top-1 agreement with the model,
KL(model ‖ exit distribution) and the change in next-token cross-entropy (bits).

Beside each measure: the oracle (each token's prediction depth: the first row from which the
lens's top-1 equals the model's and stays), the upper bound of what that lens allows; and
thresholds certified on half of the sequences to keep agreement ``>= 1 - δ`` with confidence
``1 - ε`` (:mod:`tunedlens.analyze.calibrate`), measured on the other half.

Teacher forcing reads every position from the full model's states: an exit changes no other
token's context. :func:`tunedlens.analyze.exit_generate.generate_with_exit` measures the real
thing (copied states written into the cache of skipped blocks) during greedy decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tunedlens.analyze.calibrate import Bound, certify, resolve_bound
from tunedlens.analyze.compute import ComputeModel, compute_model, lens_macs
from tunedlens.analyze.errors import AnalysisError
from tunedlens.analyze.exit_rules import (
    MEASURE_NAMES,
    MEASURES,
    calibration_grid,
    check_costs,
    check_schedule,
    exit_rows,
    patience_values,
    token_costs,
)
from tunedlens.arch.residuals import collect_residuals, token_ids
from tunedlens.engine.core import DEFAULT_BUDGET, divergences, name_lenses, readout
from tunedlens.lenses.lens import Lens, LogitLens
from tunedlens.metrics.divergence import NATS_TO_BITS

BASELINE = "logit"
EXIT_STATS = ("entropy", "max-prob", "kl", "ce")


def check_early_exit_args(
    input_ids=None,
    *,
    measures: Sequence[str] = MEASURE_NAMES,
    thresholds: Mapping[str, Sequence[float]] | None = None,
    check_every: int = 1,
    check_rows: Sequence[int] | None = None,
    deltas: Sequence[float] = (0.05, 0.10),
    epsilon: float = 0.05,
    bound: Bound = "auto",
    generate: int = 0,
    tokenizer=None,
    prompts: Sequence[str] | None = None,
    n_prompts: int = 4,
    prompt_tokens: int = 16,
    batch_size: int = 1,
) -> tuple[tuple[str, ...], dict[str, list[float]]]:
    """Refuse bad arguments of :func:`early_exit` before any model work (one clear error).

    Returns:
        The measures, and each one's thresholds (given, else its default sweep), as floats.

    Raises:
        AnalysisError: the first thing wrong.
    """
    measures = (measures,) if isinstance(measures, str) else tuple(measures)
    if not measures:
        raise AnalysisError(f"no measures selected; choose from {', '.join(MEASURE_NAMES)}")
    for name in measures:
        if name not in MEASURES:
            raise AnalysisError(f"unknown measure {name!r}; choose from {', '.join(MEASURE_NAMES)}")
    thresholds = dict(thresholds or {})
    for name in thresholds:
        if name not in measures:
            raise AnalysisError(
                f"thresholds are given for {name!r}, which is not among the measures {list(measures)}"
            )
    swept = {}
    for name in measures:
        values = thresholds.get(name, MEASURES[name].sweep)
        values = [values] if isinstance(values, (int, float)) else list(values)
        if not values:
            raise AnalysisError(f"the thresholds of {name} are empty; give at least one")
        swept[name] = [MEASURES[name].check(value) for value in values]
    _positive_int(check_every, "check_every", "check every k-th row (1: every row)")
    if check_rows is not None:
        rows = list(check_rows)
        if not rows or any(
            isinstance(r, bool) or not isinstance(r, (int, np.integer)) for r in rows
        ):
            raise AnalysisError(
                f"check_rows must be a non-empty list of row numbers, got {check_rows!r}"
            )
        if any(r < 0 for r in rows):
            raise AnalysisError(f"check_rows must be rows 0..L-1, got {sorted(rows)}")
    for delta in deltas:
        if not 0 < float(delta) < 1:
            raise AnalysisError(f"each δ (allowed disagreement) must lie in (0, 1), got {delta!r}")
    if not 0 < float(epsilon) < 1:
        raise AnalysisError(
            f"ε (allowed probability of a wrong certificate) must lie in (0, 1), got {epsilon!r}"
        )
    resolve_bound(bound)
    _positive_int(batch_size, "batch_size", "sequences per forward pass")
    if isinstance(generate, bool) or not isinstance(generate, int) or generate < 0:
        raise AnalysisError(
            f"generate must be the number of new tokens per prompt (0: none), got {generate!r}"
        )
    if generate:
        if tokenizer is None:
            raise AnalysisError(
                "generate needs the model's tokenizer (to encode prompts and show the texts); "
                "pass tokenizer=... or generate=0"
            )
        if prompts is not None and (
            isinstance(prompts, str) or not all(isinstance(p, str) and p for p in prompts)
        ):
            raise AnalysisError("prompts must be a list of non-empty strings")
        _positive_int(n_prompts, "n_prompts", "prompts to generate from")
        _positive_int(prompt_tokens, "prompt_tokens", "tokens of each prompt taken from the data")
    if input_ids is not None:
        ids = _as_sequences(input_ids)
        if ids.shape[1] < 2 or ids.shape[0] < 1:
            raise AnalysisError(
                f"the data is shorter than one sequence of two tokens (got shape {tuple(ids.shape)}); "
                "pass (n_sequences, seq_len >= 2) token ids"
            )
        if generate and prompts is None and ids.shape[1] <= prompt_tokens:
            raise AnalysisError(
                f"prompts are the first {prompt_tokens} tokens of each sequence, but the sequences "
                f"are {ids.shape[1]} long; lower prompt_tokens or pass prompts"
            )
    return measures, swept


def _positive_int(value, name: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise AnalysisError(f"{name} must be a positive integer ({what}), got {value!r}")


def _as_sequences(input_ids) -> torch.Tensor:
    ids = token_ids(input_ids)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2:
        raise AnalysisError(
            f"input_ids must be (n_sequences, seq_len), got shape {tuple(ids.shape)}"
        )
    return ids


@dataclass
class LensTable:
    """One lens's readings of every token at every row ``0..L`` (numpy, ``(tokens, L + 1)``)."""

    kind: str
    source: str
    top1: np.ndarray
    max_prob: np.ndarray
    margin: np.ndarray
    entropy_bits: np.ndarray
    kl_bits: np.ndarray
    """KL(model ‖ lens row)."""
    ce_bits: np.ndarray
    step_kl_bits: np.ndarray
    """``(tokens, L)``: KL(row r ‖ row r-1); NaN at row 0."""
    decode: np.ndarray
    """``(L + 1,)`` MACs of one reading of each row: the head plus the lens's map."""


@dataclass
class ExitTable:
    """Every measurement early exit needs, per token: what :func:`exit_table` returns."""

    model: str
    model_type: str | None
    n_blocks: int
    compute: ComputeModel
    context: np.ndarray
    """``(tokens,)`` keys each token attends to (its position + 1)."""
    calibration: np.ndarray
    """``(tokens,)`` True for calibration tokens, False for test tokens."""
    split: str
    model_top1: np.ndarray
    model_ce_bits: np.ndarray
    saturation: np.ndarray
    """``(tokens, L)``: cosine of the residual states of rows r and r-1; NaN at row 0."""
    lenses: dict[str, LensTable]
    sequences: int
    seq_len: int
    elapsed_s: float = 0.0

    @property
    def n_tokens(self) -> int:
        """Tokens measured (positions with a next token)."""
        return len(self.context)

    def values(self, name: str, measure: str, schedule: np.ndarray) -> np.ndarray:
        """``(tokens, L)``: the measure at each row below the output row (NaN where undefined)."""
        lens, n = self.lenses[name], self.n_blocks
        if measure == "max-prob":
            return lens.max_prob[:, :n]
        if measure == "margin":
            return lens.margin[:, :n]
        if measure == "entropy":
            return lens.entropy_bits[:, :n]
        if measure == "step-kl":
            return lens.step_kl_bits
        if measure == "saturation":
            return self.saturation
        if measure == "patience":
            return patience_values(lens.top1, schedule)
        raise AnalysisError(f"unknown measure {measure!r}")


def exit_table(
    model: nn.Module,
    lenses: Lens | Sequence[Lens] | Mapping[str, Lens] | None,
    input_ids,
    *,
    batch_size: int = 1,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Callable[[int, int], None] | None = None,
    model_name: str | None = None,
) -> ExitTable:
    """Read every token at every row with every lens (the logit lens included): the costly part.

    Args:
        model: The causal LM.
        lenses: Lenses of ``model`` reading block points; the logit lens is added as ``"logit"``.
        input_ids: ``(n_sequences, seq_len)`` token ids; every position but the last of each
            sequence is measured (it needs a next token).
        batch_size: Sequences per forward pass.
        memory_budget: Bytes for vocabulary-sized work tensors.
        progress: Called with ``(sequences_done, sequences)``.
        model_name: Recorded in the report.
    """
    ids = _as_sequences(input_ids)
    named = name_lenses(lenses)
    if BASELINE in named:
        raise AnalysisError(f"the lens name {BASELINE!r} is reserved for the logit-lens baseline")
    all_lenses = {BASELINE: LogitLens(model), **named}
    for name, lens in all_lenses.items():
        if lens.points != "block":
            raise AnalysisError(
                f"lens {name!r} reads {lens.points} points; early exit reads block inputs (a token "
                "exits between blocks): use a lens trained on block points"
            )
    compute = compute_model(model)
    n_blocks = compute.n_blocks
    decode = {
        name: np.array(
            [compute.head + lens_macs(lens, row) for row in range(n_blocks + 1)], dtype=np.float64
        )
        for name, lens in all_lenses.items()
    }
    parts: dict[str, list] = {name: [] for name in all_lenses}
    saturation, model_top1, model_ce = [], [], []
    started = time.perf_counter()
    n_sequences, seq_len = ids.shape
    for first in range(0, n_sequences, batch_size):
        batch = ids[first : first + batch_size]
        residuals = collect_residuals(
            model, batch.to(next(model.parameters()).device), with_logits=False
        )
        result = readout(
            model,
            all_lenses,
            batch,
            states=residuals,
            stats=EXIT_STATS,
            top_k=2,
            keep_inputs=True,
            memory_budget=memory_budget,
        )
        keep = result.targets >= 0  # (b, positions): every position but the last
        saturation.append(_saturation(residuals.hidden, keep))
        later = result.take(rows=list(range(1, n_blocks))) if n_blocks > 1 else None
        earlier = result.take(rows=list(range(n_blocks - 1))) if n_blocks > 1 else None
        for name in all_lenses:
            parts[name].append(_lens_part(result[name], later, earlier, name, keep, n_blocks))
        base = parts[BASELINE][-1]
        model_top1.append(base["top1"][:, n_blocks])
        model_ce.append(base["ce_bits"][:, n_blocks])
        if progress is not None:
            progress(min(first + batch_size, n_sequences), n_sequences)
    tables = {}
    for name, lens in all_lenses.items():
        joined = {
            key: np.concatenate([part[key] for part in parts[name]]) for key in parts[name][0]
        }
        tables[name] = LensTable(
            kind=lens.kind, source=lens.source or name, decode=decode[name], **joined
        )
    positions = np.tile(np.arange(seq_len - 1), n_sequences)
    sequence = np.repeat(np.arange(n_sequences), seq_len - 1)
    if n_sequences >= 2:
        calibration, split = (
            sequence % 2 == 0,
            "sequences: even-numbered calibrate, odd-numbered test",
        )
    else:
        calibration = positions < (seq_len - 1) // 2
        split = "positions: the first half of the one sequence calibrates, the second half tests"
    config = model.config
    return ExitTable(
        model=model_name or getattr(config, "name_or_path", "") or type(model).__name__,
        model_type=getattr(config, "model_type", None),
        n_blocks=n_blocks,
        compute=compute,
        context=positions + 1,
        calibration=calibration,
        split=split,
        model_top1=np.concatenate(model_top1),
        model_ce_bits=np.concatenate(model_ce),
        saturation=np.concatenate(saturation),
        lenses=tables,
        sequences=n_sequences,
        seq_len=seq_len,
        elapsed_s=time.perf_counter() - started,
    )


def _cells(grid: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    """``(b, rows, positions, ...)`` -> ``(kept tokens, rows, ...)`` as numpy, sequence-major."""
    moved = grid.transpose(1, 2)[keep]
    return moved.numpy()


def _lens_part(grids, later, earlier, name: str, keep: torch.Tensor, n_blocks: int) -> dict:
    probs = grids.top_probs.double()
    step_kl = np.full((int(keep.sum()), n_blocks), np.nan)
    if later is not None:  # KL(row r ‖ row r-1) for r = 1..L-1, (b, L-1, positions)
        step = divergences(later, earlier, lens=name)["kl"].double() * NATS_TO_BITS
        step_kl[:, 1:] = _cells(step, keep)
    return {
        "top1": _cells(grids.top_ids[..., 0], keep),
        "max_prob": _cells(probs[..., 0], keep),
        "margin": _cells(probs[..., 0] - probs[..., 1], keep),
        "entropy_bits": _cells(grids["entropy"].double() * NATS_TO_BITS, keep),
        "kl_bits": _cells(grids["kl"].double() * NATS_TO_BITS, keep),
        "ce_bits": _cells(grids["ce"].double() * NATS_TO_BITS, keep),
        "step_kl_bits": step_kl,
    }


def _saturation(hidden, keep: torch.Tensor) -> np.ndarray:
    """``(kept tokens, L)`` cosine of consecutive rows' residual states (row 0: NaN)."""
    n_blocks = len(hidden) - 1
    out = np.full((int(keep.sum()), n_blocks), np.nan)
    for row in range(1, n_blocks):
        cosine = torch.nn.functional.cosine_similarity(
            hidden[row].double(), hidden[row - 1].double(), dim=-1
        )
        out[:, row] = cosine.cpu()[keep].numpy()
    return out


@dataclass
class EarlyExitReport:
    """What :func:`early_exit` measured; :meth:`to_dict` is the ``early_exit.json`` payload."""

    metrics: dict
    table: ExitTable | None = field(default=None, repr=False)
    """The per-token measurements (for other schedules: :func:`summarise_exit`)."""

    def to_dict(self) -> dict:
        """The ``early_exit.json`` payload (JSON-ready; bits, MACs, shares)."""
        return self.metrics

    def summary(self) -> str:
        """The oracle and the certified thresholds per lens (plain text, 80 columns)."""
        from tunedlens.analyze.exit_report import summary_text

        return summary_text(self.metrics)

    def save(self, out, *, plots: bool = True, force: bool = False) -> list[Path]:
        """Write ``early_exit.json``, ``early_exit.md``, CSV sidecars and (optionally) figures.

        Raises:
            OutputError: ``out`` already holds files and ``force`` is False, or holds files
                an early-exit report does not write.
        """
        from tunedlens.analyze.exit_report import save_early_exit

        return save_early_exit(self.metrics, out, plots=plots, force=force)


def _outcome(
    table: ExitTable,
    name: str,
    rows: np.ndarray,
    cost: np.ndarray,
    full: np.ndarray,
    select: np.ndarray | None = None,
) -> dict:
    """Means over the tokens ``select`` (default all) of exiting at ``rows`` with ``cost``."""
    lens = table.lenses[name]
    tokens = np.arange(len(rows)) if select is None else np.flatnonzero(select)
    at = rows[tokens]
    agree = lens.top1[tokens, at] == table.model_top1[tokens]
    return {
        "rows_used": float(at.mean()),
        "exited": float((at < table.n_blocks).mean()),
        "macs": float(cost[tokens].mean()),
        "saved": float(1 - cost[tokens].sum() / full[tokens].sum()),
        "agreement": float(agree.mean()),
        "kl_bits": float(lens.kl_bits[tokens, at].mean()),
        "delta_ce_bits": float((lens.ce_bits[tokens, at] - table.model_ce_bits[tokens]).mean()),
    }


def _oracle(
    table: ExitTable, name: str, schedule: np.ndarray, cumulative, propagation, full
) -> dict:
    lens, n = table.lenses[name], table.n_blocks
    agree = lens.top1 == table.model_top1[:, None]
    agree[:, n] = True
    stays = np.flip(np.cumprod(np.flip(agree, 1), 1), 1).astype(bool)
    depth = stays.argmax(1)
    out = {}
    for key, rows in (("oracle", depth), ("oracle_on_schedule", _next_check(depth, schedule, n))):
        tokens = np.arange(len(rows))
        final = np.where(rows == n, table.compute.head, lens.decode[rows])
        cost = cumulative[tokens, rows] + propagation[rows] + final
        out[key] = _outcome(table, name, rows, cost, full)
    out["oracle"]["histogram"] = np.bincount(depth, minlength=n + 1).tolist()
    return out


def _next_check(depth: np.ndarray, schedule: np.ndarray, n_blocks: int) -> np.ndarray:
    """The first check row at or after each depth (``L`` if none)."""
    if len(schedule) == 0:
        return np.full_like(depth, n_blocks)
    index = np.searchsorted(schedule, depth)
    return np.where(index < len(schedule), schedule[np.minimum(index, len(schedule) - 1)], n_blocks)


def summarise_exit(
    table: ExitTable,
    *,
    measures: Sequence[str] = MEASURE_NAMES,
    thresholds: Mapping[str, Sequence[float]] | None = None,
    check_every: int = 1,
    check_rows: Sequence[int] | None = None,
    deltas: Sequence[float] = (0.05, 0.10),
    epsilon: float = 0.05,
    bound: Bound = "auto",
) -> EarlyExitReport:
    """The report of one check schedule from measurements already taken (cheap: no model).

    See :func:`early_exit` for the arguments.
    """
    measures, swept = check_early_exit_args(
        measures=measures,
        thresholds=thresholds,
        check_every=check_every,
        check_rows=check_rows,
        deltas=deltas,
        epsilon=epsilon,
        bound=bound,
    )
    method = resolve_bound(bound)
    n = table.n_blocks
    schedule = check_schedule(n, check_every, check_rows)
    compute = table.compute
    cumulative = compute.cumulative(table.context)
    propagation = compute.propagation()
    full = compute.full(table.context)
    lenses, calibration, histograms = {}, {}, {}
    cal, test = table.calibration, ~table.calibration
    for name, lens in table.lenses.items():
        entry = {
            "kind": lens.kind,
            "source": lens.source,
            "decode_macs": lens.decode.tolist(),
            **_oracle(table, name, schedule, cumulative, propagation, full),
            "measures": {},
        }
        histograms[name] = {"oracle": entry["oracle"].pop("histogram")}
        calibration[name] = {}
        for measure_name in measures:
            measure = MEASURES[measure_name]
            values = table.values(name, measure_name, schedule)
            checks = check_costs(measure, schedule, lens.decode)

            def run(threshold, measure=measure, values=values, checks=checks, lens=lens):
                rows = exit_rows(values, measure, threshold, schedule)
                cost = token_costs(
                    rows, cumulative, propagation, checks, lens.decode, compute.head, measure
                )
                return rows, cost

            sweep = {"thresholds": swept[measure_name]}
            for threshold in swept[measure_name]:
                rows, cost = run(threshold)
                for key, value in _outcome(table, name, rows, cost, full).items():
                    sweep.setdefault(key, []).append(value)
            entry["measures"][measure_name] = sweep
            calibration[name][measure_name], hist = _calibrate(
                table, name, measure, run, len(schedule), full, cal, test, deltas, epsilon, method
            )
            if hist is not None:
                histograms[name][measure_name] = hist
        lenses[name] = entry
    metrics = {
        "schema": "tunedlens.early_exit/1",
        "model": table.model,
        "model_type": table.model_type,
        "n_blocks": n,
        "output_row": n,
        "vocab_size": compute.vocab_size,
        "tokens": table.n_tokens,
        "sequences": table.sequences,
        "seq_len": table.seq_len,
        "check_every": None if check_rows is not None else int(check_every),
        "check_rows": schedule.tolist(),
        "measures": {
            m: {
                "title": MEASURES[m].title,
                "units": MEASURES[m].units,
                "exit_when": MEASURES[m].direction,
            }
            for m in measures
        },
        "compute": {**compute.to_dict(), "full_macs_per_token": float(full.mean())},
        "baseline": {"ce_bits": float(table.model_ce_bits.mean())},
        "lenses": lenses,
        "calibration": {
            "bound": method,
            "epsilon": float(epsilon),
            "deltas": [float(d) for d in deltas],
            "split": table.split,
            "calibration_tokens": int(cal.sum()),
            "test_tokens": int(test.sum()),
            "procedure": "fixed-sequence testing over a fixed grid, most conservative first; the "
            "cheapest certified threshold on the calibration tokens, measured on the test tokens",
            "results": calibration,
        },
        "histograms": {"delta": float(max(deltas)), "lenses": histograms},
        "assumptions": [
            "teacher-forced: every token is read from the full model's states, so an exit does "
            "not change later tokens' contexts (generation measures that)",
            "exit at row r: blocks 0..r-1 run; blocks r..L-1 compute only the K/V projections "
            "of the copied state (CALM's propagation), counted",
            "checks at rows of the schedule only; every check is counted whether it exits or not",
            "saved = 1 - total MACs / total MACs of the full model (every block, then the head)",
            "the binomial bound treats calibration tokens as independent; tokens of one sequence "
            "are not, so certificates can be optimistic: test tokens come from other sequences "
            "and the report says whether each certificate held on them",
        ],
        "elapsed_s": table.elapsed_s,
    }
    return EarlyExitReport(metrics, table)


def _calibrate(table, name, measure, run, n_checks, full, cal, test, deltas, epsilon, method):
    """Per δ: the certified threshold, its bound, and its outcome on the test tokens."""
    grid = calibration_grid(measure, n_checks)
    lens = table.lenses[name]
    n_cal = int(cal.sum())
    disagree, costs, outcomes = [], [], []
    for threshold in grid:
        rows, cost = run(float(threshold))
        wrong = lens.top1[cal, rows[cal]] != table.model_top1[cal]
        disagree.append(int(wrong.sum()))
        costs.append(float(cost[cal].mean()))
        outcomes.append((rows, cost))
    disagree, costs = np.array(disagree), np.array(costs)
    results, histogram = {}, None
    for delta in deltas:
        chosen = certify(disagree, n_cal, costs, float(delta), epsilon, method)
        index = chosen["index"]
        result = {
            "certified": index is not None,
            "upper_bound": chosen["upper_bound"],
            "candidates_passed": chosen["passed"],
            "candidates": len(grid),
        }
        if index is not None:
            rows, cost = outcomes[index]
            test_outcome = _outcome(table, name, rows, cost, full, test)
            result.update(
                threshold=float(grid[index]),
                calibration_agreement=1 - disagree[index] / max(n_cal, 1),
                calibration_saved=float(1 - cost[cal].sum() / full[cal].sum()),
                test=test_outcome,
                test_holds=test_outcome["agreement"] >= 1 - float(delta),
            )
            if delta == max(deltas):
                histogram = np.bincount(rows, minlength=table.n_blocks + 1).tolist()
        results[f"{float(delta):g}"] = result
    return results, histogram


def early_exit(
    model: nn.Module,
    lenses: Lens | Sequence[Lens] | Mapping[str, Lens] | None,
    input_ids,
    *,
    measures: Sequence[str] = MEASURE_NAMES,
    thresholds: Mapping[str, Sequence[float]] | None = None,
    check_every: int = 1,
    check_rows: Sequence[int] | None = None,
    deltas: Sequence[float] = (0.05, 0.10),
    epsilon: float = 0.05,
    bound: Bound = "auto",
    generate: int = 0,
    tokenizer=None,
    prompts: Sequence[str] | None = None,
    n_prompts: int = 4,
    prompt_tokens: int = 16,
    generate_delta: float | None = None,
    batch_size: int = 1,
    memory_budget: int = DEFAULT_BUDGET,
    progress: Callable[[int, int], None] | None = None,
    model_name: str | None = None,
) -> EarlyExitReport:
    """How much compute early exit through each lens saves, and at what cost in quality.

    Args:
        model: The causal LM.
        lenses: Lenses of ``model`` (one, a list, or name -> lens); the logit lens is always
            added as ``"logit"``.
        input_ids: ``(n_sequences, seq_len)`` token ids (e.g. ``pack_blocks(...).tokens``).
        measures: Confidence measures from :data:`~tunedlens.analyze.exit_rules.MEASURES`.
        thresholds: Per measure, the thresholds of the sweep (default: each measure's own).
        check_every: Check every ``k``-th row from row 0 (1: every row).
        check_rows: Check only at these rows (overrides ``check_every``).
        deltas: Allowed disagreement rates to certify thresholds for.
        epsilon: Allowed probability that a certificate is wrong.
        bound: ``auto`` (Clopper–Pearson with scipy, else Hoeffding), ``clopper-pearson`` or
            ``hoeffding``.
        generate: New tokens per prompt for real early-exit generation (0: none), with each
            lens x measure at its threshold certified for ``generate_delta``.
        tokenizer: The model's tokenizer (needed with ``generate``).
        prompts: Texts to continue; default the first ``prompt_tokens`` tokens of up to
            ``n_prompts`` test sequences.
        n_prompts: Prompts taken from the data when ``prompts`` is not given.
        prompt_tokens: Length of those prompts.
        generate_delta: The δ whose certified thresholds generate (default the largest).
        batch_size: Sequences per forward pass.
        memory_budget: Bytes for vocabulary-sized work tensors.
        progress: Called with ``(sequences_done, sequences)``.
        model_name: Recorded in the report.

    Returns:
        An :class:`EarlyExitReport`.

    Raises:
        AnalysisError: bad arguments (before the model runs).
        LensMismatch: a lens belongs to another model.
    """
    check_early_exit_args(
        input_ids,
        measures=measures,
        thresholds=thresholds,
        check_every=check_every,
        check_rows=check_rows,
        deltas=deltas,
        epsilon=epsilon,
        bound=bound,
        generate=generate,
        tokenizer=tokenizer,
        prompts=prompts,
        n_prompts=n_prompts,
        prompt_tokens=prompt_tokens,
        batch_size=batch_size,
    )
    if generate_delta is not None and generate_delta not in deltas:
        raise AnalysisError(
            f"generate_delta {generate_delta!r} must be one of deltas {list(deltas)}"
        )
    n_blocks = compute_model(model).n_blocks
    check_schedule(n_blocks, check_every, check_rows)  # rows beyond the model: before the readout
    table = exit_table(
        model,
        lenses,
        input_ids,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=progress,
        model_name=model_name,
    )
    report = summarise_exit(
        table,
        measures=measures,
        thresholds=thresholds,
        check_every=check_every,
        check_rows=check_rows,
        deltas=deltas,
        epsilon=epsilon,
        bound=bound,
    )
    if generate:
        from tunedlens.analyze.exit_generate import compare_generation

        named = {BASELINE: LogitLens(model), **name_lenses(lenses)}
        ids = _as_sequences(input_ids)
        if prompts is None:
            test_rows = list(range(1, ids.shape[0], 2)) or [0]
            prompt_ids = [ids[i, :prompt_tokens] for i in test_rows[:n_prompts]]
        else:
            prompt_ids = [
                token_ids(tokenizer(text, return_tensors="pt").input_ids[0]) for text in prompts
            ]
        report.metrics["generation"] = compare_generation(
            model,
            named,
            report.metrics,
            prompt_ids,
            generate,
            tokenizer=tokenizer,
            delta=generate_delta if generate_delta is not None else max(deltas),
            measures=measures,
        )
    return report


__all__ = [
    "EXIT_STATS",
    "EarlyExitReport",
    "ExitTable",
    "LensTable",
    "check_early_exit_args",
    "early_exit",
    "exit_table",
    "summarise_exit",
]
