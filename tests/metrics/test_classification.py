"""Classification metrics: every number cross-checked against scikit-learn or worked by hand."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from medlens.metrics import (
    HEADLINE,
    ClassificationMetric,
    MetricInputError,
    bootstrap_ci,
    calibration_curve_data,
    choose_thresholds,
    classification_metrics,
    evaluate_classification,
    expected_calibration_error,
    pr_curve_data,
    roc_curve_data,
    youden_threshold,
)
from medlens.metrics._batch import compute, make_plan
from medlens.metrics._bootstrap import run_bootstrap
from medlens.metrics._inputs import prepare

# ---------------------------------------------------------------------------- data


def binary_data(n: int = 300, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    return y, np.round(p, 2) if ties else p


def multiclass_data(n: int = 300, k: int = 4, seed: int = 0, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    if ties:
        logits = np.round(logits, 1)
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


def multilabel_data(n: int = 300, k: int = 5, seed: int = 0, ignored: float = 0.15):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(np.float64)
    p = np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1)
    y[rng.random((n, k)) < ignored] = -1  # CheXpert "uncertain"
    y[rng.random((n, k)) < ignored / 2] = np.nan  # blank
    return y, p


def is_plain_json(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and is_plain_json(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(is_plain_json(v) for v in obj)
    return obj is None or type(obj) in (str, int, float, bool)


def sk_binary(y, pred, p) -> dict[str, float]:
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "sensitivity": skm.recall_score(y, pred),
        "specificity": skm.recall_score(y, pred, pos_label=0),
        "precision": skm.precision_score(y, pred),
        "f1": skm.f1_score(y, pred),
        "kappa": skm.cohen_kappa_score(y, pred),
        "auc": skm.roc_auc_score(y, p),
        "auc_pr": skm.average_precision_score(y, p),
    }


# ---------------------------------------------------------------------------- binary


@pytest.mark.parametrize(("seed", "threshold"), [(0, None), (1, 0.3), (2, 0.62), (3, 0.5)])
def test_binary_matches_sklearn(seed, threshold):
    y, p = binary_data(seed=seed, ties=seed == 3)
    m = classification_metrics(y, p, "binary", threshold=threshold)
    pred = (p >= (0.5 if threshold is None else threshold)).astype(int)
    for name, expected in sk_binary(y, pred, p).items():
        assert m[name] == pytest.approx(expected, abs=1e-12), name
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["threshold"] == (0.5 if threshold is None else threshold)
    assert m["n"] == y.size and m["task"] == "binary"
    per = m["per_class"]
    assert per["positive"]["sensitivity"] == m["sensitivity"]
    assert per["negative"]["sensitivity"] == m["specificity"]
    assert per["negative"]["precision"] == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert per["negative"]["auc"] == pytest.approx(m["auc"], abs=1e-12)


def test_binary_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(y, p, "binary")
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy"):
        assert m[name] == 0.5
    assert m["auc"] == 0.75  # 3 of the 4 positive-negative pairs are ordered correctly
    assert m["kappa"] == 0.0
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]


def test_binary_input_layouts_agree():
    y, p = binary_data(50)
    ref = classification_metrics(y, p, "binary")
    two = classification_metrics(y, np.stack([1 - p, p], axis=1), "binary")
    col = classification_metrics(y[:, None].astype(float), p[:, None], "binary")
    tens = classification_metrics(torch.tensor(y), torch.tensor(p, dtype=torch.float32), "binary")
    for other in (two, col):
        assert other["auc"] == ref["auc"] and other["f1"] == ref["f1"]
    assert tens["auc"] == pytest.approx(ref["auc"], abs=1e-6)


def test_binary_threshold_is_inclusive():
    m = classification_metrics([0, 1], [0.3, 0.7], "binary", threshold=0.7)
    assert m["confusion_matrix"] == [[1, 0], [0, 1]]


# ---------------------------------------------------------------------------- multi-class


def sk_specificity(y, pred, k):
    mcm = skm.multilabel_confusion_matrix(y, pred, labels=list(range(k)))
    return np.array([c[0, 0] / (c[0, 0] + c[0, 1]) for c in mcm])


@pytest.mark.parametrize(("seed", "k", "ties"), [(0, 3, False), (1, 5, False), (2, 4, True)])
def test_multiclass_matches_sklearn(seed, k, ties):
    y, p = multiclass_data(k=k, seed=seed, ties=ties)
    m = classification_metrics(y, p, "multiclass")
    pred = p.argmax(axis=1)
    macro = {"labels": list(range(k)), "average": "macro", "zero_division": np.nan}
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(skm.recall_score(y, pred, **macro), abs=1e-12)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, **macro), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, **macro), abs=1e-12)
    assert m["specificity"] == pytest.approx(sk_specificity(y, pred, k).mean(), abs=1e-12)
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred), abs=1e-12)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    onehot = label_binarize(y, classes=list(range(k)))
    assert m["auc_pr"] == pytest.approx(skm.average_precision_score(onehot, p), abs=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    recall = skm.recall_score(y, pred, average=None)
    precision = skm.precision_score(y, pred, average=None)
    for j, entry in enumerate(m["per_class"].values()):
        assert entry["sensitivity"] == pytest.approx(recall[j], abs=1e-12)
        assert entry["precision"] == pytest.approx(precision[j], abs=1e-12)
        assert entry["auc"] == pytest.approx(skm.roc_auc_score(y == j, p[:, j]), abs=1e-12)
        assert entry["n_positive"] == int((y == j).sum())


def test_multiclass_class_never_predicted():
    """Precision of a never-predicted class is undefined (NaN), not 0, and left out of means."""
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    p = np.array([[0.8, 0.1, 0.1]] * 3 + [[0.1, 0.8, 0.1]] * 4)
    m = classification_metrics(y, p, "multiclass")
    pred = p.argmax(axis=1)
    macro = {"labels": [0, 1, 2], "average": "macro", "zero_division": np.nan}
    assert np.isnan(m["per_class"]["2"]["precision"])
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred, **macro), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred, **macro), abs=1e-12)


def test_multiclass_rejects_threshold_and_unnormalised_rows():
    y, p = multiclass_data(20)
    with pytest.raises(MetricInputError, match="argmax"):
        classification_metrics(y, p, "multiclass", threshold=0.5)
    with pytest.raises(MetricInputError, match="sum to 1"):
        classification_metrics(y, p * 0.5, "multiclass")


# ---------------------------------------------------------------------------- ordinal


def test_ordinal_kappa_by_hand():
    y = np.array([0, 1, 2])
    p = np.eye(3)[[0, 2, 2]]
    m = classification_metrics(y, p, "ordinal")
    # observed weighted disagreement 1; expected (1/3)((0+1+4)*1 + (4+1+0)*2) = 5
    assert m["kappa"] == pytest.approx(0.8, abs=1e-12)
    assert m["kappa_weights"] == "quadratic"


@pytest.mark.parametrize("seed", [0, 1])
def test_ordinal_matches_sklearn(seed):
    y, p = multiclass_data(k=5, seed=seed)
    m = classification_metrics(y, p, "ordinal")
    pred = p.argmax(axis=1)
    expected = skm.cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(5)))
    assert m["kappa"] == pytest.approx(expected, abs=1e-12)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    plain = classification_metrics(y, p, "multiclass")
    for name in ("accuracy", "f1", "auc", "ece"):
        assert plain[name] == m[name]


def test_ordinal_kappa_uses_class_indices_when_a_grade_is_missing():
    """Grade 1 never occurs: the distance from 0 to 2 must still be 2, as sklearn with labels."""
    y = np.array([0, 0, 2, 2, 3, 3])
    p = np.eye(4)[[0, 2, 2, 3, 3, 0]]
    m = classification_metrics(y, p, "ordinal")
    pred = p.argmax(axis=1)
    expected = skm.cohen_kappa_score(y, pred, weights="quadratic", labels=[0, 1, 2, 3])
    assert m["kappa"] == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------------- multi-label


@pytest.mark.parametrize("threshold", [None, 0.4, [0.3, 0.4, 0.5, 0.6, 0.7]])
def test_multilabel_matches_sklearn_per_class(threshold):
    y, p = multilabel_data()
    m = classification_metrics(y, p, "multilabel", threshold=threshold)
    t = np.broadcast_to(np.asarray(0.5 if threshold is None else threshold, dtype=float), (5,))
    per_metric: dict[str, list[float]] = {name: [] for name in HEADLINE if name != "ece"}
    for j, entry in enumerate(m["per_class"].values()):
        keep = np.isfinite(y[:, j]) & (y[:, j] >= 0)
        yj, pj = y[keep, j].astype(int), p[keep, j]
        pred = (pj >= t[j]).astype(int)
        expected = sk_binary(yj, pred, pj)
        for name, value in expected.items():
            assert entry[name] == pytest.approx(value, abs=1e-12), (j, name)
            per_metric[name].append(value)
        assert m["confusion_matrix"][j] == skm.confusion_matrix(yj, pred).tolist()
        assert entry["n_positive"] + entry["n_negative"] == keep.sum()
        assert entry["threshold"] == t[j]
    for name, values in per_metric.items():
        assert m[name] == pytest.approx(np.mean(values), abs=1e-12), name


def test_multilabel_without_ignored_entries_matches_sklearn_macro():
    y, p = multilabel_data(ignored=0.0)
    m = classification_metrics(y, p, "multilabel")
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, p, average="macro"), abs=1e-12)
    assert m["auc_pr"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    mcm = skm.multilabel_confusion_matrix(y.astype(int), (p >= 0.5).astype(int))
    assert m["confusion_matrix"] == mcm.tolist()


def test_multilabel_degenerate_class_is_left_out():
    y, p = multilabel_data(ignored=0.0)
    y[:, 2] = 0
    y[:5, 3] = -1
    y[5:, 3] = 1
    m = classification_metrics(y, p, "multilabel", class_names=list("abcde"))
    assert np.isnan(m["per_class"]["c"]["auc"]) and np.isnan(m["per_class"]["d"]["auc"])
    expected = np.mean([skm.roc_auc_score(y[:, j], p[:, j]) for j in (0, 1, 4)])
    assert m["auc"] == pytest.approx(expected, abs=1e-12)
    assert any("'c'" in note for note in m["notes"]) and any("'d'" in note for note in m["notes"])


# ---------------------------------------------------------------------------- thresholds


def test_youden_by_hand():
    y = [0, 0, 0, 1, 0, 1, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    out = youden_threshold(y, s)
    assert out == {"threshold": 0.6, "sensitivity": 0.8, "specificity": 1.0, "youden_j": 0.8}


def test_youden_ties_go_to_the_highest_threshold():
    # J = 0.75 both at 0.6 (sens .75, spec 1) and at 0.4 (sens 1, spec .75)
    out = youden_threshold([0, 0, 0, 1, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert out["threshold"] == 0.6 and out["youden_j"] == 0.75


def test_youden_threshold_reproduces_its_sensitivity_and_specificity():
    y, p = binary_data(seed=5)
    out = youden_threshold(y, p)
    assert choose_thresholds(y, p, "binary") == out["threshold"]
    m = classification_metrics(y, p, "binary", threshold=out["threshold"])
    assert m["sensitivity"] == pytest.approx(out["sensitivity"], abs=1e-12)
    assert m["specificity"] == pytest.approx(out["specificity"], abs=1e-12)
    fpr, tpr, _ = skm.roc_curve(y, p)
    assert out["youden_j"] == pytest.approx(np.max(tpr - fpr), abs=1e-12)


def test_choose_thresholds_multilabel_and_errors():
    y, p = multilabel_data()
    y[:, 1] = 0
    with pytest.warns(UserWarning, match="'1'"):
        t = choose_thresholds(y, p, "multilabel")
    assert len(t) == 5 and t[1] == 0.5
    keep = y[:, 0] >= 0
    assert t[0] == youden_threshold(y[keep, 0], p[keep, 0])["threshold"]
    with pytest.raises(MetricInputError):
        choose_thresholds(*multiclass_data(20), "multiclass")
    with pytest.raises(MetricInputError, match="both classes"):
        youden_threshold([1, 1, 1], [0.2, 0.5, 0.9])


# ---------------------------------------------------------------------------- calibration


def test_ece_zero_when_perfectly_calibrated():
    # 30 samples at every bin centre c = (2b + 1) / 30, exactly 30 c of them positive
    p = np.repeat((2 * np.arange(15) + 1) / 30, 30)
    y = np.concatenate([np.arange(30) < (2 * b + 1) for b in range(15)]).astype(int)
    assert expected_calibration_error(y, p, "binary") == pytest.approx(0.0, abs=1e-12)
    assert classification_metrics(y, p, "binary")["ece"] == pytest.approx(0.0, abs=1e-12)


def test_ece_small_when_calibrated_at_random():
    rng = np.random.default_rng(0)
    p = rng.random(100_000)
    y = (rng.random(p.size) < p).astype(int)
    assert expected_calibration_error(y, p, "binary") < 0.01


def test_ece_binary_by_hand():
    # half at 0.2 with 50 % positives (gap 0.3), half at 0.9 all positive (gap 0.1)
    p = np.r_[np.full(10, 0.2), np.full(10, 0.9)]
    y = np.r_[np.arange(10) < 5, np.ones(10)].astype(int)
    assert expected_calibration_error(y, p, "binary") == pytest.approx(0.2, abs=1e-12)
    y_60 = (np.arange(10) < 6).astype(int)  # all at 0.9, 60 % positive
    assert expected_calibration_error(y_60, np.full(10, 0.9), "binary") == pytest.approx(0.3)


def test_ece_top_label_by_hand():
    # 4 samples with confidence 0.8, 2 right (gap 0.3); 2 with confidence 0.5, both right (0.5)
    p = np.array([[0.8, 0.1, 0.1]] * 4 + [[0.5, 0.3, 0.2]] * 2)
    y = np.array([0, 0, 1, 2, 0, 0])
    expected = 4 / 6 * 0.3 + 2 / 6 * 0.5
    assert expected_calibration_error(y, p, "multiclass") == pytest.approx(expected, abs=1e-12)
    assert classification_metrics(y, p, "multiclass")["ece"] == pytest.approx(expected, abs=1e-12)


def brute_force_ece(conf: np.ndarray, outcome: np.ndarray, n_bins: int = 15) -> float:
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            total += inside.sum() * abs(outcome[inside].mean() - conf[inside].mean())
    return total / conf.size


def test_ece_matches_brute_force_for_every_task():
    y, p = multiclass_data(k=4, seed=3)
    top = p.max(axis=1)
    expected = brute_force_ece(top, (p.argmax(axis=1) == y).astype(float))
    assert expected_calibration_error(y, p, "multiclass") == pytest.approx(expected, abs=1e-12)
    y, p = binary_data(seed=3)
    assert expected_calibration_error(y, p, "binary") == pytest.approx(
        brute_force_ece(p, y.astype(float)), abs=1e-12
    )
    y, p = multilabel_data(seed=3)
    keep = np.isfinite(y) & (y >= 0)
    assert expected_calibration_error(y, p, "multilabel") == pytest.approx(
        brute_force_ece(p[keep], y[keep]), abs=1e-12
    )


def test_calibration_curve_data_bins():
    p = np.array([0.0, 1 / 15, 0.5, 1.0])
    y = np.array([0, 1, 1, 1])
    out = calibration_curve_data(y, p, "binary")
    assert out["counts"][0] == 2 and out["counts"][7] == 1 and out["counts"][14] == 1
    assert sum(out["counts"]) == 4 and out["accuracy"][0] == 0.5 and out["accuracy"][1] is None
    assert out["confidence"][0] == pytest.approx(1 / 30)
    assert len(out["bin_centers"]) == 15 and out["bin_centers"][0] == pytest.approx(1 / 30)
    assert out["ece"] == pytest.approx(expected_calibration_error(y, p, "binary"))
    json.dumps(out, allow_nan=False)


# ---------------------------------------------------------------------------- vectorised core


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_vectorised_auc_and_ap_agree_with_sklearn(task):
    """The rank-based AUC / AP used by the bootstrap equals sklearn's, ties and weights included."""
    rng = np.random.default_rng(7)
    if task == "binary":
        y, p = binary_data(400, ties=True)
    elif task == "multiclass":
        y, p = multiclass_data(400, ties=True)
    else:
        y, p = multilabel_data(400)
        p = np.round(p, 2)
    prep = prepare(y, p, task)
    idx = np.vstack([np.arange(prep.n), rng.integers(0, prep.n, (3, prep.n))])
    res = compute(make_plan(prep), idx)
    for j in range(prep.n_classes):
        for b in range(idx.shape[0]):
            w = np.bincount(idx[b], minlength=prep.n).astype(float)
            if task == "multilabel":
                keep = prep.y[:, j] >= 0
                yj, pj, w = prep.y[keep, j], p[keep, j], w[keep]
            else:
                yj, pj = (prep.y == j).astype(int), prep.prob[:, j]
            auc = skm.roc_auc_score(yj, pj, sample_weight=w)
            ap = skm.average_precision_score(yj, pj, sample_weight=w)
            assert abs(res["pc_auc"][b, j] - auc) < 1e-12
            assert abs(res["pc_auc_pr"][b, j] - ap) < 1e-12


@pytest.mark.parametrize("task", ["binary", "multiclass", "ordinal"])
def test_resample_rows_equal_sklearn_on_resampled_data(task):
    y, p = binary_data(120) if task == "binary" else multiclass_data(120)
    prep = prepare(y, p, task, threshold=0.45 if task == "binary" else None)
    idx = np.random.default_rng(1).integers(0, prep.n, (4, prep.n))
    res = compute(make_plan(prep), idx)
    weights = "quadratic" if task == "ordinal" else None
    for b, rows in enumerate(idx):
        yb, pb = y[rows], p[rows]
        pred = (pb >= 0.45).astype(int) if task == "binary" else pb.argmax(axis=1)
        labels = list(range(prep.n_classes))
        assert res["accuracy"][b] == pytest.approx(skm.accuracy_score(yb, pred), abs=1e-12)
        kappa = skm.cohen_kappa_score(yb, pred, weights=weights, labels=labels)
        assert res["kappa"][b] == pytest.approx(kappa, abs=1e-12)
        average = "binary" if task == "binary" else "macro"
        f1 = skm.f1_score(yb, pred, average=average, labels=labels, zero_division=np.nan)
        assert res["f1"][b] == pytest.approx(f1, abs=1e-12)


# ---------------------------------------------------------------------------- bootstrap


def test_bootstrap_contains_point_estimate_and_is_reproducible():
    y, p = binary_data(300)
    a = bootstrap_ci(y, p, "binary", n_boot=300, seed=3)
    b = bootstrap_ci(y, p, "binary", n_boot=300, seed=3)
    c = bootstrap_ci(y, p, "binary", n_boot=300, seed=4)
    assert a == b and a != c
    point = classification_metrics(y, p, "binary")
    assert set(a) == set(HEADLINE)
    for name, ci in a.items():
        assert ci["value"] == point[name]
        assert ci["low"] <= ci["value"] <= ci["high"], name
        assert ci["n_boot"] == 300


def test_bootstrap_narrows_with_more_samples():
    small = bootstrap_ci(*binary_data(150, seed=1), "binary", metrics=["auc", "f1"], n_boot=300)
    large = bootstrap_ci(*binary_data(3000, seed=1), "binary", metrics=["auc", "f1"], n_boot=300)
    assert set(small) == {"auc", "f1"}
    for name in ("auc", "f1"):
        width_small = small[name]["high"] - small[name]["low"]
        width_large = large[name]["high"] - large[name]["low"]
        assert width_large < 0.5 * width_small  # sqrt(20) ~ 4.5 times narrower in theory


def test_bootstrap_subset_without_ranking_metrics():
    y, p = multiclass_data(200, k=3)
    out = bootstrap_ci(y, p, "ordinal", metrics=["accuracy", "kappa"], n_boot=200)
    point = classification_metrics(y, p, "ordinal")
    assert set(out) == {"accuracy", "kappa"} and out["kappa"]["value"] == point["kappa"]
    assert out["accuracy"]["low"] < point["accuracy"] < out["accuracy"]["high"]


def test_bootstrap_stratified_keeps_class_counts_and_rare_classes():
    y = np.r_[np.zeros(60, int), np.ones(2, int)]
    p = np.r_[np.linspace(0, 0.6, 60), [0.5, 0.9]]
    plan = make_plan(prepare(y, p, "binary"))
    strat = run_bootstrap(plan, 200, seed=0)
    assert strat.n_used == 200 and strat.n_redrawn == 0 and strat.stratified
    plain = run_bootstrap(plan, 200, seed=0, stratified=False)
    assert plain.n_used == 200 and plain.n_redrawn > 0  # P(no positive drawn) ~ e^-2
    assert np.all(np.isfinite(plain.values["auc"]))


def test_bootstrap_multilabel_redraws_degenerate_resamples():
    y, p = multilabel_data(40, ignored=0.0)
    y[:, 0] = 0
    y[0, 0] = 1  # one positive: most resamples would lose it without redrawing
    out = evaluate_classification(y, p, "multilabel", n_boot=200)
    assert out["bootstrap"]["n_used"] == 200 and out["bootstrap"]["n_redrawn"] > 0
    assert out["bootstrap"]["stratified"] is False
    assert out["per_class"]["0"]["auc"]["low"] is not None


def test_bootstrap_speed_1000_resamples_600_samples():
    y, p = binary_data(600)
    start = time.perf_counter()
    evaluate_classification(y, p, "binary", n_boot=1000)
    assert time.perf_counter() - start < 5.0  # ~0.2 s on one core; sklearn per resample ~4 s


def test_bootstrap_rejects_bad_arguments():
    y, p = binary_data(20)
    with pytest.raises(MetricInputError, match="unknown metrics"):
        bootstrap_ci(y, p, "binary", metrics=["dice"])
    with pytest.raises(MetricInputError, match="n_boot"):
        bootstrap_ci(y, p, "binary", n_boot=0)
    with pytest.raises(MetricInputError, match="alpha"):
        evaluate_classification(y, p, "binary", alpha=1.5)


# ---------------------------------------------------------------------------- degenerate


def test_binary_single_class_does_not_crash():
    y = np.ones(10, int)
    p = np.linspace(0.1, 0.9, 10)
    m = classification_metrics(y, p, "binary")
    assert np.isnan(m["auc"]) and np.isnan(m["specificity"]) and m["sensitivity"] == 0.5
    assert any("one class" in note for note in m["notes"])
    out = evaluate_classification(y, p, "binary", n_boot=50)
    assert out["auc"] == {"value": None, "low": None, "high": None}
    assert out["sensitivity"]["low"] is not None
    json.dumps(out, allow_nan=False)


def test_multiclass_absent_class():
    y, p = multiclass_data(200, k=4)
    p = p[y != 2]
    y = y[y != 2]
    m = classification_metrics(y, p / p.sum(axis=1, keepdims=True), "multiclass")
    assert np.isnan(m["per_class"]["2"]["auc"])
    present = [m["per_class"][c]["auc"] for c in "013"]
    assert m["auc"] == pytest.approx(np.mean(present), abs=1e-12)
    assert any("'2' is absent" in note for note in m["notes"])
    out = evaluate_classification(y, p, "multiclass", n_boot=50)
    assert out["bootstrap"]["n_used"] == 50 and out["auc"]["low"] is not None


# ---------------------------------------------------------------------------- report


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel", "ordinal"])
def test_evaluate_is_plain_json(task):
    data = {"binary": binary_data, "multilabel": multilabel_data}.get(task, multiclass_data)
    y, p = data(200)
    out = evaluate_classification(y, p, task, n_boot=100)
    text = json.dumps(out, allow_nan=False)
    assert is_plain_json(json.loads(text)) and is_plain_json(out)
    for name in HEADLINE:
        assert set(out[name]) == {"value", "low", "high"}
    assert out["n"] == 200 and out["n_boot"] == 100 and out["bootstrap"]["n_used"] == 100
    point = classification_metrics(y, p, task)
    for name in HEADLINE:
        assert out[name]["value"] == point[name]
    first = next(iter(out["per_class"].values()))
    assert set(first["auc"]) == {"value", "low", "high"} and isinstance(first["n_positive"], int)


def test_evaluate_class_names_threshold_and_no_bootstrap():
    y, p = binary_data(100)
    out = evaluate_classification(
        y, p, "binary", class_names=["pneumonia"], threshold=0.4, n_boot=0
    )
    assert list(out["per_class"]) == ["not pneumonia", "pneumonia"]
    assert out["threshold"] == 0.4 and out["auc"]["low"] is None and "bootstrap" not in out
    with pytest.raises(MetricInputError, match="class names"):
        evaluate_classification(y, p, "binary", class_names=["a", "b", "c"])


# ---------------------------------------------------------------------------- accumulator


def test_accumulator_matches_functional_core():
    y, p = multilabel_data(90)
    metric = ClassificationMetric("multilabel", n_boot=50, threshold=0.4)
    for start in range(0, 90, 32):
        metric.update(torch.tensor(y[start : start + 32]), torch.tensor(p[start : start + 32]))
    assert len(metric) == 90
    assert metric.compute() == evaluate_classification(y, p, "multilabel", threshold=0.4, n_boot=50)
    quick = metric.compute(n_boot=0)
    assert quick["auc"]["low"] is None
    metric.reset()
    assert len(metric) == 0
    with pytest.raises(MetricInputError, match="no samples"):
        metric.compute()


def test_accumulator_torch_labels_and_half_precision():
    y, p = multiclass_data(64, k=3)
    metric = ClassificationMetric("multiclass", n_boot=0)
    metric.update(torch.tensor(y), torch.tensor(p, dtype=torch.bfloat16))
    out = metric.compute()
    assert out["n"] == 64 and out["auc"]["value"] == pytest.approx(
        skm.roc_auc_score(y, p, multi_class="ovr"), abs=0.02
    )
    with pytest.raises(MetricInputError, match="same number"):
        metric.update(torch.tensor(y[:3]), torch.tensor(p[:4]))


# ---------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("y", "p", "task", "match"),
    [
        ([0, 1], [0.2, 0.8], "regression", "unknown task"),
        ([0, 1, 1], [0.2, 0.8], "binary", "same number"),
        ([0, 2], [0.2, 0.8], "binary", "only 0 and 1"),
        ([0, 1], [-2.0, 3.0], "binary", "logits"),
        ([0, 1], [np.nan, 0.5], "binary", "NaN"),
        ([0, 3], [[0.5, 0.5], [0.5, 0.5]], "multiclass", r"\[0, 1\]"),
        ([[0, 2]], [[0.5, 0.5]], "multilabel", "1, 0 and -1"),
        ([[0, 1]], [[0.5, 0.5, 0.5]], "multilabel", "shape"),
        ([0.5, 1], [0.2, 0.8], "binary", "whole-number"),
    ],
)
def test_bad_inputs_are_rejected(y, p, task, match):
    with pytest.raises(MetricInputError, match=match) as err:
        classification_metrics(np.asarray(y), np.asarray(p), task)
    assert isinstance(err.value, ValueError)


def test_multilabel_threshold_count_is_checked():
    y, p = multilabel_data(20)
    with pytest.raises(MetricInputError, match="1 or 5"):
        classification_metrics(y, p, "multilabel", threshold=[0.5, 0.5])


# ---------------------------------------------------------------------------- curves


def test_roc_and_pr_curve_data_match_sklearn():
    y, p = binary_data(100, ties=True)
    y = y.astype(float)
    y[:5] = -1  # ignored entries are dropped
    keep = y >= 0
    roc = roc_curve_data(y, p)
    fpr, tpr, thr = skm.roc_curve(y[keep], p[keep])
    assert roc["fpr"] == fpr.tolist() and roc["tpr"] == tpr.tolist()
    assert roc["thresholds"][0] is None and roc["thresholds"][1:] == thr[1:].tolist()
    assert roc["auc"] == skm.roc_auc_score(y[keep], p[keep])
    pr = pr_curve_data(y, p)
    precision, recall, _ = skm.precision_recall_curve(y[keep], p[keep])
    assert pr["precision"] == precision.tolist() and pr["recall"] == recall.tolist()
    assert pr["average_precision"] == skm.average_precision_score(y[keep], p[keep])
    json.dumps([roc, pr], allow_nan=False)
    with pytest.raises(MetricInputError, match="both classes"):
        roc_curve_data([1, 1], [0.3, 0.4])


# ---------------------------------------------------------------------------- positive class


@pytest.mark.parametrize("ties", [False, True])
def test_binary_positive_class_0_matches_sklearn_pos_label_0(ties):
    y, p1 = binary_data(seed=4, ties=ties)
    prob = np.stack([1 - p1, p1], axis=1)
    names = ["malignant", "normal, benign"]
    threshold = choose_thresholds(y, prob, "binary", positive=0)
    pred = np.where(prob[:, 0] >= threshold, 0, 1)  # malignant when P(malignant) >= threshold
    m = classification_metrics(y, prob, "binary", threshold, names, positive=0)
    assert m["positive_class"] == "malignant" and m["positive_index"] == 0
    expected = {
        "sensitivity": skm.recall_score(y, pred, pos_label=0),
        "specificity": skm.recall_score(y, pred, pos_label=1),
        "precision": skm.precision_score(y, pred, pos_label=0),
        "f1": skm.f1_score(y, pred, pos_label=0),
        "accuracy": skm.accuracy_score(y, pred),
        "kappa": skm.cohen_kappa_score(y, pred),
        "auc": skm.roc_auc_score(y == 0, prob[:, 0]),
        "auc_pr": skm.average_precision_score(y == 0, prob[:, 0]),
    }
    for name, value in expected.items():
        assert m[name] == pytest.approx(value, abs=1e-12), name
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()  # still class order
    assert m["per_class"]["malignant"]["sensitivity"] == m["sensitivity"]
    assert m["ece"] == pytest.approx(expected_calibration_error(y, prob, "binary", positive=0))
    out = evaluate_classification(y, prob, "binary", names, threshold, n_boot=50, positive=0)
    assert out["sensitivity"]["value"] == m["sensitivity"] and out["positive_class"] == "malignant"
    assert out["sensitivity"]["low"] <= m["sensitivity"] <= out["sensitivity"]["high"]
    # the default is unchanged: class 1, with or without saying so
    assert classification_metrics(y, prob, "binary", 0.5, names) == classification_metrics(
        y, prob, "binary", 0.5, names, positive=1
    )


def test_positive_class_only_for_binary():
    y, p = multiclass_data(50)
    with pytest.raises(MetricInputError, match="binary"):
        classification_metrics(y, p, "multiclass", positive=0)
    y, p = binary_data(50)
    with pytest.raises(MetricInputError, match="0 or 1"):
        classification_metrics(y, p, "binary", positive=2)
