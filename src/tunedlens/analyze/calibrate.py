"""Certified exit thresholds: agreement with the model at least ``1 - δ`` with confidence ``1 - ε``.

The disagreement rate of a threshold is bounded from above on calibration tokens with a one-sided
binomial bound: Clopper–Pearson (exact, through ``scipy.stats.beta``) when scipy is installed,
else Hoeffding's inequality (looser, needs nothing). The candidate thresholds are fixed in advance
and tested in order from the most conservative (never exit) to the most permissive, stopping at
the first that fails (fixed-sequence testing, as in CALM's Learn-then-Test): the family of tests
then holds with probability ``1 - ε`` with no correction for the number of candidates. Among the
certified thresholds the cheapest one is chosen.

The bound treats calibration tokens as independent draws; tokens of one text are not, which is
why calibration and test tokens come from different sequences.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Literal

import numpy as np

from tunedlens.analyze.errors import AnalysisError
from tunedlens.errors import require

Bound = Literal["auto", "clopper-pearson", "hoeffding"]
BOUNDS = ("auto", "clopper-pearson", "hoeffding")


def _has_scipy() -> bool:
    return importlib.util.find_spec("scipy") is not None


def resolve_bound(bound: Bound = "auto") -> str:
    """``clopper-pearson`` or ``hoeffding``: ``auto`` is the first when scipy is importable."""
    if bound not in BOUNDS:
        raise AnalysisError(f"bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
    if bound == "auto":
        return "clopper-pearson" if _has_scipy() else "hoeffding"
    if bound == "clopper-pearson" and not _has_scipy():
        raise AnalysisError(
            "the Clopper-Pearson bound needs scipy (pip install 'tunedlens[analyze]'); pass "
            "bound='hoeffding' to use Hoeffding's bound instead"
        )
    return bound


def upper_bound(failures, n: int, epsilon: float, bound: str = "clopper-pearson"):
    """One-sided ``1 - ε`` upper confidence bound on a rate seen as ``failures`` out of ``n``.

    ``failures`` may be an int or an array of ints; the result has the same shape.
    """
    failures = np.asarray(failures, dtype=np.float64)
    if n <= 0:
        return np.ones_like(failures)
    if bound == "hoeffding":
        return np.minimum(1.0, failures / n + math.sqrt(math.log(1 / epsilon) / (2 * n)))
    beta = require("scipy.stats", "analyze", pip_name="scipy").beta

    with np.errstate(invalid="ignore"):
        value = beta.ppf(1 - epsilon, failures + 1, np.maximum(n - failures, 1e-12))
    return np.where(failures >= n, 1.0, value)


def certify(
    disagreements: np.ndarray, n: int, costs: np.ndarray, delta: float, epsilon: float, bound: str
) -> dict:
    """The cheapest threshold of a fixed sequence whose disagreement is certified ``<= δ``.

    Args:
        disagreements: Per candidate (ordered most conservative first), how many of the ``n``
            calibration tokens disagree with the model.
        n: Calibration tokens.
        costs: Mean cost per candidate on the calibration tokens.
        delta: Allowed disagreement rate.
        epsilon: Allowed probability that the certificate is wrong.
        bound: ``clopper-pearson`` or ``hoeffding``.

    Returns:
        ``{"index": i or None, "upper_bound": ..., "tested": k}``: the chosen candidate (``None``
        when even the first is not certified), its bound, and how many candidates passed.
    """
    bounds = upper_bound(disagreements, n, epsilon, bound)
    passed = 0
    for value in bounds:
        if value > delta:
            break
        passed += 1
    if not passed:
        return {"index": None, "upper_bound": float(bounds[0]) if len(bounds) else 1.0, "passed": 0}
    index = int(np.argmin(costs[:passed]))
    return {"index": index, "upper_bound": float(bounds[index]), "passed": passed}


__all__ = ["BOUNDS", "Bound", "certify", "resolve_bound", "upper_bound"]
