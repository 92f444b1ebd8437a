"""Confidence measures, when each lets a token exit, and what an exit costs.

A token is checked at the rows of a schedule (``check_every``/``check_rows``, all below the
output row ``L``) and exits at the first check whose measure passes its threshold; a token that
never passes runs every block (row ``L``). Exiting at row ``r`` means blocks ``0..r-1`` ran, and
the prediction is the lens's reading of row ``r``.

The measures (exit when):

- ``max-prob``: the lens's top probability ``> threshold``;
- ``margin``: top-1 minus top-2 probability ``> threshold`` (CALM's softmax response);
- ``entropy``: the lens's entropy ``< threshold`` bits;
- ``patience``: the top-1 token has not changed over the last ``threshold`` checks
  (an integer ``>= 1``);
- ``step-kl``: ``KL(row r ‖ row r-1) < threshold`` bits (the lens's readings of consecutive rows);
- ``saturation``: the cosine of the residual states of rows ``r`` and ``r - 1`` ``> threshold``
  (CALM's hidden-state saturation; no lens is needed to decide, only to read the exit state).

Strict inequalities make the ends of each range meaningful: ``max-prob`` 0 exits every token at
its first check, 1 never exits; ``entropy`` 0 never exits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tunedlens.analyze.errors import AnalysisError


@dataclass(frozen=True)
class Measure:
    """A confidence measure: its range, its direction and its default thresholds."""

    name: str
    title: str
    units: str
    low: float
    high: float
    direction: str
    """``above``: exit when the value is above the threshold; ``below``: below; ``at-least``:
    at least the threshold (patience)."""
    decodes: bool
    """Whether a check decodes the lens's distribution (all but ``saturation``)."""
    sweep: tuple[float, ...]
    """Default thresholds of the sweep, most permissive first."""

    def passes(self, values: np.ndarray, threshold: float) -> np.ndarray:
        """Where ``values`` let a token exit (NaN: never)."""
        with np.errstate(invalid="ignore"):
            if self.direction == "above":
                return values > threshold
            if self.direction == "below":
                return values < threshold
            return values >= threshold

    def check(self, threshold) -> float:
        """``threshold`` as a float, or an :class:`AnalysisError` naming the measure's range."""
        if isinstance(threshold, bool) or not isinstance(
            threshold, (int, float, np.floating, np.integer)
        ):
            raise AnalysisError(f"{self.name} thresholds must be numbers, got {threshold!r}")
        value = float(threshold)
        integer_ok = self.direction != "at-least" or value == int(value)
        if math.isnan(value) or not self.low <= value <= self.high or not integer_ok:
            what = "an integer" if self.direction == "at-least" else "a number"
            raise AnalysisError(
                f"{self.name} threshold {threshold!r} is outside its range: pass {what} in "
                f"[{_short(self.low)}, {_short(self.high)}] ({self.units})"
            )
        return value


def _short(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"


MEASURES: dict[str, Measure] = {
    "max-prob": Measure(
        "max-prob",
        "max probability",
        "probability",
        0.0,
        1.0,
        "above",
        True,
        (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999),
    ),
    "margin": Measure(
        "margin",
        "top-1 minus top-2 probability",
        "probability",
        0.0,
        1.0,
        "above",
        True,
        (0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 0.999),
    ),
    "entropy": Measure(
        "entropy",
        "entropy",
        "bits",
        0.0,
        math.inf,
        "below",
        True,
        (4.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.01),
    ),
    "patience": Measure(
        "patience",
        "top-1 unchanged over checks",
        "checks",
        1.0,
        math.inf,
        "at-least",
        True,
        (1, 2, 3, 4, 6, 8, 12),
    ),
    "step-kl": Measure(
        "step-kl",
        "KL(row r ‖ row r-1)",
        "bits",
        0.0,
        math.inf,
        "below",
        True,
        (2.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.01, 0.001),
    ),
    "saturation": Measure(
        "saturation",
        "cosine of consecutive residual states",
        "cosine",
        -1.0,
        1.0,
        "above",
        False,
        (0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999),
    ),
}
MEASURE_NAMES: tuple[str, ...] = tuple(MEASURES)


def calibration_grid(measure: Measure, n_checks: int) -> np.ndarray:
    """Thresholds for calibration, fixed in advance, from never exiting to always exiting."""
    if measure.direction == "at-least":
        return np.arange(max(n_checks, 1), 0, -1, dtype=np.float64)
    if measure.name == "saturation":
        near_one = 1 - np.logspace(-6, -2, 25)
        return np.unique(np.concatenate([[1.0], near_one, np.linspace(0.99, -1.0, 200)]))[::-1]
    if measure.direction == "above":  # probabilities
        near_one = 1 - np.logspace(-5, -2, 16)
        return np.unique(np.concatenate([[1.0], near_one, np.linspace(0.99, 0.0, 100)]))[::-1]
    return np.concatenate([[0.0], np.logspace(-5, math.log10(20.0), 120)])  # bits, ascending


def check_schedule(
    n_blocks: int, check_every: int = 1, check_rows: Sequence[int] | None = None
) -> np.ndarray:
    """The rows at which tokens are checked: ``check_rows``, or every ``check_every``-th from 0."""
    if check_rows is not None:
        rows = sorted({int(row) for row in check_rows})
        bad = [row for row in rows if not 0 <= row < n_blocks]
        if bad:
            raise AnalysisError(
                f"check_rows {bad} are outside 0..{n_blocks - 1} (a token can be checked at the "
                f"input of any block; row {n_blocks} is the model's own output)"
            )
        return np.array(rows, dtype=np.int64)
    return np.arange(0, n_blocks, check_every, dtype=np.int64)


def patience_values(top1: np.ndarray, schedule: np.ndarray) -> np.ndarray:
    """``(n, L)``: at each check, how many checks in a row before it had the same top-1 (NaN off the schedule)."""
    out = np.full((top1.shape[0], top1.shape[1] - 1), np.nan)
    count = np.zeros(top1.shape[0])
    for index, row in enumerate(schedule):
        if index:
            same = top1[:, row] == top1[:, schedule[index - 1]]
            count = np.where(same, count + 1, 0)
        out[:, row] = count
    return out


def exit_rows(
    values: np.ndarray, measure: Measure, threshold: float, schedule: np.ndarray
) -> np.ndarray:
    """``(n,)`` each token's exit row: its first check that passes, else ``L`` (= ``values.shape[1]``)."""
    n_blocks = values.shape[1]
    if len(schedule) == 0:
        return np.full(values.shape[0], n_blocks)
    passed = measure.passes(values[:, schedule], threshold)
    first = passed.argmax(1)
    return np.where(passed.any(1), schedule[first], n_blocks)


def check_costs(measure: Measure, schedule: np.ndarray, decode: np.ndarray) -> np.ndarray:
    """``(L + 1,)``: entry ``r`` is the MACs of the checks at rows ``<= r`` (at ``L``: all of them).

    ``decode[s]`` is one decoding of row ``s`` (the head plus the lens's map). A ``saturation``
    check compares two states (not counted, ``O(d)``); a ``step-kl`` check also decodes row
    ``s - 1`` unless that row was a check itself.
    """
    n_blocks = len(decode) - 1
    per_row = np.zeros(n_blocks + 1)
    if measure.decodes:
        checked = set(schedule.tolist())
        for row in schedule:
            per_row[row] = decode[row]
            if measure.name == "step-kl" and row >= 1 and row - 1 not in checked:
                per_row[row] += decode[row - 1]
    return np.cumsum(per_row)


def token_costs(
    rows: np.ndarray,
    cumulative: np.ndarray,
    propagation: np.ndarray,
    checks: np.ndarray,
    decode: np.ndarray,
    head: float,
    measure: Measure,
) -> np.ndarray:
    """MACs per token of exiting at ``rows``: blocks run, K/V propagation, checks, final decoding.

    The final decoding is the model's head at row ``L``, and at an earlier exit the lens's reading
    of the exit row, which a decoding check has already paid for.
    """
    n_blocks = len(decode) - 1
    tokens = np.arange(len(rows))
    cost = cumulative[tokens, rows] + propagation[rows] + checks[rows]
    final = np.where(rows == n_blocks, head, 0.0 if measure.decodes else decode[rows])
    return cost + final


__all__ = [
    "MEASURES",
    "MEASURE_NAMES",
    "Measure",
    "calibration_grid",
    "check_costs",
    "check_schedule",
    "exit_rows",
    "patience_values",
    "token_costs",
]
