"""Detection metrics: AP against pycocotools, FROC against the LUNA16 rules, counts by hand."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time

import numpy as np
import pytest
import torch

from medlens.metrics import MetricInputError
from medlens.metrics import _detection_match as dm
from medlens.metrics.detection import (
    COCO_IOUS,
    LUNA16_FP_RATES,
    _box_inputs,
    average_precision,
    count_error,
    detection_counts,
    froc,
)

pytest.importorskip("pycocotools")
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

N_CLASSES = 3  # class 2 never has ground truth in the random scenes
EXACT = 1e-9

# ---------------------------------------------------------------------------- scenes and oracles


def scene(
    rng: np.random.Generator, n_images: int = 12, ignore_rate: float = 0.0
) -> tuple[list[dict], list[dict]]:
    """Random 2D scenes: jittered copies of ground-truth boxes, duplicates, misses and false
    positives; every fourth image has no ground truth and class 2 has none at all."""
    dets, gts = [], []
    for i in range(n_images):
        m = int(rng.integers(1, 7)) if i % 4 else 0
        xy = rng.uniform(0, 80, (m, 2))
        g = np.c_[xy, xy + rng.uniform(5, 30, (m, 2))]
        g_lab = rng.integers(0, N_CLASSES - 1, m)
        found = rng.random(m) > 0.2  # the others are missed
        d = g[found] + rng.normal(0, 3, (int(found.sum()), 4))
        d_lab = g_lab[found]
        dup = rng.random(len(d)) < 0.3
        d = np.r_[d, d[dup] + rng.normal(0, 2, (int(dup.sum()), 4))]
        d_lab = np.r_[d_lab, d_lab[dup]]
        n_fp = int(rng.integers(0, 4))
        fxy = rng.uniform(0, 80, (n_fp, 2))
        d = np.r_[d, np.c_[fxy, fxy + rng.uniform(5, 30, (n_fp, 2))]]
        d_lab = np.r_[d_lab, rng.integers(0, N_CLASSES, n_fp)]
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 0.5)
        dets.append({"boxes": d, "scores": rng.random(len(d)), "labels": d_lab})
        gt = {"boxes": g, "labels": g_lab}
        if ignore_rate:
            gt["ignore"] = rng.random(m) < ignore_rate
        gts.append(gt)
    return dets, gts


class IoUCrowdEval(COCOeval):
    """COCOeval whose crowd boxes are compared by IoU: then crowd = our ``ignore`` flag."""

    def computeIoU(self, imgId, catId):
        from pycocotools import mask

        gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gt and not dt:
            return []
        dt = [dt[i] for i in np.argsort([-d["score"] for d in dt], kind="mergesort")]
        dt = dt[: self.params.maxDets[-1]]
        return mask.iou([d["bbox"] for d in dt], [g["bbox"] for g in gt], [0] * len(gt))


def coco_eval(dets: list[dict], gts: list[dict], max_dets: int = 100, iou_crowd: bool = False):
    """pycocotools on the same scene (image i -> id i + 1, class c -> category c + 1)."""
    anns = []
    for i, g in enumerate(gts):
        ignore = g.get("ignore", np.zeros(len(g["boxes"]), bool))
        for b, lab, ign in zip(g["boxes"], g["labels"], ignore, strict=True):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(lab) + 1,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "iscrowd": int(ign),
                }
            )
    results = [
        {
            "image_id": i + 1,
            "category_id": int(lab) + 1,
            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s),
        }
        for i, d in enumerate(dets)
        for b, s, lab in zip(d["boxes"], d["scores"], d["labels"], strict=True)
    ]
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i + 1} for i in range(len(gts))],
        "annotations": anns,
        "categories": [{"id": c + 1} for c in range(N_CLASSES)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = (IoUCrowdEval if iou_crowd else COCOeval)(coco, coco.loadRes(results), "bbox")
        evaluator.params.maxDets = sorted({1, 10, 100, max_dets})
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    m = evaluator.params.maxDets.index(max_dets)
    return evaluator, evaluator.eval["precision"][:, :, :, 0, m]  # (T, R, K)


def our_precision(dets: list[dict], gts: list[dict], max_dets: int = 100) -> np.ndarray:
    """Our interpolated precision ``(T, R, K)``, -1 for classes without ground truth."""
    d, g = _box_inputs(dets, gts)
    matches = dm.match_classes(d, g, list(range(N_CLASSES)), np.asarray(COCO_IOUS), max_dets)
    ones = np.ones((1, len(dets)))
    table = np.stack([dm.precision_table(m, ones)[0] for m in matches], axis=-1)
    return np.where(np.isnan(table), -1.0, table)


def assert_same(a, b):
    """Equal numbers (NaN equals NaN), recursively through dicts and lists."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b)
    else:
        assert a == b


# ---------------------------------------------------------------------------- AP vs pycocotools


@pytest.mark.parametrize("seed", range(5))
def test_ap_equals_pycocotools(seed):
    dets, gts = scene(np.random.default_rng(seed))
    evaluator, precision = coco_eval(dets, gts)
    ours = average_precision(dets, gts, classes=range(N_CLASSES))
    assert ours["map50_95"] == pytest.approx(evaluator.stats[0], abs=EXACT)
    assert ours["map50"] == pytest.approx(evaluator.stats[1], abs=EXACT)
    assert ours["map75"] == pytest.approx(evaluator.stats[2], abs=EXACT)
    np.testing.assert_allclose(our_precision(dets, gts), precision, rtol=0, atol=EXACT)
    for k in range(N_CLASSES - 1):
        per_class = precision[:, :, k].mean(axis=1)
        assert ours["ap50_per_class"][str(k)] == pytest.approx(per_class[0], abs=EXACT)
        assert ours["ap50_95_per_class"][str(k)] == pytest.approx(per_class.mean(), abs=EXACT)
    assert math.isnan(ours["ap50_per_class"]["2"]) and math.isnan(ours["ap50_95_per_class"]["2"])
    assert ours["n_gt_per_class"]["2"] == 0 and ours["n_det_per_class"]["2"] > 0
    assert ours["n_images"] == len(gts)


@pytest.mark.parametrize("max_dets", [1, 2, 3])
def test_max_dets_per_image_and_class_equals_pycocotools(max_dets):
    dets, gts = scene(np.random.default_rng(10 + max_dets))
    _, precision = coco_eval(dets, gts, max_dets)
    np.testing.assert_allclose(our_precision(dets, gts, max_dets), precision, rtol=0, atol=EXACT)
    full = average_precision(dets, gts)
    assert average_precision(dets, gts, max_dets=max_dets)["map50"] <= full["map50"] + EXACT


@pytest.mark.parametrize("seed", range(3))
def test_ignore_equals_pycocotools_crowd_compared_by_iou(seed):
    """pycocotools' crowd boxes follow our ignore rules once they are compared by IoU."""
    dets, gts = scene(np.random.default_rng(20 + seed), ignore_rate=0.4)
    _, precision = coco_eval(dets, gts, iou_crowd=True)
    np.testing.assert_allclose(our_precision(dets, gts), precision, rtol=0, atol=EXACT)


def test_ignore_by_hand():
    # A is a regular box, B an ignored one; detections: on B (0.95), a false positive (0.9),
    # on A (0.8), on B again (0.7)
    a, b = [0, 0, 10, 10], [50, 50, 60, 60]
    dets = [
        {
            "boxes": [b, [100, 100, 110, 110], a, [50, 50, 60, 61]],
            "scores": [0.95, 0.9, 0.8, 0.7],
            "labels": [0, 0, 0, 0],
        }
    ]
    gts = [{"boxes": [a, b], "labels": [0, 0], "ignore": [False, True]}]
    # both detections on B are ignored: FP then TP, precision 1/2 at recall 1, AP 0.5
    res = average_precision(dets, gts)
    assert res["map50"] == pytest.approx(0.5, abs=EXACT)
    assert res["n_gt_per_class"] == {"0": 1}
    # B regular: TP, FP, TP, FP over two boxes: precision 1 up to recall 0.5, then 2/3
    gts[0]["ignore"] = [False, False]
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert average_precision(dets, gts)["map50"] == pytest.approx(expected, abs=EXACT)


def test_greedy_matching_rules_by_hand():
    ious = np.array(
        [
            [0.6, 0.6, 0.9],  # a tie of regular boxes goes to the last (1); above 0.6: ignored
            [0.7, 0.55, 0.0],  # so box 0 is left for it up to 0.7 (box 1 at 0.5 only, if free)
            [0.5, 0.3, 0.95],  # regular boxes taken or too far: the ignored box absorbs it
            [0.0, 0.0, 0.5],  # absorbed by the ignored box again at 0.5, a false positive above
        ]
    )
    ignore = np.array([False, False, True])
    thresholds = np.array([0.5, 0.6, 0.7, 0.8])
    tp, fp = dm.match_image(ious, ignore, thresholds)
    # rows: thresholds; columns: detections
    np.testing.assert_array_equal(tp, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    # the matched-to-ignored detections are neither TP nor FP
    np.testing.assert_array_equal(fp, [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1], [0, 1, 0, 1]])


def test_images_and_classes_without_boxes():
    gts = [{"boxes": np.zeros((0, 4)), "labels": []}, {"boxes": [[0, 0, 4, 4]], "labels": [1]}]
    dets = [
        {"boxes": [[0, 0, 4, 4]], "scores": [0.5], "labels": [3]},
        {"boxes": np.zeros((0, 4)), "scores": [], "labels": []},
    ]
    res = average_precision(dets, gts)
    assert res["ap50_per_class"]["1"] == 0.0  # ground truth, never detected
    assert math.isnan(res["ap50_per_class"]["3"])  # detections only: left out
    assert res["map50"] == 0.0 and res["map50_95"] == 0.0
    empty = average_precision([{"boxes": [], "scores": []}], [{"boxes": []}])
    assert math.isnan(empty["map50"]) and empty["ap50_per_class"] == {}


# ---------------------------------------------------------------------------- 3D


def test_3d_by_hand():
    gts = [{"boxes": [[0, 0, 0, 2, 2, 2]], "labels": [0]}]
    dets = [
        {
            # IoU 1/2 (half the cube), then IoU 1/3 (shifted by half its width)
            "boxes": [[0, 0, 0, 2, 2, 1], [1, 0, 0, 3, 2, 2]],
            "scores": [0.9, 0.8],
            "labels": [0, 0],
        }
    ]
    res = average_precision(dets, gts)
    assert res["map50"] == pytest.approx(
        1.0, abs=EXACT
    )  # matched at IoU 0.5 (>=), then one false positive
    assert res["map75"] == 0.0
    assert res["map50_95"] == pytest.approx(0.1, abs=EXACT)  # only 1 of the 10 thresholds


def test_2d_lifted_to_3d_with_unit_depth_gives_the_2d_result():
    dets, gts = scene(np.random.default_rng(7))

    def lift(boxes):
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        zeros, ones = np.zeros((len(b), 1)), np.ones((len(b), 1))
        return np.c_[b[:, :2], zeros, b[:, 2:], ones]

    dets3 = [{**d, "boxes": lift(d["boxes"])} for d in dets]
    gts3 = [{**g, "boxes": lift(g["boxes"])} for g in gts]
    assert_same(average_precision(dets3, gts3), average_precision(dets, gts))


# ---------------------------------------------------------------------------- inputs


def test_torch_inputs_and_json():
    dets, gts = scene(np.random.default_rng(3), n_images=5)
    as_torch = [{k: torch.as_tensor(v) for k, v in d.items()} for d in dets]
    gts_torch = [{k: torch.as_tensor(v) for k, v in g.items()} for g in gts]
    res = average_precision(as_torch, gts_torch)
    assert_same(res, average_precision(dets, gts))
    json.dumps(res)


def test_bad_inputs():
    box = {"boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [0]}
    with pytest.raises(MetricInputError, match="records"):
        average_precision([box, box], [{"boxes": [[0, 0, 1, 1]]}])
    with pytest.raises(MetricInputError, match="columns"):
        average_precision([{"boxes": [[0, 0, 1]], "scores": [1.0]}], [{"boxes": []}])
    with pytest.raises(MetricInputError):  # 2D detections against 3D ground truth
        average_precision([box], [{"boxes": [[0, 0, 0, 1, 1, 1]]}])
    with pytest.raises(MetricInputError, match="entries"):
        average_precision([{"boxes": [[0, 0, 1, 1]], "scores": [1, 2]}], [{"boxes": []}])
    with pytest.raises(MetricInputError, match="list"):
        average_precision(box, [box])
    with pytest.raises(MetricInputError, match="n_boot"):
        average_precision([box], [box], n_boot=-1)


# ---------------------------------------------------------------------------- AP bootstrap


def test_ap_bootstrap_interval():
    dets, gts = scene(np.random.default_rng(5), n_images=40)
    res = average_precision(dets, gts, n_boot=300, seed=1)
    for key in ("map50", "map50_95"):
        low, high = res[f"{key}_ci"]
        assert low <= res[key] <= high and low < high
    assert res["n_boot"] == 300
    assert_same(average_precision(dets, gts, n_boot=300, seed=1), res)
    assert average_precision(dets, gts)["map50_ci"] is None


def test_weighted_images_equal_the_resampled_data_set():
    """A resample scored by weights equals scoring the resampled list of images."""
    rng = np.random.default_rng(6)
    dets, gts = scene(rng, n_images=10)
    draw = rng.integers(0, len(dets), len(dets))
    weights = np.bincount(draw, minlength=len(dets))[None, :].astype(float)
    d, g = _box_inputs(dets, gts)
    matches = dm.match_classes(d, g, list(range(N_CLASSES)), np.asarray(COCO_IOUS), 100)
    table = dm.ap_table(matches, weights)[0]  # (K, T)
    again = average_precision([dets[i] for i in draw], [gts[i] for i in draw], classes=[0, 1, 2])
    for k in range(N_CLASSES - 1):
        assert table[k].mean() == pytest.approx(again["ap50_95_per_class"][str(k)], abs=EXACT)


def test_ap_bootstrap_is_fast():
    dets, gts = scene(np.random.default_rng(8), n_images=100)
    start = time.perf_counter()
    average_precision(dets, gts, n_boot=1000)
    assert time.perf_counter() - start < 30


# ---------------------------------------------------------------------------- FROC


def hand_froc_inputs(with_ignore: bool = True) -> tuple[list[dict], list[dict]]:
    """Scan A: findings f1 (r 5) and f2 (r 3); candidates on f1 (0.9, and 0.5: a duplicate),
    a false positive (0.8) and one exactly on f2's radius (0.75). Scan B: finding f3 (r 2),
    missed; false positives 0.7 and 0.6 (3 mm from f3); 0.95 inside an ignore region."""
    dets = [
        {
            "centres": [[1, 0, 0], [0, 2, 0], [50, 50, 50], [20, 3, 0]],
            "scores": [0.9, 0.5, 0.8, 0.75],
        },
        {"centres": [[10, 10, 10], [0, 0, 3], [31, 30, 30]], "scores": [0.7, 0.6, 0.95]},
    ]
    findings = [
        {"centres": [[0, 0, 0], [20, 0, 0]], "radii": [5, 3]},
        {"centres": [[0, 0, 0]], "radii": [2]},
    ]
    if with_ignore:
        findings[1].update(ignore_centres=[[30, 30, 30]], ignore_radii=[4])
    return dets, findings


def test_froc_by_hand():
    dets, findings = hand_froc_inputs()
    res = froc(dets, findings, n_boot=0)
    # curve: (0, 0) (0, 1/3) (0.5, 1/3) (0.5, 2/3) (1, 2/3) (1.5, 2/3)
    assert res["curve"]["fp_per_scan"] == [0.0, 0.0, 0.5, 0.5, 1.0, 1.5]
    assert res["curve"]["sensitivity"] == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    expected = [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3]
    assert list(res["sensitivity_at"]) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    assert list(res["sensitivity_at"].values()) == pytest.approx(expected)
    assert res["cpm"] == pytest.approx(4 / 7)
    assert res["max_sensitivity"] == pytest.approx(2 / 3)
    assert (res["n_scans"], res["n_findings"], res["n_detected"]) == (2, 3, 2)
    assert res["cpm_ci"] is None and res["sensitivity_ci"]["1"] is None
    assert res["fp_rates"] == list(LUNA16_FP_RATES)


def test_froc_duplicates_count_once_and_ignore_regions_are_neither():
    dets, findings = hand_froc_inputs()
    base = froc(dets, findings, n_boot=0)
    dets[0] = {
        "centres": dets[0]["centres"][:1] + dets[0]["centres"][2:],
        "scores": [0.9, 0.8, 0.75],
    }
    assert_same(froc(dets, findings, n_boot=0), base)  # without the duplicate hit: the same
    # without the ignore region the 0.95 candidate is the first false positive
    dets, findings = hand_froc_inputs(with_ignore=False)
    res = froc(dets, findings, n_boot=0)
    assert res["curve"]["fp_per_scan"] == [0.0, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0]
    assert list(res["sensitivity_at"].values())[:4] == pytest.approx([0, 0, 1 / 3, 2 / 3])


def luna16_reference(dets, findings, rates):
    """``computeFROC`` of noduleCADEvaluationLUNA16.py: one entry per finding (its best hit, or
    excluded when missed) and one per false positive, through scikit-learn's ROC curve."""
    from sklearn.metrics import roc_curve

    gt_list, prob_list, exclude = [], [], []
    for det, fin in zip(dets, findings, strict=True):
        cands = dict(enumerate(zip(det["centres"], det["scores"], strict=True)))
        for c, r in zip(fin["centres"], fin["radii"], strict=True):
            hits = [k for k, (p, _) in cands.items() if np.sum((np.subtract(p, c)) ** 2) <= r * r]
            gt_list.append(1.0)
            prob_list.append(max([cands[k][1] for k in hits], default=-1.0))
            exclude.append(not hits)
            for k in hits:
                del cands[k]
        for _, s in cands.values():
            gt_list.append(0.0)
            prob_list.append(s)
            exclude.append(False)
    keep = ~np.asarray(exclude)
    y, p = np.asarray(gt_list)[keep], np.asarray(prob_list)[keep]
    fpr, tpr, _ = roc_curve(y, p)
    # LUNA16 uses fpr * n_neg unrounded; its rounding error can put an FP rate that is exactly
    # count / scans just before a jump of the curve, so the count is rounded back here
    fps = np.rint(fpr * (len(p) - y.sum())) / len(dets)
    sens = tpr * y.sum() / sum(gt_list)
    return np.interp(rates, fps, sens)


@pytest.mark.parametrize("seed", range(4))
def test_froc_equals_luna16_evaluation(seed):
    rng = np.random.default_rng(seed)
    dets, findings = [], []
    for _ in range(15):
        m = int(rng.integers(0, 4))
        centres = np.arange(m)[:, None] * 100.0 + rng.uniform(0, 10, (m, 3))  # far apart
        radii = rng.uniform(2, 8, m)
        hits = centres[rng.random(m) < 0.7]
        hits = np.repeat(hits, rng.integers(1, 3, len(hits)), axis=0)
        hits = hits + rng.normal(0, 1, hits.shape)
        n_fp = int(rng.integers(0, 12))
        cand = np.r_[hits, rng.uniform(-50, 400, (n_fp, 3))]
        dets.append({"centres": cand, "scores": rng.random(len(cand))})
        findings.append({"centres": centres, "radii": radii})
    res = froc(dets, findings, n_boot=0)
    ref = luna16_reference(dets, findings, np.asarray(LUNA16_FP_RATES))
    np.testing.assert_allclose(list(res["sensitivity_at"].values()), ref, rtol=0, atol=1e-12)
    assert res["cpm"] == pytest.approx(ref.mean(), abs=1e-12)


def random_froc(rng: np.random.Generator, n_scans: int = 30) -> tuple[list[dict], list[dict]]:
    dets, findings = [], []
    for _ in range(n_scans):
        m = int(rng.integers(0, 3))
        centres = rng.uniform(0, 300, (m, 3))
        n = int(rng.integers(0, 25))
        cand = np.r_[centres + rng.normal(0, 2, (m, 3)), rng.uniform(0, 300, (n, 3))]
        scores = np.r_[rng.uniform(0.3, 1, m), rng.uniform(0, 0.8, n)]
        dets.append({"centres": cand, "scores": scores})
        findings.append({"centres": centres, "radii": np.full(m, 5.0)})
    return dets, findings


def test_froc_curve_bootstrap_and_bounds():
    dets, findings = random_froc(np.random.default_rng(0), n_scans=200)
    start = time.perf_counter()
    res = froc(dets, findings, n_boot=1000, seed=3)
    assert time.perf_counter() - start < 20
    x, y = np.asarray(res["curve"]["fp_per_scan"]), np.asarray(res["curve"]["sensitivity"])
    assert 2 <= x.size <= 200 and (x[0], y[0]) == (0.0, 0.0)
    assert np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
    assert y[-1] == res["max_sensitivity"]
    assert 0 <= res["cpm"] <= 1
    assert res["cpm_ci"][0] <= res["cpm"] <= res["cpm_ci"][1]
    for key, (low, high) in res["sensitivity_ci"].items():
        assert low <= res["sensitivity_at"][key] <= high
    assert_same(froc(dets, findings, n_boot=1000, seed=3), res)
    json.dumps(res)


def test_froc_weighted_scans_equal_the_resampled_data_set():
    rng = np.random.default_rng(4)
    dets, findings = random_froc(rng)
    draw = rng.integers(0, len(dets), len(dets))
    weights = np.bincount(draw, minlength=len(dets))[None, :].astype(float)
    rates = np.asarray(LUNA16_FP_RATES)
    per_scan = [
        dm.froc_scan(
            np.asarray(d["centres"]),
            np.asarray(d["scores"]),
            np.asarray(f["centres"]),
            np.asarray(f["radii"]),
            np.zeros((0, 3)),
            np.zeros(0),
        )
        for d, f in zip(dets, findings, strict=True)
    ]
    n_find = np.array([len(f["centres"]) for f in findings])
    weighted = dm.froc_sensitivities(dm.froc_entries(per_scan, n_find), weights, rates)[0]
    again = froc([dets[i] for i in draw], [findings[i] for i in draw], n_boot=0)
    np.testing.assert_allclose(weighted, list(again["sensitivity_at"].values()), atol=1e-12)


def test_froc_bad_inputs():
    with pytest.raises(MetricInputError, match="records"):
        froc([{"centres": [], "scores": []}], [], n_boot=0)
    with pytest.raises(MetricInputError, match="radii"):
        froc([{"centres": [], "scores": []}], [{"centres": [[0, 0, 0]], "radii": [-1]}])
    with pytest.raises(MetricInputError, match="coordinates"):
        froc([{"centres": [[0, 0]], "scores": [1]}], [{"centres": [[0, 0, 0]], "radii": [1]}])


# ---------------------------------------------------------------------------- counting


def test_count_error_by_hand():
    pred = [{"cell": 3, "mitosis": 1}, {"cell": 5}, {"cell": 0, "mitosis": 2}]
    true = [{"cell": 4, "mitosis": 1}, {"cell": 5, "mitosis": 1}, {"cell": 1}]
    res = count_error(pred, true)
    cell, mitosis = res["per_class"]["cell"], res["per_class"]["mitosis"]
    # cell errors -1, 0, -1; mitosis errors 0, -1, +2
    assert cell == {
        "mae": 2 / 3,
        "mean_error": -2 / 3,
        "relative_error": 2 / 10,
        "total_pred": 8.0,
        "total_true": 10.0,
    }
    assert (mitosis["mae"], mitosis["mean_error"], mitosis["relative_error"]) == (1, 1 / 3, 1.5)
    assert res["mae"] == pytest.approx((2 / 3 + 1) / 2)
    assert res["n_images"] == 3
    arrays = count_error(
        np.array([[3, 1], [5, 0], [0, 2]]),
        np.array([[4, 1], [5, 1], [1, 0]]),
        class_names=["cell", "mitosis"],
    )
    assert_same(arrays, res)
    zero = count_error([1, 0], [0, 0])["per_class"]["0"]
    assert zero["mae"] == 0.5 and math.isnan(zero["relative_error"])
    with pytest.raises(MetricInputError):
        count_error(np.zeros((3, 2)), np.zeros((2, 2)))


def test_detection_counts():
    dets = [
        {"boxes": [[0, 0, 1, 1]] * 3, "scores": [0.9, 0.4, 0.6], "labels": [1, 1, 2]},
        {"boxes": np.zeros((0, 4)), "scores": [], "labels": []},
    ]
    assert detection_counts(dets, score_threshold=0.5) == [{1: 1, 2: 1}, {1: 0, 2: 0}]
    assert detection_counts(dets, score_threshold=None) == [{1: 2, 2: 1}, {1: 0, 2: 0}]
    assert detection_counts(dets, score_threshold=0.5, classes=[2, 7]) == [
        {2: 1, 7: 0},
        {2: 0, 7: 0},
    ]
    gts = [{"boxes": [[0, 0, 1, 1]], "labels": [1]}, {"boxes": [], "labels": []}]
    pred = detection_counts(dets, score_threshold=0.5)
    res = count_error(pred, detection_counts(gts, score_threshold=None))
    assert res["per_class"]["1"]["mae"] == 0.0 and res["per_class"]["2"]["mean_error"] == 0.5
