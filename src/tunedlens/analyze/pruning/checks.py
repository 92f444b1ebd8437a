"""The arguments of :func:`~tunedlens.analyze.prune`, checked before any model work."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from tunedlens.analyze.errors import AnalysisError
from tunedlens.arch.residuals import token_ids
from tunedlens.engine.core import name_lenses
from tunedlens.lenses.lens import Lens

BASELINE = "logit"
"""Name of the logit lens, always included."""
OracleKind = Literal["static", "greedy"]
DEFAULT_PROMPTS = 4
"""Greedy-generation prompts when none are asked for (fewer if the test ids hold fewer)."""
FIXED_SCORES = ("block_influence", "angular_last_token", "angular_all_tokens")


def method_names(lens_names: Sequence[str]) -> list[str]:
    """Every removal method :func:`prune` runs for lenses named ``lens_names``."""
    scores = [*FIXED_SCORES, *(f"lens_kl/{name}" for name in lens_names)]
    return [*scores, "oracle", "gromov", *(f"truncate/{name}" for name in lens_names)]


def _ids(values, what: str) -> torch.Tensor:
    ids = token_ids(values, what)
    ids = ids.unsqueeze(0) if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < 2:
        raise AnalysisError(
            f"the {what} are shorter than one sequence (shape {tuple(ids.shape)}); pass "
            f"(n_sequences >= 1, seq_len >= 2) token ids"
        )
    return ids


def default_prompt_tokens(seq_len: int) -> int:
    """Prompt length when none is given: half a test sequence, at most 32 tokens."""
    return max(1, min(32, seq_len // 2))


def _positive(value, name: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AnalysisError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_prune_args(
    input_ids,
    test_ids,
    *,
    max_remove: int,
    n_blocks: int | None = None,
    lens_names: Sequence[str] = (BASELINE,),
    allow_same_data: bool = False,
    oracle: str = "static",
    heal: Sequence[str] = ("gromov",),
    generation_prompts: int | None = None,
    generation_tokens: int = 16,
    prompt_tokens: int | None = None,
    lens_positions: int | None = None,
    batch_size: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check :func:`prune`'s arguments without a model; returns both id tensors, 2-D.

    ``n_blocks`` (the model's ``L``) checks ``max_remove < L`` when known.

    Raises:
        AnalysisError: the first bad argument, with how to fix it.
        TypeError: ids that are not integers.
    """
    _positive(max_remove, "max_remove (K, the most blocks removed)")
    if n_blocks is not None and max_remove >= n_blocks:
        raise AnalysisError(
            f"max_remove={max_remove} would remove every block of a {n_blocks}-block model; "
            f"pass max_remove <= {n_blocks - 1}"
        )
    calibration, test = _ids(input_ids, "calibration ids"), _ids(test_ids, "test ids")
    if not allow_same_data and calibration.shape[1] == test.shape[1]:
        seen = {tuple(row) for row in calibration.tolist()}
        shared = sum(tuple(row) in seen for row in test.tolist())
        if shared:
            raise AnalysisError(
                f"the calibration and test ids share {shared} of {test.shape[0]} test sequences: "
                "the scores would be judged on the data they were computed from; pass held-out "
                "test ids (or allow_same_data=True, --allow-same-data, to accept it)"
            )
    if oracle not in ("static", "greedy"):
        raise AnalysisError(f"oracle must be 'static' or 'greedy', got {oracle!r}")
    known = method_names([name for name in lens_names])
    removals = [name for name in known if not name.startswith("truncate/")]
    for name in [heal] if isinstance(heal, str) else heal:
        if name not in removals:
            raise AnalysisError(f"cannot heal {name!r}; choose among {', '.join(removals)}")
    if generation_prompts is None:
        generation_prompts = min(DEFAULT_PROMPTS, test.shape[0])
    _positive(generation_prompts, "generation_prompts", 0)
    _positive(generation_tokens, "generation_tokens")
    if prompt_tokens is not None:
        _positive(prompt_tokens, "prompt_tokens")
    _positive(batch_size, "batch_size")
    if lens_positions is not None:
        _positive(lens_positions, "lens_positions")
    prompt_tokens = default_prompt_tokens(test.shape[1]) if prompt_tokens is None else prompt_tokens
    if generation_prompts and (generation_prompts > test.shape[0] or prompt_tokens > test.shape[1]):
        raise AnalysisError(
            f"generation takes the first {prompt_tokens} tokens of {generation_prompts} test "
            f"sequences, but the test ids are {tuple(test.shape)}; lower generation_prompts or "
            "prompt_tokens"
        )
    return calibration, test


def check_lenses(lenses) -> dict[str, Lens]:
    """The lenses named (:func:`~tunedlens.engine.core.name_lenses`), each reading block rows.

    Raises:
        AnalysisError: a lens named ``logit`` (the logit lens is always added) or reading
            sub-layer points.
    """
    named = name_lenses(lenses)
    if BASELINE in named:
        raise AnalysisError(
            f"the lens name {BASELINE!r} is reserved for the logit lens, always included"
        )
    for name, lens in named.items():
        if lens.points != "block":
            raise AnalysisError(
                f"lens {name!r} reads {lens.points} points; pruning reads block rows, pass a lens "
                "trained on block inputs"
            )
    return named
