"""``prune``: which decoder blocks can go, scored cheaply and measured for real, side by side.

Cheap scores come from calibration ids (:mod:`~tunedlens.analyze.pruning.scores`: ShortGPT's
block influence, Gromov's angular distances, each lens's KL between consecutive rows); every effect
is measured on separate test ids: the **measured truth** of each block (cross-entropy and KL to
the full model with that one block removed, the residual passing through), how well each
score's ranking predicts it (Spearman), and the model with ``k = 0..K`` blocks removed by each
method at equal compute (``L - k`` blocks run):

- greedy by each score: the ``k`` blocks with the lowest score (scores are computed once, on
  the full model);
- ``oracle``: the ``k`` blocks with the lowest measured single-block Δ cross-entropy (chosen on
  the test data, so an optimistic baseline; ``oracle="greedy"`` re-measures every remaining
  block after each removal, ``K·L`` extra forward passes);
- ``gromov``: the contiguous run of ``k`` blocks starting at ``argmin_ℓ d(ℓ, k)`` (last token);
- ``truncate/<lens>``: the last ``k`` blocks dropped, the lens's readout at row ``L - k`` as
  the head (a tuned lens adds one ``d x d`` product, negligible beside a block).

Healing (Gromov's step, done cheaply): for chosen methods at ``k = K``, an affine map in front of
the head is fitted on the calibration data (:mod:`~tunedlens.analyze.pruning.heal`) and the share
of the lost cross-entropy it recovers on the test data is reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from tunedlens.analyze.pruning.checks import (
    BASELINE,
    DEFAULT_PROMPTS,
    OracleKind,
    check_lenses,
    check_prune_args,
    default_prompt_tokens,
)
from tunedlens.analyze.pruning.heal import HealConfig, fit_heal, healed_decoder
from tunedlens.analyze.pruning.measure import TestSet, generation_match, lens_decoder
from tunedlens.analyze.pruning.scores import score_blocks, spearman
from tunedlens.analyze.removal import greedy_continuation, pruned_final_states
from tunedlens.arch.residuals import check_input_ids
from tunedlens.arch.resolve import resolve_arch
from tunedlens.errors import LensMismatch
from tunedlens.lenses.lens import Lens, LogitLens


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` found; :meth:`to_dict` is the ``prune.json`` payload (bits throughout)."""

    data: dict

    def to_dict(self) -> dict:
        """The JSON-ready report."""
        return self.data

    def save(self, out, *, plots: bool = True, plotly: str = "directory") -> list:
        """Write ``prune.json``, ``prune_summary.md``, CSV sidecars and (optionally) figures.

        ``plotly``: how the HTML figures get plotly.js (see :mod:`tunedlens.plot.html`).
        """
        from tunedlens.analyze.pruning.report import save_prune_report

        return save_prune_report(self.data, out, plots=plots, plotly=plotly)

    def summary(self) -> str:
        """The markdown summary (ranked tables)."""
        from tunedlens.analyze.pruning.report import summary_markdown

        return summary_markdown(self.data)


def _order(values: Sequence[float]) -> list[int]:
    """Block indices from the lowest value to the highest (ties: the earlier block first)."""
    return sorted(range(len(values)), key=lambda block: (values[block], block))


def _removal_sets(scores: dict, measured: list[dict], angular_last, max_remove: int) -> dict:
    """Method -> ``[removed blocks for k = 0..K]`` for every method that removes blocks."""
    sets = {}
    ranked = {**scores, "oracle": [m["delta_ce_bits"] for m in measured]}
    for name, values in ranked.items():
        order = _order(values)
        sets[name] = [tuple(sorted(order[:k])) for k in range(max_remove + 1)]
    gromov = [()]
    for n in range(1, max_remove + 1):
        row = angular_last[n - 1]
        start = min((s for s, v in enumerate(row) if v is not None), key=lambda s: (row[s], s))
        gromov.append(tuple(range(start, start + n)))
    sets["gromov"] = gromov
    return sets


def _greedy_oracle(test: TestSet, found: dict, n_blocks: int, max_remove: int) -> list:
    """Remove, one at a time, the block whose removal raises test cross-entropy least."""
    chosen: tuple[int, ...] = ()
    sets = [chosen]
    for _ in range(max_remove):
        candidates = [tuple(sorted((*chosen, b))) for b in range(n_blocks) if b not in chosen]
        todo = [c for c in candidates if c not in found]
        found.update(zip(todo, test.measure(todo), strict=True))
        chosen = min(candidates, key=lambda c: (found[c]["ce_bits"], c))
        sets.append(chosen)
    return sets


def prune(
    model: nn.Module,
    input_ids,
    *,
    test_ids,
    lenses: Lens | Sequence[Lens] | Mapping[str, Lens] | None = None,
    max_remove: int = 4,
    allow_same_data: bool = False,
    oracle: OracleKind = "static",
    heal: Sequence[str] = ("gromov",),
    heal_config: HealConfig = HealConfig(),
    generation_prompts: int | None = None,
    generation_tokens: int = 16,
    prompt_tokens: int | None = None,
    lens_positions: int | None = None,
    batch_size: int = 4,
    progress: Callable[[str], None] | None = None,
    model_name: str | None = None,
) -> PruneReport:
    """Score every block cheaply on ``input_ids``; measure removals on ``test_ids``.

    Args:
        model: The causal LM (left unchanged: blocks are removed only while they are measured).
        input_ids: ``(n, seq)`` calibration token ids (the scores, the heal fit).
        test_ids: ``(n, seq)`` held-out token ids (every measured effect).
        lenses: Lenses of ``model`` (one, a list or a name -> lens mapping) reading block rows;
            the logit lens is always added as ``"logit"``.
        max_remove: ``K``: curves run over ``k = 0..K`` removed blocks (``1 <= K < L``).
        allow_same_data: Accept calibration and test ids that share sequences.
        oracle: ``"static"`` (rank blocks by their single-block measured Δ) or ``"greedy"``
            (re-measure every remaining block after each removal: ``K·L`` forward passes).
        heal: Methods whose ``K``-block removal is healed (:data:`method_names`, no truncation).
        heal_config: Steps and learning rate of the heal.
        generation_prompts: Test sequences whose first ``prompt_tokens`` tokens are continued
            greedily (0: no generation check; default: 4, or every test sequence if fewer).
        generation_tokens: Tokens generated per prompt.
        prompt_tokens: Prompt length (default: half a test sequence, at most 32).
        lens_positions: Evenly spaced positions per calibration sequence that the lens scores
            read (default: all; each costs a full-vocabulary readout per row and lens).
        batch_size: Sequences per forward pass.
        progress: Called with a short description of each stage.
        model_name: Recorded in the report (default: the model's ``name_or_path``).

    Returns:
        A :class:`PruneReport`. Information is in bits; ``kl_bits`` is KL(full model ‖ pruned).

    Raises:
        AnalysisError: bad arguments (before any forward pass).
        LensMismatch: a lens of another model.
    """
    started = time.perf_counter()
    say = progress or (lambda _stage: None)
    named = check_lenses(lenses)
    arch = resolve_arch(model)
    n_blocks = arch.n_blocks
    calibration, test_ids = check_prune_args(
        input_ids,
        test_ids,
        max_remove=max_remove,
        n_blocks=n_blocks,
        lens_names=[BASELINE, *named],
        allow_same_data=allow_same_data,
        oracle=oracle,
        heal=heal,
        generation_prompts=generation_prompts,
        generation_tokens=generation_tokens,
        prompt_tokens=prompt_tokens,
        lens_positions=lens_positions,
        batch_size=batch_size,
    )
    named = {BASELINE: LogitLens(model), **named}
    heal = [heal] if isinstance(heal, str) else list(heal)
    prompt_tokens = (
        default_prompt_tokens(test_ids.shape[1]) if prompt_tokens is None else prompt_tokens
    )
    if generation_prompts is None:
        generation_prompts = min(DEFAULT_PROMPTS, test_ids.shape[0])
    for ids in (calibration, test_ids):
        check_input_ids(model, ids)
    check_heads(model, named)
    say("scoring blocks on the calibration ids")
    sums = score_blocks(
        model, named, calibration, arch=arch, batch_size=batch_size, lens_positions=lens_positions
    )
    angular = {"last_token": sums.angular("last_token"), "all_tokens": sums.angular("all_tokens")}
    scores = {
        "block_influence": sums.block_influence(),
        "angular_last_token": list(angular["last_token"][0]),  # runs of n = 1 block
        "angular_all_tokens": list(angular["all_tokens"][0]),
        **{f"lens_kl/{name}": values for name, values in sums.lens_scores().items()},
    }
    say("reading the full model and the truncated models on the test ids")
    test = TestSet(model, named, test_ids, max_remove, arch=arch, batch_size=batch_size)
    say(f"measuring each of the {n_blocks} blocks removed alone")
    results = test.measure([(), *((b,) for b in range(n_blocks))])
    found = {(): results[0], **{(b,): result for b, result in enumerate(results[1:])}}
    measured = [_with_delta(result, results[0]) for result in results[1:]]
    sets = _removal_sets(scores, measured, angular["last_token"], max_remove)
    if oracle == "greedy":
        say("greedy oracle: re-measuring every remaining block after each removal")
        sets["oracle"] = _greedy_oracle(test, found, n_blocks, max_remove)
    curves = _curves(test, sets, found, say)
    prompts = test_ids[:generation_prompts, :prompt_tokens]
    reference = None
    if generation_prompts:
        say("greedy generation: the full model, then every method")
        reference = greedy_continuation(model, prompts, generation_tokens, (), arch=arch)
        _add_generation(model, arch, named, curves, prompts, reference)
    healed = {}
    if heal:
        full = pruned_final_states(model, calibration, (), arch=arch, batch_size=batch_size)
    for name in heal:
        say(f"healing {name} at k={max_remove}")
        point = curves[name][max_remove]
        healed[name] = _heal(test, calibration, full, point, heal_config, prompts, reference)
    data = {
        "schema": "tunedlens.prune/1",
        "model": model_name or getattr(model.config, "name_or_path", "") or type(model).__name__,
        "model_type": getattr(model.config, "model_type", None),
        "n_blocks": n_blocks,
        "max_remove": max_remove,
        "calibration": _shape(calibration),
        "test": _shape(test_ids),
        "baseline": {**results[0], "model_ce_bits": test.ce_bits},
        "lenses": {
            name: {"kind": lens.kind, "source": lens.source} for name, lens in named.items()
        },
        "scores": scores,
        "angular_distance": angular,
        "measured": measured,
        "spearman": _spearman(scores, measured),
        "curves": curves,
        "heal": healed,
        "settings": {
            "oracle": oracle,
            "heal": heal,
            "heal_config": vars(heal_config),
            "generation_prompts": generation_prompts,
            "generation_tokens": generation_tokens,
            "prompt_tokens": prompt_tokens,
            "batch_size": batch_size,
            "lens_positions": lens_positions,
            "allow_same_data": allow_same_data,
        },
    }
    data["elapsed_s"] = time.perf_counter() - started
    return PruneReport(data)


def check_heads(model: nn.Module, lenses: Mapping[str, Lens]) -> None:
    """Refuse, before any forward pass, a lens that decodes with another model's head."""
    head = model.get_output_embeddings()
    for name, lens in lenses.items():
        if lens.unembed.unembedding is not head:
            raise LensMismatch(
                f"lens {name!r} decodes with another model's head; load it for this model "
                "(load_lens(location, model))."
            )


def _shape(ids: torch.Tensor) -> dict:
    return {"sequences": ids.shape[0], "seq_len": ids.shape[1], "tokens": ids.numel()}


def _with_delta(result: dict, baseline: dict) -> dict:
    """``result`` with ``delta_ce_bits``: its cross-entropy minus the full model's (same path)."""
    return {**result, "delta_ce_bits": result["ce_bits"] - baseline["ce_bits"]}


def _spearman(scores: dict, measured: list[dict]) -> dict:
    """Per score: Spearman correlation with the measured ΔCE and KL over the blocks."""
    delta = [m["delta_ce_bits"] for m in measured]
    kl = [m["kl_bits"] for m in measured]
    return {
        name: {"delta_ce": spearman(values, delta), "kl": spearman(values, kl)}
        for name, values in scores.items()
    }


def _curves(test: TestSet, sets: dict, found: dict, say) -> dict:
    """Method -> points ``k = 0..K`` (blocks removed and their metrics), truncations included."""
    missing = {s for chain in sets.values() for s in chain if s not in found}
    missing = sorted(missing, key=lambda s: (len(s), s))
    say(f"measuring {len(missing)} more sets of removed blocks")
    found.update(zip(missing, test.measure(missing), strict=True))
    baseline = found[()]
    curves = {
        name: [
            {"k": k, "removed": list(s), **_with_delta(found[s], baseline)}
            for k, s in enumerate(chain)
        ]
        for name, chain in sets.items()
    }
    n_blocks = test.n_blocks
    for name, results in test.truncation.items():
        curves[f"truncate/{name}"] = [
            {"k": k, "removed": list(range(n_blocks - k, n_blocks)), **_with_delta(r, baseline)}
            for k, r in enumerate(results)
        ]
    return curves


def _add_generation(model, arch, lenses, curves, prompts, reference) -> None:
    """Every curve point's ``generation_match`` (one greedy run per distinct configuration)."""
    n_blocks = arch.n_blocks
    done: dict = {}
    for name, curve in curves.items():
        lens = lenses[name.removeprefix("truncate/")] if name.startswith("truncate/") else None
        for point in curve:
            removed = tuple(point["removed"])
            key = (removed, name if lens is not None else None)
            if key not in done:
                decode = None if lens is None else lens_decoder(lens, n_blocks - point["k"])
                done[key] = generation_match(
                    model, prompts, reference, removed, arch=arch, decode=decode
                )
            point["generation_match"] = done[key]


def _heal(
    test: TestSet, calibration, full, point: dict, config: HealConfig, prompts, reference
) -> dict:
    """Fit the heal of ``point``'s removal on calibration data; measure it on the test ids."""
    removed = tuple(point["removed"])
    model, arch, head, batch = test.model, test.arch, test.logit, test.batch_size
    pruned = pruned_final_states(model, calibration, removed, arch=arch, batch_size=batch)
    translator, log = fit_heal(head, pruned, full, config)
    with torch.no_grad():
        healed = pruned_final_states(model, test.ids, removed, arch=arch, batch_size=batch)
        if translator is not None:
            healed = translator(healed.float(), 0)
    after = test.measure_states([healed])[0]
    full_ce = point["ce_bits"] - point["delta_ce_bits"]  # measured the same way as the point
    after["delta_ce_bits"] = after["ce_bits"] - full_ce
    if reference is not None:
        decode = healed_decoder(head, translator)
        after["generation_match"] = generation_match(
            model, prompts, reference, removed, arch=arch, decode=decode
        )
    lost, lost_kl = point["delta_ce_bits"], point["kl_bits"]
    return {
        "k": point["k"],
        "removed": list(removed),
        "before": {key: point[key] for key in point if key not in ("k", "removed")},
        "after": after,
        "recovered": None if lost <= 0 else (point["ce_bits"] - after["ce_bits"]) / lost,
        "recovered_kl": None if lost_kl <= 0 else 1 - after["kl_bits"] / lost_kl,
        "healed": translator is not None,
        "held_out_kl_bits": log,
    }
