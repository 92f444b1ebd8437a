"""Anomaly scores and their quality: AUROC, bootstrap, ROC, operating point, the detectors."""

import numpy as np
import pytest

from tunedlens.analyze.detection.detectors import DETECTORS, fit_detector, ledoit_wolf
from tunedlens.analyze.detection.scoring import (
    auroc,
    auroc_summary,
    bootstrap_auroc,
    flag_rate,
    operating_threshold,
    roc_curve,
)


def test_perfectly_separable_scores_give_auroc_one_and_a_tight_interval():
    rng = np.random.default_rng(0)
    normal, anomalous = rng.normal(0, 1, 40), rng.normal(10, 1, 30)
    assert anomalous.min() > normal.max()
    summary = auroc_summary(normal, anomalous, resamples=300, seed=1)
    assert summary["auroc"] == 1.0 and summary["ci95"] == [1.0, 1.0] and summary["median"] == 1.0
    # Reported as it is, never flipped: the reverse ordering is 0.
    assert auroc(anomalous, normal) == 0.0


def test_identical_distributions_give_an_interval_around_one_half():
    rng = np.random.default_rng(3)
    normal, anomalous = rng.normal(0, 1, 60), rng.normal(0, 1, 60)
    summary = auroc_summary(normal, anomalous, resamples=1000, seed=0)
    low, high = summary["ci95"]
    assert low < 0.5 < high
    assert high - low < 0.35  # an interval, not everything


def test_auroc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(5)
    normal, anomalous = rng.integers(0, 6, 37).astype(float), rng.integers(2, 8, 23).astype(float)
    pairs = (anomalous[:, None] > normal[None, :]) + 0.5 * (anomalous[:, None] == normal[None, :])
    assert auroc(normal, anomalous) == pytest.approx(pairs.mean(), abs=1e-12)


def test_auroc_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    normal, anomalous = rng.normal(0, 1, 50).round(1), rng.normal(0.7, 1, 30).round(1)
    expected = metrics.roc_auc_score([0] * 50 + [1] * 30, np.concatenate([normal, anomalous]))
    assert auroc(normal, anomalous) == pytest.approx(expected, abs=1e-12)


def test_the_bootstrap_is_seeded_and_reproducible():
    rng = np.random.default_rng(11)
    normal, anomalous = rng.normal(0, 1, 30), rng.normal(0.5, 1, 20)
    first = bootstrap_auroc(normal, anomalous, resamples=200, seed=4)
    again = bootstrap_auroc(normal, anomalous, resamples=200, seed=4)
    other = bootstrap_auroc(normal, anomalous, resamples=200, seed=5)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert auroc_summary(normal, anomalous, resamples=0)["ci95"] is None


def test_roc_curve_runs_from_corner_to_corner_and_its_area_is_the_auroc():
    rng = np.random.default_rng(2)
    normal, anomalous = rng.normal(0, 1, 25).round(1), rng.normal(1, 1, 35).round(1)
    fpr, tpr = roc_curve(normal, anomalous)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert all(np.diff(fpr) >= 0) and all(np.diff(tpr) >= 0)
    fpr, tpr = np.array(fpr), np.array(tpr)
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)  # trapezoids: ties are diagonals
    assert area == pytest.approx(auroc(normal, anomalous), abs=1e-12)


def test_the_operating_threshold_flags_at_most_one_percent_of_normal_prompts():
    rng = np.random.default_rng(8)
    normal = rng.normal(0, 1, 250)
    threshold = operating_threshold(normal, 0.01)
    assert flag_rate(normal, threshold) <= 0.01
    assert flag_rate(normal, np.nextafter(threshold, -np.inf)) > 0.01  # the lowest such threshold
    few = rng.normal(0, 1, 30)  # fewer than 100: no false positive allowed
    assert operating_threshold(few, 0.01) == few.max()
    assert flag_rate([few.max() + 1, few.max()], operating_threshold(few)) == 0.5


def test_ledoit_wolf_matches_scikit_learn():
    covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(1)
    data = rng.normal(size=(30, 45)) @ rng.normal(size=(45, 45))  # more features than rows
    centred = data - data.mean(0)
    ours, shrinkage = ledoit_wolf(centred)
    theirs, their_shrinkage = covariance.ledoit_wolf(centred, assume_centered=True)
    assert shrinkage == pytest.approx(their_shrinkage, rel=1e-10)
    assert np.allclose(ours, theirs, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("detector", DETECTORS)
def test_each_detector_flags_shifted_prompts_and_is_fitted_on_normal_ones_only(detector):
    rng = np.random.default_rng(0)
    train = rng.normal(0, 1, (60, 12))
    normal, anomalous = rng.normal(0, 1, (30, 12)), rng.normal(0, 1, (30, 12)) + 6.0
    score = fit_detector(detector, train, seed=0)
    assert auroc(score(normal), score(anomalous)) == 1.0
    again = fit_detector(detector, train, seed=0)
    assert np.array_equal(score(normal), again(normal))  # fixed hyper-parameters, seeded


@pytest.mark.parametrize("detector", DETECTORS)
def test_detectors_work_with_more_features_than_prompts_and_constant_columns(detector):
    rng = np.random.default_rng(4)
    train = rng.normal(0, 1, (10, 80))
    train[:, 5] = 3.0  # a constant feature (e.g. a KL at the output row)
    test = rng.normal(0, 1, (6, 80))
    scores = fit_detector(detector, train, seed=0)(test)
    assert scores.shape == (6,) and np.isfinite(scores).all()


def test_an_unknown_detector_is_named():
    with pytest.raises(ValueError, match="unknown detector 'svm'"):
        fit_detector("svm", np.zeros((4, 2)))
