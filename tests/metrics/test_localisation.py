"""Organ localisation errors: each structure's best box against its true box."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.metrics.localisation import localisation_errors


def _voxel_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two integer-cornered 3D boxes by counting unit cells (an independent oracle)."""
    grid = np.zeros((2, 40, 40, 40), bool)
    for k, box in enumerate((a, b)):
        x1, y1, z1, x2, y2, z2 = box.astype(int) + 5  # jittered corners may be below 0
        grid[k, z1:z2, y1:y2, x1:x2] = True
    return float((grid[0] & grid[1]).sum() / (grid[0] | grid[1]).sum())


def test_best_box_per_class_against_brute_force():
    rng = np.random.default_rng(0)
    detections, truths, expected = [], [], []
    for image in range(12):
        true = []
        for _ in range(2):
            low = rng.integers(0, 20, 3)
            true.append(np.concatenate([low, low + rng.integers(3, 15, 3)]).astype(float))
        boxes, scores, labels = [], [], []
        for label in (0, 1):
            if image == 5 and label == 1:
                continue  # missed
            for _ in range(3):  # three guesses; the best-scoring one is judged
                jitter = rng.integers(-3, 4, 6)
                box = true[label] + jitter
                box[3:] = np.maximum(box[3:], box[:3] + 1)
                boxes.append(box)
                scores.append(float(rng.random()))
                labels.append(label)
        detections.append({"boxes": np.array(boxes), "scores": np.array(scores), "labels": labels})
        truths.append({"boxes": np.array(true), "labels": [0, 1]})
        for label in (0, 1):
            mine = [i for i, v in enumerate(labels) if v == label]
            if not mine:
                expected.append((label, False, 0.0, np.nan, np.nan))
                continue
            best = boxes[max(mine, key=lambda i: scores[i])]
            t = true[label]
            centre = np.linalg.norm((best[:3] + best[3:]) / 2 - (t[:3] + t[3:]) / 2)
            wall = np.abs(best - t).mean()
            expected.append((label, True, _voxel_iou(best, t), centre, wall))
    result = localisation_errors(detections, truths, n_boot=200)
    rows = result["per_image"]
    assert len(rows) == 24
    for row, (label, found, iou, centre, wall) in zip(rows, expected, strict=True):
        assert row["label"] == label and row["detected"] == found
        assert row["iou"] == pytest.approx(iou, abs=1e-12)
        if found:
            assert row["centre_mm"] == pytest.approx(centre) and row["wall_mm"] == pytest.approx(
                wall
            )
    one = result["per_class"]["1"]
    assert one["n"] == 12 and one["detected"] == pytest.approx(11 / 12)
    walls = [e[4] for e in expected if e[0] == 1 and e[1]]
    assert one["wall_mm"] == pytest.approx(np.mean(walls))
    assert one["wall_mm_median"] == pytest.approx(np.median(walls))
    low, high = one["wall_mm_ci"]
    assert low < one["wall_mm"] < high
    assert result["all"]["iou"] == pytest.approx(np.mean([e[2] for e in expected]))


def test_spacing_scales_distances_not_iou():
    det = [{"boxes": [[1, 1, 1, 5, 5, 5]], "scores": [0.9], "labels": [0]}]
    truth = [{"boxes": [[2, 1, 1, 6, 5, 5]], "labels": [0]}]
    plain = localisation_errors(det, truth, n_boot=0)["all"]
    mm = localisation_errors(det, truth, spacing=(2.0, 1.0, 1.0), n_boot=0)["all"]
    assert plain["centre_mm"] == pytest.approx(1.0) and mm["centre_mm"] == pytest.approx(2.0)
    assert plain["iou"] == pytest.approx(mm["iou"]) == pytest.approx(3 / 5)
    assert plain["wall_mm_ci"] is None


def test_several_true_boxes_of_a_class_are_refused():
    truth = [{"boxes": [[0, 0, 2, 2], [3, 3, 5, 5]], "labels": [0, 0]}]
    det = [{"boxes": np.zeros((0, 4)), "scores": [], "labels": []}]
    with pytest.raises(ValueError, match="2 true boxes of class 0"):
        localisation_errors(det, truth)
