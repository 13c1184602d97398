"""The detection evaluation report on hand-made cases and detections (no training)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from medlens.tasks.detection import train
from medlens.tasks.detection.data import DetectionCase
from medlens.tasks.detection.report import (
    _rectangles,
    detection_figure,
    image_scores,
    rank_images,
    write_detection_report,
)

A, B, C, D = [2, 2, 9, 9], [14, 3, 22, 12], [4, 16, 12, 26], [20, 18, 28, 28]  # x0, y0, x1, y1
FAR = [40, 40, 46, 46]


def _det(*found, width=4):
    """Detections ``(box, score, label)`` as score_cases keeps them."""
    return {
        "boxes": np.array([b for b, _, _ in found], np.float32).reshape(-1, width),
        "scores": np.array([s for _, s, _ in found], np.float32),
        "labels": np.array([k for _, _, k in found], np.int64),
    }


def _cases_2d():
    """Five RGB images with F1 1.0 (a), 0.8 (e), 2/3 (b), 0.5 (c) and 0 (d)."""
    rng = np.random.default_rng(0)
    truth = {
        "a": [(A, 0)],
        "b": [(A, 0), (B, 1)],
        "c": [(C, 1)],
        "d": [(D, 0)],
        "e": [(A, 0), (D, 1)],
    }
    found = {
        "a": _det((A, 0.9, 0)),
        "b": _det((A, 0.8, 0), (B, 0.3, 1)),  # the second one shown, but scoring below 0.5
        "c": _det((C, 0.9, 1), (FAR, 0.6, 1), (C, 0.55, 0)),  # the last of the wrong class
        "d": _det((D, 0.45, 0), (FAR, 0.7, 1)),  # the hit scores below 0.5: no match
        "e": _det((A, 0.95, 0), (D, 0.9, 1), (C, 0.8, 0), (B, 0.35, 1)),
    }
    cases = []
    for case_id, boxes in truth.items():
        image = rng.normal(size=(3, 48, 56)).astype(np.float32)
        cases.append(
            DetectionCase(
                case_id,
                image,
                np.array([b for b, _ in boxes], np.float32),
                np.array([k for _, k in boxes], np.int64),
                {"grid_spacing": [1.0, 1.0]},
            )
        )
    return cases, [found[c.id] for c in cases]


def _score(cases, found, monkeypatch, dims):
    """score_cases on the hand-made detections (detect_array replaced)."""
    by_image = {id(c.image): f for c, f in zip(cases, found, strict=True)}

    def fake(networks, image, plan, mirror=None):
        f = by_image[id(image)]
        return f["boxes"], f["scores"], f["labels"]

    monkeypatch.setattr(train, "detect_array", fake)
    plan = SimpleNamespace(spatial_dims=dims, num_classes=2)
    result = train.score_cases([], cases, plan, n_boot=20, keep_detections=True)
    detections = result.pop("detections")
    result.update(class_names=["cell", "clump"], n_cases=len(cases))
    return result, detections


def test_images_are_ranked_by_f1():
    cases, found = _cases_2d()
    scores = image_scores(cases, found)
    assert [round(s["f1"], 3) for s in scores] == [1.0, 0.667, 0.5, 0.0, 0.8]
    assert (scores[3]["tp"], scores[3]["fp"], scores[3]["fn"]) == (0, 1, 1)
    roles = {role: cases[i].id for role, i in rank_images(scores)}
    assert roles == {"best": "a", "median": "b", "worst": "d"}
    assert rank_images(scores[:2]) == [("best and median", 0), ("worst", 1)]
    empty = DetectionCase("z", np.zeros((1, 4, 4)), np.zeros((0, 4)), np.zeros(0, int))
    assert image_scores([empty], [_det()])[0]["f1"] == 1.0


def test_the_report_is_one_page_naming_the_examples(tmp_path, monkeypatch):
    cases, found = _cases_2d()
    result, detections = _score(cases, found, monkeypatch, 2)
    assert len(detections) == 5 and result["ap"]["map50_ci"] is not None
    json.dumps(result)  # the detections are kept apart: the metrics stay JSON
    fold = tmp_path / "run" / "fold-0"
    fold.mkdir(parents=True)
    history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_score": e / 4} for e in range(4)]
    (fold / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    run = SimpleNamespace(path=tmp_path / "run", info={"data": {"name": "cells"}})
    path = write_detection_report(tmp_path / "eval", result, cases, detections, run)
    page = path.read_text()
    assert path == tmp_path / "eval" / "report.html"
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    for role, case_id in (("best", "a"), ("median", "b"), ("worst", "d")):
        assert f"The {role} image by F1 at IoU 0.5: {case_id} " in page
        assert f"{case_id} ({role})" in page  # marked in the per-image table
        assert (tmp_path / "eval" / f"overlay-{role}.png").read_bytes()[:4] == b"\x89PNG"
    for text in ("mAP@0.5:0.95", "FROC CPM", "0.125 FP per image", "Learning curves", "clump"):
        assert text in page
    assert 'class="ci"' in page and "not drawn" not in page
    rows = re.findall(r"<tr><th>([a-e])( \(\w+\))?</th>", page)
    assert [r[0] for r in rows] == ["d", "c", "b", "e", "a"]  # worst first


def _volume_case():
    image = np.zeros((1, 12, 16, 20), np.float32)
    image[0, 3:7, 4:9, 5:11] = 1.0
    boxes = np.array([[5, 4, 3, 10, 8, 6]], np.float32)  # x, y, z corners
    meta = {"grid_spacing": [1.0, 1.0, 2.5]}
    return DetectionCase("vol", image, boxes, np.array([0]), meta)


def test_a_3d_report_draws_the_planes_through_the_best_detection(tmp_path, monkeypatch):
    case = _volume_case()
    other = DetectionCase("empty", case.image * 0, np.zeros((0, 6)), np.zeros(0, int), case.meta)
    found = [
        _det(([5, 4, 3, 10, 8, 6], 0.9, 0), ([15, 12, 8, 18, 14, 10], 0.6, 1), width=6),
        _det(([1, 1, 1, 3, 3, 3], 0.2, 0), width=6),
    ]
    result, detections = _score([case, other], found, monkeypatch, 3)
    path = write_detection_report(tmp_path, result, [case, other], detections)
    page = path.read_text()
    assert "The best and median image by F1 at IoU 0.5: empty " in page
    assert "The worst image by F1 at IoU 0.5: vol " in page
    png = detection_figure(case.image, (case.boxes, case.labels), found[0], point=(7.5, 6, 4.5))
    assert png[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("fixed", "k", "expected"),
    [
        (2, 4, [(0, (5, 4, 5, 4))]),  # axial slice z=4: x, y
        (1, 6, [(0, (5, 3, 5, 3))]),  # coronal y=6: x, z
        (0, 7, [(0, (4, 3, 4, 3))]),  # sagittal x=7: y, z
        (2, 8, []),  # beyond the box
    ],
)
def test_a_box_crosses_a_plane_as_its_section(fixed, k, expected):
    boxes = _volume_case().boxes.astype(float)
    assert [(i, tuple(float(v) for v in r)) for i, r in _rectangles(boxes, fixed, k)] == expected


def test_evaluate_writes_the_report_beside_the_metrics(tmp_path, monkeypatch):
    from medlens.tasks.detection.evaluate import evaluate_detection
    from medlens.tasks.detection.predict import DetectionRun
    from medlens.tasks.registry import get_task
    from medlens.testing.tiny import squares

    data, settings = squares(tmp_path, n=4)
    plan = get_task("detection").plan(data, overrides=settings, log=lambda s: None)
    run = DetectionRun(tmp_path / "run", {}, plan, [])

    def found(networks, image, the_plan, mirror=None):
        return np.array([[4.5, 2.5, 9.5, 7.5]]), np.array([0.9]), np.array([1])

    monkeypatch.setattr(train, "detect_array", found)
    result, files = evaluate_detection(
        run, data, split="all", n_boot=5, progress=False, output=tmp_path / "eval"
    )
    assert "detections" not in result and "detections" not in json.loads(
        files["metrics"].read_text()
    )
    assert files["report"] == tmp_path / "eval" / "report.html"
    assert "The worst image by F1 at IoU 0.5" in files["report"].read_text()
