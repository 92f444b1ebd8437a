"""``evaluate``: exact per-layer metrics of lenses on token data, next to the logit lens."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from tunedlens.arch.points import row_label
from tunedlens.arch.residuals import token_ids
from tunedlens.engine.core import DEFAULT_BUDGET, name_lenses, readout
from tunedlens.errors import InputError, OutOfRange
from tunedlens.evaluation.accumulate import LayerAccumulator, to_bits
from tunedlens.lenses.io.load import align_points
from tunedlens.lenses.lens import Lens, LogitLens
from tunedlens.metrics.divergence import NATS_TO_BITS

BASELINE = "logit"
"""Name of the logit lens, always evaluated as the baseline."""


@dataclass
class EvalReport:
    """What :func:`evaluate` measured; :meth:`to_dict` is the ``metrics.json`` payload."""

    metrics: dict
    records: list[dict] = field(default_factory=list)
    """Prompt suite, one row per prompt x lens x layer x position."""
    next_token: list[dict] = field(default_factory=list)
    """Prompt suite, one row per prompt x lens x layer at the answer position."""

    def to_dict(self) -> dict:
        """The ``metrics.json`` payload."""
        return self.metrics

    def save(self, out, *, plots: bool = True, plotly: str = "directory") -> list:
        """Write ``metrics.json``, the CSV sidecars, ``summary.md`` and (optionally) plots.

        ``plotly``: how the HTML figures get plotly.js (see :mod:`tunedlens.plot.html`).
        """
        from tunedlens.evaluation.report import save_report

        return save_report(self, out, plots=plots, plotly=plotly)


EVAL_STATS = ("kl", "ce", "entropy", "model-rank", "max-prob", "cos")
"""What :func:`evaluate` asks the readout for, per lens, row and position."""


def _row_plan(output_row: int, layers: Sequence[int] | None) -> list[int]:
    rows = list(range(output_row + 1)) if layers is None else sorted(set(layers))
    bad = [row for row in rows if not 0 <= row <= output_row]
    if bad or not rows:
        raise OutOfRange(f"layers {bad or '(none)'} are outside 0..{output_row} or select nothing")
    return rows


def evaluate(
    model: nn.Module,
    lenses: Lens | Sequence[Lens] | Mapping[str, Lens] | None,
    tokens: torch.Tensor,
    *,
    tokenizer=None,
    prompts=None,
    layers: Sequence[int] | None = None,
    transfer: bool = False,
    batch_size: int = 1,
    memory_budget: int = DEFAULT_BUDGET,
    bootstrap: int = 1000,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    model_name: str | None = None,
) -> EvalReport:
    """Exact full-vocabulary metrics of each lens at each layer, with the logit lens as baseline.

    Args:
        model: The causal LM.
        lenses: Tuned lenses (one, a list, or a name -> lens mapping); the logit lens is always
            added as ``"logit"``.
        tokens: ``(n_sequences, seq_len)`` token ids (e.g. ``pack_blocks(...).tokens``).
        tokenizer: The model's tokenizer: needed for bits per byte and the prompt suite.
        prompts: A :class:`~tunedlens.evaluation.prompts.PromptSuite` for the KPIs and gates
            (``None``: skip them).
        layers: Layer rows to evaluate (``0..L``; ``L`` is the output row); default all.
        transfer: Also measure every tuned lens's translator ``i`` on layer ``j``'s states.
        batch_size: Sequences per forward pass.
        memory_budget: Bytes for vocabulary-sized work tensors; sets the positions per chunk.
        bootstrap: Resamples of whole sequences for the 95 % intervals of KL and CE (0: none).
        seed: Seeds the bootstrap.
        progress: Called with ``(tokens_done, tokens_total)`` after every batch.
        model_name: Recorded in the report (default: the model's ``name_or_path``).

    Returns:
        An :class:`EvalReport`. Row ``i < L`` is ``hidden_states[i]``; row ``L`` decodes the last
        block's output, i.e. the model's own logits for lenses that use the model's head.

    Raises:
        LensMismatch: a lens belongs to another model.
        ValueError: fewer than one sequence of two tokens.
    """
    tokens = token_ids(tokens, "tokens")
    if tokens.dim() != 2 or tokens.shape[1] < 2 or tokens.shape[0] < 1:
        raise InputError(
            f"tokens must be (n_sequences >= 1, seq_len >= 2), got {tuple(tokens.shape)}"
        )
    named = name_lenses(lenses)
    if BASELINE in named:
        raise InputError(f"the lens name {BASELINE!r} is reserved for the logit-lens baseline")
    if batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    all_lenses = align_points(
        {BASELINE: LogitLens(model), **named}, model
    )  # mid lenses: mid baseline
    baseline = all_lenses[BASELINE]
    output_row = baseline.output_row
    rows = _row_plan(output_row, layers)
    n_sequences, seq_len = tokens.shape
    accumulators = {name: LayerAccumulator(len(rows), n_sequences) for name in all_lenses}
    model_acc = {k: torch.zeros(n_sequences, dtype=torch.float64) for k in ("ce", "entropy")}
    transfers = {
        name: torch.zeros(output_row, output_row, dtype=torch.float64)
        for name, lens in named.items()
        if transfer and not isinstance(lens, LogitLens)
    }
    started = time.perf_counter()
    for first in range(0, n_sequences, batch_size):
        ids = tokens[first : first + batch_size]
        sequence = torch.arange(first, first + ids.shape[0])[:, None].expand(ids.shape).flatten()
        result = readout(
            model,
            all_lenses,
            ids,
            rows=rows,
            stats=EVAL_STATS,
            top_k=0,
            memory_budget=memory_budget,
        )
        has_next = result.targets.flatten() >= 0
        model_acc["ce"].index_add_(
            0, sequence, result.model["ce"].flatten().nan_to_num(0.0).double()
        )
        model_acc["entropy"].index_add_(0, sequence, result.model["entropy"].flatten().double())
        for name in all_lenses:
            grids = result[name]
            for index in range(len(rows)):
                stats = {key: grids[key][:, index].flatten() for key in EVAL_STATS}
                accumulators[name].add(index, sequence, stats, has_next)
        for name, matrix in transfers.items():
            _add_transfer(matrix, model, all_lenses[name], ids, memory_budget)
        if progress is not None:
            progress(min(first + batch_size, n_sequences) * seq_len, n_sequences * seq_len)
    metrics = _summarise(
        model,
        all_lenses,
        rows,
        accumulators,
        model_acc,
        transfers,
        tokens,
        tokenizer,
        bootstrap=bootstrap,
        seed=seed,
        model_name=model_name,
    )
    metrics["elapsed_s"] = time.perf_counter() - started
    report = EvalReport(metrics)
    if prompts is not None:
        from tunedlens.evaluation.suite import run_suite

        run_suite(report, model, tokenizer, all_lenses, prompts)
    add_versus_logit(report.metrics)
    return report


TOP1_MARGIN = 0.01
"""Gate E: a lens is worse than the logit lens at a row where its top-1 agreement with the model
is lower by more than this (absolute; 0.01 = one percentage point)."""
KL_MARGIN = 0.05
"""Gate E: ... or where its KL to the model is higher by more than this share (0.05 = 5 %)."""


def versus_logit(metrics: dict, name: str) -> dict:
    """Gate E of lens ``name``: the rows where it reads the model worse than the logit lens.

    Compared on the evaluation tokens, row by row below the output row: top-1 agreement with the
    model (lower by more than :data:`TOP1_MARGIN`) and KL to the model (higher by more than
    :data:`KL_MARGIN` of the logit lens's). A lens trained on other text can beat the logit lens
    on average (gates A–D) and still lose at some depths; this names them.
    """
    lens, base = metrics["lenses"][name], metrics["lenses"][BASELINE]
    labels, output_row = metrics["row_labels"], metrics["output_row"]
    below = [i for i, row in enumerate(metrics["layers"]) if row != output_row]
    top1 = [i for i in below if lens["top1_agree"][i] < base["top1_agree"][i] - TOP1_MARGIN]
    kl = [i for i in below if lens["kl_bits"][i] > base["kl_bits"][i] * (1 + KL_MARGIN)]
    drops = {i: base["top1_agree"][i] - lens["top1_agree"][i] for i in below}
    worst = max(drops, key=drops.get) if drops else None
    return {
        "pass": not top1 and not kl,
        "rows_worse_top1": [labels[i] for i in top1],
        "rows_worse_kl": [labels[i] for i in kl],
        "largest_top1_drop": drops[worst] if worst is not None else 0.0,
        "at_row": labels[worst] if worst is not None else None,
        "top1_margin": TOP1_MARGIN,
        "kl_margin": KL_MARGIN,
    }


def add_versus_logit(metrics: dict) -> None:
    """Add gate E (:func:`versus_logit`) and a warning per failing lens to ``metrics``.

    Every lens but the baseline gets ``metrics["gates"][name]["E"]``; each that fails it, a line
    in ``metrics["warnings"]``.
    """
    gates = metrics.setdefault("gates", {})
    warnings = metrics.setdefault("warnings", [])
    for name in metrics["lenses"]:
        if name == BASELINE:
            continue
        gate = versus_logit(metrics, name)
        gates.setdefault(name, {})["E"] = gate
        if not gate["pass"]:
            warnings.append(worse_warning(name, gate))


def worse_warning(name: str, gate: dict) -> str:
    """The one-line warning of a lens that fails gate E."""
    parts = []
    for key, what in (("rows_worse_top1", "lower top-1 agreement"), ("rows_worse_kl", "higher KL")):
        labels = gate[key]
        if labels:
            parts.append(f"{what} at row{'s' if len(labels) > 1 else ''} {_rows(labels)}")
    return f"{name} is worse than the logit lens on these tokens: " + "; ".join(parts)


def _rows(labels: list[str]) -> str:
    """``0, 1, 2, 5`` -> ``0–2, 5`` (block labels; others listed as they are)."""
    runs: list[list[str]] = []
    for label in labels:
        if (
            runs
            and label.isdigit()
            and runs[-1][-1].isdigit()
            and int(label) == int(runs[-1][-1]) + 1
        ):
            runs[-1].append(label)
        else:
            runs.append([label])
    return ", ".join(run[0] if len(run) == 1 else f"{run[0]}–{run[-1]}" for run in runs)


def _add_transfer(matrix, model, lens, ids, memory_budget) -> None:
    """KL sums of translator ``i`` applied to layer ``j``'s states, into ``matrix[i, j]``."""
    n_rows = matrix.shape[0]
    pairs = [(target, source) for source in range(n_rows) for target in range(n_rows)]
    result = readout(
        model, {"lens": lens}, ids, rows=pairs, stats=("kl",), top_k=0, memory_budget=memory_budget
    )
    sums = result["lens"]["kl"].double().sum((0, 2))
    for (target, source), value in zip(pairs, sums.tolist(), strict=True):
        matrix[source, target] += value


def _bytes_per_sequence(tokens: torch.Tensor, tokenizer) -> torch.Tensor | None:
    """UTF-8 bytes of the text of the predicted tokens (positions 1..; special tokens are not text)."""
    if tokenizer is None:
        return None
    texts = tokenizer.batch_decode(tokens[:, 1:].tolist(), skip_special_tokens=True)
    counts = torch.tensor([len(text.encode("utf-8")) for text in texts], dtype=torch.float64)
    return counts if counts.sum() > 0 else None  # no text at all: bits per byte is undefined


def _lens_summary(acc: LayerAccumulator, n_bytes, *, bootstrap: int, seed: int) -> dict:
    entry = {
        "kl_bits": to_bits(acc.mean("kl")),
        "kl_nats": acc.mean("kl").tolist(),
        "ce_bits": to_bits(acc.mean("ce")),
        "entropy_bits": to_bits(acc.mean("entropy")),
        "top1_agree": acc.mean("top1").tolist(),
        "top5_agree": acc.mean("top5").tolist(),
        "mean_rank": acc.mean("rank").tolist(),
        "ece": acc.ece().tolist(),
        "cos_to_final": acc.mean("cos").tolist(),
    }
    if n_bytes is not None:
        entry["bits_per_byte"] = (acc.sums["ce"].sum(1) * NATS_TO_BITS / n_bytes.sum()).tolist()
    for name in ("kl", "ce"):
        interval = acc.interval(name, bootstrap, seed)
        entry[f"{name}_bits_ci95"] = None if interval is None else to_bits(interval)
    return entry


def _summarise(
    model,
    lenses,
    rows,
    accumulators,
    model_acc,
    transfers,
    tokens,
    tokenizer,
    *,
    bootstrap,
    seed,
    model_name,
) -> dict:
    n_bytes = _bytes_per_sequence(tokens, tokenizer)
    n_sequences, seq_len = tokens.shape
    ce_tokens = n_sequences * (seq_len - 1)
    baseline = {
        "ce_bits": float(model_acc["ce"].sum()) / ce_tokens * NATS_TO_BITS,
        "entropy_bits": float(model_acc["entropy"].sum()) / tokens.numel() * NATS_TO_BITS,
    }
    if n_bytes is not None:
        baseline["bits_per_byte"] = float(model_acc["ce"].sum() * NATS_TO_BITS / n_bytes.sum())
    config, logit = model.config, lenses[BASELINE]
    out = {
        "schema": "tunedlens.eval/1",
        "model": model_name or getattr(config, "name_or_path", "") or type(model).__name__,
        "model_type": getattr(config, "model_type", None),
        "n_blocks": logit.n_blocks,
        "vocab_size": logit.unembed.vocab_size,
        "tokens": int(tokens.numel()),
        "sequences": int(n_sequences),
        "seq_len": int(seq_len),
        "layers": rows,
        "output_row": logit.output_row,
        "points": logit.points,
        "row_labels": [row_label(logit.points, row, logit.n_blocks) for row in rows],
        "lenses": {},
        "baseline": baseline,
        "bootstrap_resamples": bootstrap,
    }
    for name, lens in lenses.items():
        entry = _lens_summary(accumulators[name], n_bytes, bootstrap=bootstrap, seed=seed)
        entry["kind"] = "logit" if isinstance(lens, LogitLens) else type(lens).__name__
        if name in transfers:
            entry["transfer_kl_bits"] = to_bits(transfers[name] / tokens.numel())
        out["lenses"][name] = entry
    return out
