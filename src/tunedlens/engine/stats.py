"""The statistics a readout computes: their names (defined once), titles and units.

Every consumer (the CLI's ``--stat``, trajectories, figures, the evaluation report) takes its
names from :data:`STATS`. Information quantities are computed in nats and shown in bits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np

from tunedlens.errors import InputError
from tunedlens.metrics.divergence import NATS_TO_BITS

Stat = Literal["entropy", "kl", "ce", "max-prob", "rank", "prob", "model-rank", "cos"]
"""A per-cell statistic of a lens's prediction (see :data:`STATS`)."""
STAT_NAMES: tuple[str, ...] = get_args(Stat)


@dataclass(frozen=True)
class StatInfo:
    """How a statistic is called and shown."""

    title: str
    units: Literal["bits", "probability", "rank", "cosine"]
    description: str
    scale: float = 1.0
    """Multiply the computed value (nats for information quantities) by this to show it."""
    vmin: float | None = None
    vmax: float | None = None


STATS: dict[str, StatInfo] = {
    "entropy": StatInfo("entropy", "bits", "entropy of the prediction", NATS_TO_BITS),
    "kl": StatInfo("KL to the model", "bits", "KL(model output ‖ lens)", NATS_TO_BITS),
    "ce": StatInfo(
        "cross-entropy",
        "bits",
        "cross-entropy to the target token (default: the next token)",
        NATS_TO_BITS,
    ),
    "max-prob": StatInfo(
        "max probability", "probability", "probability of the top token", vmin=0.0, vmax=1.0
    ),
    "rank": StatInfo("rank", "rank", "1-based rank of the target token (ties in its favour)"),
    "prob": StatInfo(
        "target probability", "probability", "probability of the target token", vmin=0.0, vmax=1.0
    ),
    "model-rank": StatInfo(
        "rank of the model's top token", "rank", "1-based rank of the model's top token"
    ),
    "cos": StatInfo(
        "cosine to the model", "cosine", "cosine of the centred logits", vmin=-1.0, vmax=1.0
    ),
}
"""Every statistic a readout computes, by name: its title, units and how it is shown."""
assert set(STATS) == set(STAT_NAMES)

VIEW_STATS: tuple[str, ...] = ("entropy", "kl", "ce", "max-prob", "rank")
"""What ``tunedlens show --stat`` offers; ``all`` means the first four."""
ALL_VIEW_STATS: tuple[str, ...] = VIEW_STATS[:4]
PAIR_STATS = {
    "js": StatInfo(
        "Jensen–Shannon divergence", "bits", "½KL(p‖m) + ½KL(q‖m), m = ½(p+q)", NATS_TO_BITS, 0, 1
    ),
    "kl": StatInfo("KL", "bits", "KL(p ‖ q)", NATS_TO_BITS),
    "tv": StatInfo("total variation", "probability", "½ Σ |p − q|", 1.0, 0.0, 1.0),
}
"""Statistics between two readouts of equal shape (two prompts or two lenses)."""


def check_stats(names, allowed=STAT_NAMES, what: str = "statistic") -> tuple[str, ...]:
    """``names`` as a tuple, or a ``ValueError`` naming the unknown one and the choices."""
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        if name not in allowed:
            raise InputError(f"unknown {what} {name!r}; choose one of {', '.join(allowed)}")
    return names


@dataclass(frozen=True)
class TrajectoryStat:
    """A named ``(rows, seq)`` grid of one statistic, ready to plot."""

    name: str
    units: str
    values: np.ndarray
    row_labels: list[str]
    column_labels: list[str]
    cell_labels: list[list[str]] | None = None
    """Text per cell (the top-1 token), or ``None``."""
    hover: list[list[str]] | None = None
    """Hover text per cell (top-k tokens with probabilities), or ``None``."""
    vmin: float | None = None
    vmax: float | None = None

    def clip(self, low: float | None = None, high: float | None = None) -> TrajectoryStat:
        """Clip the values (and the colour scale) to ``[low, high]``."""
        values = np.clip(self.values, low, high)
        return replace(self, values=values, vmin=low, vmax=high)
