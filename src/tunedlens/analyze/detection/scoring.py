"""How well anomaly scores separate two groups: AUROC (with a bootstrap), ROC, TPR at a low FPR.

Scores are "higher = more anomalous". The AUROC is the Mann-Whitney statistic computed from
ranks: the probability that a random anomalous prompt scores above a random normal one, ties
counting one half. It is reported as it is: below 0.5 means the detector ranks the normal
prompts as the more anomalous ones, and is not flipped.
"""

from __future__ import annotations

import numpy as np

from tunedlens.analyze.errors import AnalysisError

FPR_TARGET = 0.01
"""The false-positive rate of the operating point (TPR at 1 % FPR)."""


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    bounds = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
    starts, ends = bounds[:-1], bounds[1:]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auroc(normal, anomalous) -> float:
    """P(anomalous score > normal score) + ½ P(equal), from ranks (Mann-Whitney U / (n m))."""
    normal, anomalous = _finite(normal, "normal"), _finite(anomalous, "anomalous")
    ranks = _ranks(np.concatenate([normal, anomalous]))
    m = len(anomalous)
    return float((ranks[len(normal) :].sum() - m * (m + 1) / 2.0) / (m * len(normal)))


def bootstrap_auroc(normal, anomalous, *, resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """AUROCs of ``resamples`` stratified bootstrap samples (each group resampled on its own).

    The generator is seeded with ``seed`` alone, so two detectors scored on the same prompts
    are resampled identically (their intervals are comparable) and every run repeats.
    """
    normal, anomalous = _finite(normal, "normal"), _finite(anomalous, "anomalous")
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for index in range(resamples):
        out[index] = auroc(rng.choice(normal, len(normal)), rng.choice(anomalous, len(anomalous)))
    return out


def auroc_summary(normal, anomalous, *, resamples: int = 1000, seed: int = 0) -> dict:
    """``auroc``, and with ``resamples`` the bootstrap ``median`` and 95 % interval ``ci95``."""
    out = {"auroc": auroc(normal, anomalous), "median": None, "ci95": None}
    if resamples:
        samples = bootstrap_auroc(normal, anomalous, resamples=resamples, seed=seed)
        out["median"] = float(np.median(samples))
        out["ci95"] = [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]
    return out


def roc_curve(normal, anomalous) -> tuple[list[float], list[float]]:
    """False- and true-positive rates flagging ``score >= t`` for every distinct score ``t``.

    Starts at (0, 0) and ends at (1, 1).
    """
    normal, anomalous = np.sort(_finite(normal, "normal")), np.sort(_finite(anomalous, "anomalous"))
    thresholds = np.unique(np.concatenate([normal, anomalous]))[::-1]
    fpr = 1.0 - np.searchsorted(normal, thresholds, side="left") / len(normal)
    tpr = 1.0 - np.searchsorted(anomalous, thresholds, side="left") / len(anomalous)
    return [0.0, *fpr.tolist()], [0.0, *tpr.tolist()]


def operating_threshold(normal, fpr: float = FPR_TARGET) -> float:
    """The score above which at most ``fpr`` of the ``normal`` scores lie (flag ``score > t``).

    With fewer than ``1 / fpr`` normal prompts no false positive is allowed: ``t`` is the
    highest normal score.
    """
    ordered = np.sort(_finite(normal, "normal"))[::-1]
    allowed = int(np.floor(fpr * len(ordered) + 1e-9))
    return float(ordered[min(allowed, len(ordered) - 1)])


def flag_rate(scores, threshold: float) -> float:
    """Share of ``scores`` above ``threshold``."""
    return float(np.mean(np.asarray(scores, dtype=np.float64) > threshold))


def _finite(values, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise AnalysisError(f"no {what} scores: both groups need at least one prompt")
    if not np.isfinite(array).all():
        raise AnalysisError(f"the {what} scores hold NaN or infinite values")
    return array
