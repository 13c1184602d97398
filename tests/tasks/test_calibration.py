"""Temperature scaling and prior adaptation, against what generated the data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import softmax

from medlens.metrics import expected_calibration_error
from medlens.tasks.classification.calibration import (
    adapt_prior,
    apply_temperature,
    fit_calibration,
    fit_temperature,
)


def _sample(n: int, k: int, seed: int, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, scale, (n, k))
    true = softmax(z, axis=1)
    labels = np.array([rng.choice(k, p=row) for row in true])
    return z, true, labels


@pytest.mark.parametrize("k", [2, 4])
def test_an_overconfident_model_is_cooled_to_its_true_temperature(k):
    z, _, labels = _sample(20_000, k, 0)
    overconfident = softmax(2.5 * z, axis=1)  # the data came from T = 1 on z: the model says 2.5z
    t = fit_temperature(overconfident, labels, "multiclass" if k > 2 else "binary")
    assert t == pytest.approx(2.5, rel=0.05)
    calibrated = apply_temperature(overconfident, t, "binary")
    assert np.array_equal(calibrated.argmax(1), overconfident.argmax(1))  # same decisions
    before = expected_calibration_error(labels, overconfident, "multiclass")
    after = expected_calibration_error(labels, calibrated, "multiclass")
    assert after < before / 3


def test_a_calibrated_model_keeps_temperature_one_and_tiny_sets_are_left_alone():
    _, true, labels = _sample(20_000, 3, 1)
    assert fit_temperature(true, labels, "multiclass") == pytest.approx(1.0, abs=0.05)
    assert fit_temperature(true[:1], labels[:1], "multiclass") == 1.0
    assert np.array_equal(apply_temperature(true, 1.0, "multiclass"), true)


def test_multilabel_temperature_ignores_unknown_labels():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, (20_000, 3))
    labels = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    labels[::7, 1] = np.nan  # not annotated
    labels[::5, 2] = -1  # uncertain, ignored
    said = 1 / (1 + np.exp(-3 * z))
    assert fit_temperature(said, labels, "multilabel") == pytest.approx(3.0, rel=0.05)


def test_em_recovers_a_shifted_prior_and_is_the_maximum_likelihood_one():
    """Posteriors calibrated at a 50/50 training prior; target images drawn at 20/80."""
    rng = np.random.default_rng(3)
    n, target = 4000, np.array([0.2, 0.8])
    y = rng.choice(2, size=n, p=target)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)  # one feature, unit-variance classes
    like = np.stack([np.exp(-((x + 1) ** 2) / 2), np.exp(-((x - 1) ** 2) / 2)], axis=1)
    posteriors = like / like.sum(axis=1, keepdims=True)  # calibrated under the 50/50 prior
    adapted, prior, steps = adapt_prior(posteriors, np.array([0.5, 0.5]))
    assert prior == pytest.approx(target, abs=0.03) and steps < 1000
    assert (adapted.argmax(1) == y).mean() > (posteriors.argmax(1) == y).mean()

    def nll(w):  # the likelihood of the target prior given the posteriors (the oracle)
        pi = np.array([1 - w[0], w[0]])
        return -np.log((posteriors * (pi / 0.5)).sum(axis=1)).sum()

    best = minimize(nll, [0.5], bounds=[(1e-6, 1 - 1e-6)]).x[0]
    assert prior[1] == pytest.approx(best, abs=1e-3)


def test_a_model_that_favours_a_class_is_debiased():
    """The model adds 1.5 to class 1's logit and is twice too sure: bias and temperature."""
    z, _, labels = _sample(20_000, 3, 4)
    said = softmax(2.0 * (z + np.array([0.0, 1.5, 0.0])), axis=1)
    fitted = fit_calibration(said, labels, "multiclass")
    assert fitted["temperature"] == pytest.approx(2.0, rel=0.05)
    assert fitted["bias"][0] == 0.0 and fitted["bias"][1] == pytest.approx(-1.5, abs=0.1)
    fixed = apply_temperature(said, fitted["temperature"], "multiclass", fitted["bias"])
    assert (fixed.argmax(1) == labels).mean() > (said.argmax(1) == labels).mean()
    assert fit_calibration(said, np.eye(3)[labels], "multilabel")["bias"] is None
