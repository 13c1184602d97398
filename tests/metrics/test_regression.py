"""Regression agreement metrics against scikit-learn and SciPy, and their intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from medlens.errors import MedlensError
from medlens.metrics import regression_metrics


def test_point_values_match_scikit_learn_and_scipy():
    rng = np.random.default_rng(0)
    truth = rng.uniform(20, 70, 40)
    pred = truth + rng.normal(2, 5, 40)
    got = regression_metrics(truth, pred, n_boot=500)
    assert got["n"] == 40
    assert got["mae"]["value"] == pytest.approx(mean_absolute_error(truth, pred))
    assert got["rmse"]["value"] == pytest.approx(np.sqrt(mean_squared_error(truth, pred)))
    assert got["r2"]["value"] == pytest.approx(r2_score(truth, pred))
    assert got["r"]["value"] == pytest.approx(stats.pearsonr(truth, pred)[0])
    diff = pred - truth
    assert got["bias"]["value"] == pytest.approx(diff.mean())
    assert got["loa_high"]["value"] == pytest.approx(diff.mean() + 1.96 * diff.std(ddof=1))
    for key in ("mae", "rmse", "bias", "r", "r2"):
        entry = got[key]
        assert entry["low"] <= entry["value"] <= entry["high"], key
    # the interval of the bias covers the simulated 2 points, and excludes 0 at this noise
    assert got["bias"]["low"] < 2 < got["bias"]["high"] and got["bias"]["low"] > 0


def test_undefined_and_bad_inputs():
    flat = regression_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], n_boot=50)
    assert flat["r"]["value"] is None and flat["r2"]["value"] is None
    assert flat["mae"]["value"] == pytest.approx(1.0)
    one = regression_metrics([3.0], [4.0], n_boot=50)
    assert one["mae"]["value"] == 1.0 and one["mae"]["low"] is None
    with pytest.raises(MedlensError, match="as many predictions as references"):
        regression_metrics([1.0, 2.0], [1.0])
    with pytest.raises(MedlensError, match="not finite"):
        regression_metrics([1.0, np.nan], [1.0, 2.0])
