"""Postprocessing decided on validation: largest component and hole filling per class."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medlens.tasks.segmentation.postprocess import apply_postprocessing, decide_postprocessing


def _disk(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_largest_component_and_hole_filling_touch_only_their_class():
    labels = np.zeros((40, 40), np.uint8)
    labels[_disk(labels.shape, (20, 20), 10)] = 1
    labels[_disk(labels.shape, (20, 20), 3)] = 0  # a hole
    labels[19:22, 19:21] = 2  # another class inside the hole: must stay
    labels[2:4, 2:4] = 1  # an island
    out = apply_postprocessing(
        labels, {"classes": {"1": {"largest_component": True, "fill_holes": True}}}
    )
    assert (out[2:4, 2:4] == 0).all()
    assert (out[19:22, 19:21] == 2).all()
    expected = _disk(labels.shape, (20, 20), 10) & (labels != 2)
    np.testing.assert_array_equal(out == 1, expected)
    assert apply_postprocessing(labels, None) is labels
    # nothing to do: the input is not modified in place
    before = labels.copy()
    apply_postprocessing(labels, {"classes": {"1": {"largest_component": True}}})
    np.testing.assert_array_equal(labels, before)


def test_decision_follows_the_validation_dice():
    rng = np.random.default_rng(0)
    refs, islands, two_blobs_refs, two_blobs_preds = [], [], [], []
    for _ in range(6):
        centre = tuple(rng.integers(18, 30, 2))
        ref = _disk((48, 48), centre, int(rng.integers(6, 12)))
        pred = ndimage.binary_dilation(ref) if rng.random() < 0.5 else ref.copy()
        pred[1:3, 1:4] = True  # a false-positive island
        pred[_disk(ref.shape, centre, 2)] = False  # a hole
        refs.append(ref.astype(np.uint8))
        islands.append(pred.astype(np.uint8))
        blobs = ref.copy()
        blobs[40:46, 40:46] = True  # a real second structure of the same class
        two_blobs_refs.append(blobs.astype(np.uint8))
        two_blobs_preds.append(blobs.astype(np.uint8))
    rules = decide_postprocessing(islands, refs, [0, 1])
    rule = rules["classes"]["1"]
    assert rule["largest_component"] and rule["fill_holes"]
    assert rule["dice"]["largest_component"] > rule["dice"]["none"]
    assert rule["dice"]["fill_holes"] >= rule["dice"]["largest_component"]
    # a second real component: keeping only the largest would lose it
    rules = decide_postprocessing(two_blobs_preds, two_blobs_refs, [0, 1])
    assert not rules["classes"]["1"]["largest_component"]
    assert rules["n_cases"] == 6


def test_ignore_label_is_left_out_of_the_decision():
    ref = np.zeros((30, 30), np.uint8)
    ref[_disk(ref.shape, (15, 15), 8)] = 1
    ref[:5, :] = 255  # ignored region
    pred = (ref == 1).astype(np.uint8)
    pred[1:3, 1:3] = 1  # an "island" inside the ignored region does not count
    rules = decide_postprocessing([pred], [ref], [0, 1, 255], ignore_label=255)
    assert set(rules["classes"]) == {"1"}
    d = rules["classes"]["1"]["dice"]
    assert d["none"] == d["largest_component"] == 1.0


def _ellipse(shape, centre, a, b, angle):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    u = (xx - centre[1]) * np.cos(angle) + (yy - centre[0]) * np.sin(angle)
    v = -(xx - centre[1]) * np.sin(angle) + (yy - centre[0]) * np.cos(angle)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


def test_ellipse_shape_prior_is_kept_only_when_validation_says_so():
    rng = np.random.default_rng(1)
    refs, ragged = [], []
    for _ in range(5):
        centre = tuple(rng.integers(35, 45, 2))
        axes = rng.uniform(18, 26), rng.uniform(12, 17)
        ref = _ellipse((80, 80), centre, *axes, rng.uniform(0, 3))
        pred = ref.copy()
        pred[_disk(ref.shape, (centre[0] - 14, centre[1]), 6)] = False  # a bite
        pred[_disk(ref.shape, (centre[0] + 12, centre[1] + 8), 5)] = True  # a bulge
        refs.append(ref.astype(np.uint8))
        ragged.append(pred.astype(np.uint8))
    rule = decide_postprocessing(ragged, refs, [0, 1])["classes"]["1"]
    assert rule["ellipse"] and rule["dice"]["ellipse"] > rule["dice"]["fill_holes"] + 0.01
    scores = []  # applying the rule gives what the decision measured
    for pred, ref in zip(ragged, refs, strict=True):
        fixed = apply_postprocessing(pred, {"classes": {"1": rule}}) == 1
        scores.append(2 * (fixed & (ref == 1)).sum() / (fixed.sum() + ref.sum()))
    assert np.mean(scores) == rule["dice"]["ellipse"] > 0.97
    # another class is never drawn over, and a perfect prediction keeps its own shape
    other = ragged[0].copy()
    other[35:45, 35:45] = 2
    kept = apply_postprocessing(other, {"classes": {"1": rule}})
    assert (kept[35:45, 35:45] == 2).all()
    perfect = decide_postprocessing(refs, refs, [0, 1])["classes"]["1"]
    assert not perfect["ellipse"] and perfect["dice"]["none"] == 1.0
    # 3D label maps: no ellipse is tried
    volume = np.stack([refs[0]] * 3)
    scores = decide_postprocessing([volume], [volume], [0, 1])["classes"]["1"]["dice"]
    assert "ellipse" not in scores
