"""Anomaly detectors fitted on normal prompts only; every score is "higher = more anomalous".

- ``isolation-forest``: scikit-learn's IsolationForest, 100 trees (its defaults, as the
  tuned-lens paper used it), scored by ``-score_samples``;
- ``lof``: LocalOutlierFactor with ``novelty=True`` and 20 neighbours (fewer when fewer
  prompts are fitted), scored by ``-score_samples``;
- ``mahalanobis``: the distance to the fitted mean under a Ledoit-Wolf shrunk covariance,
  written here in numpy (the features often outnumber the prompts, where the sample
  covariance is singular; shrinking toward a multiple of the identity keeps it invertible).

Features are standardised with the fitted prompts' mean and standard deviation first, so that
bits, probabilities and counts weigh alike in the distance-based detectors. Every
hyper-parameter is fixed here in advance; nothing is chosen on test prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from tunedlens.analyze.errors import AnalysisError
from tunedlens.errors import require

Detector = Literal["isolation-forest", "lof", "mahalanobis"]
DETECTORS: tuple[str, ...] = ("isolation-forest", "lof", "mahalanobis")
SKLEARN_DETECTORS = ("isolation-forest", "lof")
N_TREES = 100
N_NEIGHBOURS = 20
HYPERPARAMETERS = {
    "isolation-forest": {"n_estimators": N_TREES, "max_samples": "auto"},
    "lof": {"n_neighbors": f"min({N_NEIGHBOURS}, fitted prompts - 1)", "novelty": True},
    "mahalanobis": {"covariance": "Ledoit-Wolf shrinkage toward mean variance x identity"},
}
"""What each detector is run with, for the report."""


def require_sklearn():
    """scikit-learn, or :class:`~tunedlens.errors.MissingExtra` with the install line."""
    return require("sklearn", "analyze", pip_name="scikit-learn")


@dataclass(frozen=True)
class Standardiser:
    """``(x - mean) / std`` with the fitted prompts' statistics (``std`` 0 counts as 1)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardiser:
        """Fit on ``(n, d)`` features."""
        std = features.std(axis=0)
        return cls(features.mean(axis=0), np.where(std > 0, std, 1.0))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        """Standardise ``(m, d)`` features."""
        return (features - self.mean) / self.std


def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """The Ledoit-Wolf (2004) shrunk covariance of centred ``(n, d)`` data, and its shrinkage.

    ``(1 - s) S + s (tr S / d) I`` with ``S`` the maximum-likelihood covariance and ``s`` the
    estimate of the optimal shrinkage (0 when ``S`` is already a multiple of the identity).
    """
    n, d = centred.shape
    sample = centred.T @ centred / n
    mu = np.trace(sample) / d
    squares = centred**2
    # beta: how noisy S is (sum of the variances of its entries); delta: its distance to mu I.
    beta = (np.sum(squares.T @ squares) / n - np.sum(sample**2)) / n
    delta = np.sum((sample - mu * np.eye(d)) ** 2)
    shrinkage = 0.0 if delta <= 0 else float(min(beta, delta) / delta)
    return (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(d), shrinkage


@dataclass(frozen=True)
class Mahalanobis:
    """Distance to the mean under the inverse of a shrunk covariance (pseudo-inverse if singular)."""

    mean: np.ndarray
    precision: np.ndarray
    shrinkage: float

    @classmethod
    def fit(cls, features: np.ndarray) -> Mahalanobis:
        """Fit on ``(n, d)`` features."""
        mean = features.mean(axis=0)
        covariance, shrinkage = ledoit_wolf(features - mean)
        return cls(mean, np.linalg.pinv(covariance, hermitian=True), shrinkage)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``sqrt((x - mean)ᵀ P (x - mean))`` per row."""
        centred = features - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, self.precision, centred), 0.0))


def fit_detector(
    name: str, train: np.ndarray, *, seed: int = 0
) -> Callable[[np.ndarray], np.ndarray]:
    """Fit detector ``name`` on ``(n, d)`` normal features; returns ``score(features) -> (m,)``.

    Args:
        name: One of :data:`DETECTORS`.
        train: Features of the normal prompts to fit on (``n >= 2``).
        seed: Seeds the isolation forest.
    """
    standardise = Standardiser.fit(train)
    fitted = standardise(train)
    if name == "mahalanobis":
        model = Mahalanobis.fit(fitted)
        return lambda features: model.score(standardise(features))
    require_sklearn()
    if name == "isolation-forest":
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(n_estimators=N_TREES, random_state=seed).fit(fitted)
        return lambda features: -forest.score_samples(standardise(features))
    if name == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        neighbours = max(1, min(N_NEIGHBOURS, len(train) - 1))
        lof = LocalOutlierFactor(n_neighbors=neighbours, novelty=True).fit(fitted)
        return lambda features: -lof.score_samples(standardise(features))
    raise AnalysisError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
