"""Distances between real and generated feature sets, against independent computations:
SciPy's ``sqrtm`` for the Fréchet distance, loops for the kernel MMD, scikit-learn's
``NearestNeighbors`` for precision, recall and memorisation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg
from sklearn.neighbors import NearestNeighbors

from medlens.errors import MedlensError
from medlens.metrics.generative import (
    frechet_distance,
    kernel_distance,
    nearest_neighbours,
    precision_recall,
)


@pytest.fixture
def sets():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6))
    real = rng.normal(size=(200, 6)) @ mix
    shifted = rng.normal(size=(150, 6)) @ mix * 1.3 + 0.8
    return real, shifted


def test_frechet_distance_matches_scipy_sqrtm(sets):
    real, generated = sets
    mu_a, mu_b = real.mean(0), generated.mean(0)
    cov_a, cov_b = np.cov(real, rowvar=False), np.cov(generated, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    assert frechet_distance(real, generated) == pytest.approx(expected, rel=1e-7)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-8)
    # one dimension: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2
    a, b = real[:, :1], generated[:, :1]
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    one = (a.mean() - b.mean()) ** 2 + (sa - sb) ** 2
    assert frechet_distance(a, b) == pytest.approx(one, rel=1e-9)


def test_kernel_distance_is_the_unbiased_polynomial_mmd(sets):
    real, generated = sets
    x, y = real[:15], generated[:12]
    d = x.shape[1]

    def k(u, v):
        return (float(u @ v) / d + 1) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    # subsets as large as the smaller set: all of y each time, 12 of the 15 x
    got = kernel_distance(x, y, subsets=4, subset_size=100)
    assert got["subset_size"] == 12 and got["subsets"] == 4
    whole = kernel_distance(x[:12], y, subsets=2, subset_size=12)  # both sets whole
    xx12 = sum(k(x[i], x[j]) for i in range(12) for j in range(12) if i != j) / 132
    xy12 = sum(k(x[i], y[j]) for i in range(12) for j in range(n)) / (12 * n)
    assert whole["mean"] == pytest.approx(xx12 + yy - 2 * xy12, rel=1e-9) and whole["std"] < 1e-9
    assert abs(got["mean"] - (xx + yy - 2 * xy)) < 3 * got["std"] + abs(xx) * 0.2
    near = kernel_distance(real[:100], real[100:], subsets=10, subset_size=50)
    far = kernel_distance(real, generated, subsets=10, subset_size=50)
    assert abs(near["mean"]) < far["mean"]


def test_precision_recall_match_nearest_neighbour_balls(sets):
    real, generated = sets
    k = 3
    radii_real = NearestNeighbors(n_neighbors=k + 1).fit(real).kneighbors(real)[0][:, k]
    radii_gen = NearestNeighbors(n_neighbors=k + 1).fit(generated).kneighbors(generated)[0][:, k]
    cross = np.linalg.norm(generated[:, None] - real[None], axis=2)
    precision = np.mean([(cross[i] <= radii_real).any() for i in range(len(generated))])
    recall = np.mean([(cross[:, j] <= radii_gen).any() for j in range(len(real))])
    got = precision_recall(real, generated, k=k)
    assert got["precision"] == pytest.approx(precision) and got["recall"] == pytest.approx(recall)
    same = precision_recall(real[:100], real[100:], k=k)
    assert same["precision"] > got["precision"] and same["precision"] > 0.8


def test_nearest_neighbours_find_copies(sets):
    real, _ = sets
    training, held_out = real[:150], real[150:]
    rng = np.random.default_rng(1)
    copies = training[[3, 40, 99]] + rng.normal(0, 1e-3, (3, 6))
    novel = rng.normal(size=(7, 6)) * 3
    generated = np.concatenate([copies, novel])
    found = nearest_neighbours(generated, training, held_out)
    index = NearestNeighbors(n_neighbors=1).fit(training).kneighbors(generated)[1][:, 0]
    assert np.array_equal(found["index"], index) and list(found["index"][:3]) == [3, 40, 99]
    assert found["distance"][:3].max() < 0.01
    assert found["closer_than_held_out"] == pytest.approx(3 / 10)
    assert found["held_out_distance"].shape == (50,)


def test_bad_features_are_refused_in_one_line():
    with pytest.raises(MedlensError, match="not one space"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(MedlensError, match=r"n >= 2 needed"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(MedlensError, match="not finite"):
        kernel_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))
    with pytest.raises(MedlensError, match=r"n >= 4 needed"):
        precision_recall(np.zeros((3, 2)), np.zeros((9, 2)), k=3)


def test_a_classifiers_feature_space_separates_what_it_learnt(tmp_path):
    """The pooled features of a (tiny) classification run: blobs and noise lie farther apart
    than two halves of the noise images."""
    from medlens.tasks.classification.bundle import load_run
    from medlens.testing.tiny import train_tiny

    data, run = train_tiny("classification", tmp_path)
    trained = load_run(run)
    with np.load(data) as arrays:
        images, labels = arrays["train_images"][:, None], arrays["train_labels"][:, 0]
    features = trained.features(images)
    assert features.shape[0] == len(images) and features.ndim == 2 and np.isfinite(features).all()
    noise, blobs = features[labels == 0], features[labels == 1]
    half = len(noise) // 2
    assert frechet_distance(noise, blobs) > frechet_distance(noise[:half], noise[half:])
