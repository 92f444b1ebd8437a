"""Certified thresholds: the binomial bounds cover, and fixed-sequence testing keeps its promise."""

import numpy as np
import pytest

from tunedlens.analyze.calibrate import certify, resolve_bound, upper_bound
from tunedlens.analyze.errors import AnalysisError


@pytest.mark.parametrize("bound", ["clopper-pearson", "hoeffding"])
@pytest.mark.parametrize(("rate", "n"), [(0.02, 300), (0.1, 200), (0.3, 50)])
def test_the_upper_bound_covers_the_true_rate(bound, rate, n):
    rng = np.random.default_rng(0)
    epsilon, trials = 0.05, 4000
    failures = rng.binomial(n, rate, size=trials)
    bounds = upper_bound(failures, n, epsilon, bound)
    coverage = float((bounds >= rate).mean())
    assert coverage >= 1 - epsilon - 3 * np.sqrt(epsilon * (1 - epsilon) / trials)
    # ...and it is a bound, not the trivial 1: within a few standard errors of the rate.
    assert float(np.median(bounds)) < rate + 4 * np.sqrt(rate * (1 - rate) / n) + 0.05


def test_clopper_pearson_is_tighter_than_hoeffding_and_exact_at_zero_failures():
    n, epsilon = 400, 0.05
    exact = upper_bound(np.arange(0, 40), n, epsilon, "clopper-pearson")
    loose = upper_bound(np.arange(0, 40), n, epsilon, "hoeffding")
    assert (exact < loose).all()
    assert float(exact[0]) == pytest.approx(1 - epsilon ** (1 / n))  # (1 - p)^n = ε
    assert float(upper_bound(n, n, epsilon)) == 1.0


def test_a_certificate_is_wrong_at_most_epsilon_of_the_time():
    # Candidates from conservative to permissive, with known disagreement rates; the cheapest
    # certified one must have a true rate <= δ in at least 1 - ε of repeated calibrations.
    rates = np.array([0.0, 0.02, 0.05, 0.08, 0.11, 0.15, 0.25])
    costs = np.linspace(1.0, 0.3, len(rates))
    delta, epsilon, n, trials = 0.1, 0.05, 400, 2000
    rng = np.random.default_rng(1)
    wrong = chosen_any = 0
    for _ in range(trials):
        result = certify(rng.binomial(n, rates), n, costs, delta, epsilon, "clopper-pearson")
        if result["index"] is not None:
            chosen_any += 1
            wrong += rates[result["index"]] > delta
    assert chosen_any == trials  # the first candidate never disagrees: always certified
    assert wrong / trials <= epsilon
    # Not vacuous: most calibrations certify a candidate that exits (index > 0).
    picks = [
        certify(rng.binomial(n, rates), n, costs, delta, epsilon, "clopper-pearson")["index"]
        for _ in range(200)
    ]
    assert np.mean([p >= 2 for p in picks]) > 0.5


def test_testing_stops_at_the_first_failure():
    result = certify(np.array([0, 500, 0]), 1000, np.array([3.0, 2.0, 1.0]), 0.1, 0.05, "hoeffding")
    assert result["index"] == 0 and result["passed"] == 1  # the cheap third is never reached


def test_bounds_are_named_or_refused():
    assert resolve_bound("auto") in ("clopper-pearson", "hoeffding")
    assert resolve_bound("hoeffding") == "hoeffding"
    with pytest.raises(AnalysisError, match="bound must be one of"):
        resolve_bound("bonferroni")
