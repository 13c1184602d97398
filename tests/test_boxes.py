"""Boxes: every operation against a brute-force pure-Python reference, on numpy and torch input.

The references below use plain loops over boxes and axes (no numpy, no torch), so they share no
code with :mod:`medlens.boxes`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medlens.boxes import (
    batched_nms,
    box_area,
    box_centres,
    box_iou,
    box_sizes,
    boxes_from_labels,
    check_boxes,
    clip_boxes,
    crop_boxes,
    diou_loss,
    distance_box_iou,
    generalized_box_iou,
    giou_loss,
    nms,
    weighted_box_fusion,
)


# ----------------------------------------------------------------------------- references
def ref_volume(box):
    n = len(box) // 2
    return math.prod(max(0.0, box[n + k] - box[k]) for k in range(n))


def ref_overlap(a, b, kind="iou"):
    n = len(a) // 2
    inter = math.prod(max(0.0, min(a[n + k], b[n + k]) - max(a[k], b[k])) for k in range(n))
    union = ref_volume(a) + ref_volume(b) - inter
    iou = inter / union if union > 0 else 0.0
    if kind == "iou":
        return iou
    outer = [max(a[n + k], b[n + k]) - min(a[k], b[k]) for k in range(n)]
    if kind == "giou":
        hull = math.prod(max(0.0, o) for o in outer)
        return iou - ((hull - union) / hull if hull > 0 else 0.0)
    centre = sum(((a[k] + a[n + k]) / 2 - (b[k] + b[n + k]) / 2) ** 2 for k in range(n))
    diagonal = sum(o * o for o in outer)
    return iou - (centre / diagonal if diagonal > 0 else 0.0)


def ref_nms(boxes, scores, threshold):
    """The textbook greedy loop: best score first (ties: lower index), drop IoU > threshold."""
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(ref_overlap(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def ref_batched_nms(boxes, scores, classes, threshold):
    kept = []
    for c in set(classes):
        members = [i for i in range(len(boxes)) if classes[i] == c]
        found = ref_nms([boxes[i] for i in members], [scores[i] for i in members], threshold)
        kept += [members[i] for i in found]
    return sorted(kept, key=lambda i: (-scores[i], i))


def ref_wbf(boxes_list, scores_list, labels_list, threshold, weights, skip, conf_type):
    """Weighted boxes fusion after Solovyev et al. (the ``ensemble_boxes`` reference loop)."""
    items = [
        (label, score * weights[t], list(box))
        for t in range(len(boxes_list))
        for box, score, label in zip(boxes_list[t], scores_list[t], labels_list[t], strict=True)
        if score >= skip
    ]
    out = []
    for label in sorted({item[0] for item in items}):
        mine = [item for item in items if item[0] == label]
        clusters, fused = [], []
        for i in sorted(range(len(mine)), key=lambda i: (-mine[i][1], i)):
            _, score, box = mine[i]
            ious = [ref_overlap(box, f) for f in fused]
            best = max(range(len(ious)), key=lambda k: (ious[k], -k)) if ious else -1
            if best >= 0 and ious[best] > threshold:
                clusters[best].append((score, box))
            else:
                clusters.append([(score, box)])
                fused.append(None)
                best = len(clusters) - 1
            total = sum(s for s, _ in clusters[best])
            fused[best] = [
                sum(s * b[k] for s, b in clusters[best]) / total for k in range(len(box))
            ]
        for cluster, box in zip(clusters, fused, strict=True):
            scores = [s for s, _ in cluster]
            if conf_type == "avg":
                score = sum(scores) / len(scores) * min(len(weights), len(scores)) / sum(weights)
            else:
                score = max(scores) / max(weights)
            out.append((box, score, label))
    out.sort(key=lambda item: -item[1])
    return out


def np_iou(a, b):
    """A vectorised IoU written independently of the module (for the large checks)."""
    n = a.shape[1] // 2
    low = np.maximum(a[:, None, :n], b[None, :, :n])
    high = np.minimum(a[:, None, n:], b[None, :, n:])
    inter = np.clip(high - low, 0, None).prod(-1)
    va, vb = (np.clip(x[:, n:] - x[:, :n], 0, None).prod(-1) for x in (a, b))
    union = va[:, None] + vb[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def random_boxes(rng, count, ndim, *, span=40.0, size=(1.0, 15.0), integer=False):
    low = rng.uniform(0, span, (count, ndim))
    high = low + rng.uniform(*size, (count, ndim))
    boxes = np.concatenate([low, high], axis=1)
    return np.round(boxes) + np.array([0.0] * ndim + [1.0] * ndim) if integer else boxes


def as_kind(array, kind, dtype=torch.float64):
    return torch.as_tensor(array, dtype=dtype) if kind == "torch" else array


def to_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


KINDS = ["numpy", "torch"]


# ----------------------------------------------------------------------------- measures
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ndim", [2, 3])
def test_area_centres_sizes_match_loops(kind, ndim):
    rng = np.random.default_rng(ndim)
    boxes = random_boxes(rng, 20, ndim)
    boxes[3, ndim] = boxes[3, 0] - 1.0  # an inverted (degenerate) box has area 0
    area, centres, sizes = (f(as_kind(boxes, kind)) for f in (box_area, box_centres, box_sizes))
    assert type(area) is type(as_kind(boxes, kind))
    np.testing.assert_allclose(to_numpy(area), [ref_volume(b) for b in boxes.tolist()])
    expected = [[(b[k] + b[ndim + k]) / 2 for k in range(ndim)] for b in boxes.tolist()]
    np.testing.assert_allclose(to_numpy(centres), expected)
    np.testing.assert_allclose(to_numpy(sizes), boxes[:, ndim:] - boxes[:, :ndim])
    assert to_numpy(area)[3] == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(
    ("function", "name"),
    [(box_iou, "iou"), (generalized_box_iou, "giou"), (distance_box_iou, "diou")],
)
def test_pairwise_overlaps_match_loops(kind, ndim, function, name):
    rng = np.random.default_rng(10 + ndim)
    a = random_boxes(rng, 17, ndim, span=20)
    b = np.concatenate([random_boxes(rng, 11, ndim, span=20), a[:3]])  # some identical pairs
    a[0, ndim:] = a[0, :ndim]  # a degenerate box
    got = function(as_kind(a, kind), as_kind(b, kind))
    expected = [[ref_overlap(x, y, name) for y in b.tolist()] for x in a.tolist()]
    assert got.shape == (17, 14)
    np.testing.assert_allclose(to_numpy(got), expected, atol=1e-12)
    degenerate = a[:1].repeat(2, axis=0)  # two degenerate boxes: 0, not nan
    assert np.all(to_numpy(function(as_kind(degenerate, kind), as_kind(degenerate, kind))) == 0)


@pytest.mark.parametrize("function", [box_iou, generalized_box_iou, distance_box_iou])
def test_pairwise_empty_inputs(function):
    some = random_boxes(np.random.default_rng(0), 5, 3)
    assert function(np.zeros((0, 6)), some).shape == (0, 5)
    assert function(some, np.zeros((0, 6))).shape == (5, 0)
    assert function(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 0)
    with pytest.raises(ValueError, match="one width"):
        function(some, np.zeros((2, 4)))


def test_torch_keeps_device_and_dtype_and_numpy_stays_numpy():
    boxes = random_boxes(np.random.default_rng(1), 6, 2)
    for dtype in (torch.float32, torch.float64, torch.float16):
        out = box_iou(torch.as_tensor(boxes, dtype=dtype), torch.as_tensor(boxes, dtype=dtype))
        assert isinstance(out, torch.Tensor) and out.dtype == dtype
        np.testing.assert_allclose(out.double().numpy(), box_iou(boxes, boxes), atol=2e-2)
    assert isinstance(box_iou(boxes.tolist(), boxes), np.ndarray)
    assert box_area(boxes.astype(np.int64)).dtype == np.float64
    assert box_area(torch.as_tensor(boxes).long()).dtype == torch.get_default_dtype()


finite = st.floats(-50, 50, allow_nan=False, width=64)


def _box(drawn):
    low, size = drawn
    return [*low, *(lo + s for lo, s in zip(low, size, strict=True))]


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 3), st.data())
def test_overlap_properties(ndim, data):
    corner = st.lists(finite, min_size=ndim, max_size=ndim)
    extent = st.lists(st.floats(0.01, 30), min_size=ndim, max_size=ndim)
    a = np.array([_box(data.draw(st.tuples(corner, extent))) for _ in range(3)])
    b = np.array([_box(data.draw(st.tuples(corner, extent))) for _ in range(2)])
    iou, giou, diou = box_iou(a, b), generalized_box_iou(a, b), distance_box_iou(a, b)
    np.testing.assert_allclose(iou, box_iou(b, a).T, atol=1e-12)
    np.testing.assert_allclose(giou, generalized_box_iou(b, a).T, atol=1e-12)
    assert np.all((iou >= 0) & (iou <= 1 + 1e-12))
    assert np.all((giou >= -1 - 1e-12) & (giou <= iou + 1e-12))
    assert np.all((diou >= -1 - 1e-12) & (diou <= iou + 1e-12))
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1.0, rtol=1e-9)
    np.testing.assert_allclose(np.diag(generalized_box_iou(a, a)), 1.0, rtol=1e-9)
    np.testing.assert_allclose(np.diag(distance_box_iou(a, a)), 1.0, rtol=1e-9)


# ----------------------------------------------------------------------------- losses
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize(("loss", "name"), [(giou_loss, "giou"), (diou_loss, "diou")])
def test_losses_are_one_minus_the_aligned_overlap(kind, ndim, loss, name):
    rng = np.random.default_rng(20 + ndim)
    pred, target = random_boxes(rng, 9, ndim, span=10), random_boxes(rng, 9, ndim, span=10)
    got = loss(as_kind(pred, kind), as_kind(target, kind))
    expected = [
        1 - ref_overlap(p, t, name) for p, t in zip(pred.tolist(), target.tolist(), strict=True)
    ]
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-5)
    mean = loss(as_kind(pred, kind), as_kind(target, kind), "mean")
    total = loss(as_kind(pred, kind), as_kind(target, kind), "sum")
    np.testing.assert_allclose([float(mean), float(total)], [np.mean(expected), np.sum(expected)])
    empty = as_kind(np.zeros((0, 2 * ndim)), kind)
    assert float(loss(empty, empty, "mean")) == 0 and loss(empty, empty).shape == (0,)
    with pytest.raises(ValueError, match="reduction"):
        loss(as_kind(pred, kind), as_kind(target, kind), "max")
    with pytest.raises(ValueError, match="aligned"):
        loss(as_kind(pred, kind), as_kind(target[:4], kind))


@pytest.mark.parametrize("loss", [giou_loss, diou_loss])
@pytest.mark.parametrize("ndim", [2, 3])
def test_loss_gradients(loss, ndim):
    rng = np.random.default_rng(30 + ndim)
    pred = torch.tensor(random_boxes(rng, 4, ndim, span=6), requires_grad=True)
    target = torch.tensor(random_boxes(rng, 4, ndim, span=6))
    assert torch.autograd.gradcheck(lambda p: loss(p, target, "sum"), (pred,))
    # eps-safe: identical degenerate boxes, and a point predicted far from a box
    point = torch.zeros(2, 2 * ndim, dtype=torch.float64, requires_grad=True)
    loss(point, torch.zeros(2, 2 * ndim, dtype=torch.float64), "sum").backward()
    assert torch.isfinite(point.grad).all()
    half = torch.tensor(random_boxes(rng, 3, ndim), dtype=torch.float16, requires_grad=True)
    loss(half, half.detach() + 1, "mean").backward()
    assert half.grad.dtype == torch.float16 and torch.isfinite(half.grad).all()


# ----------------------------------------------------------------------------- suppression
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_nms_matches_per_class_greedy(ndim, seed):
    rng = np.random.default_rng(seed)
    count = 150 if ndim == 2 else 100
    boxes = random_boxes(rng, count, ndim, span=30, size=(3, 20), integer=seed == 2)
    scores = np.round(rng.random(count), 1)  # many ties
    classes = rng.integers(0, 3, count)
    for threshold in (0.0, 0.3, 0.5, 0.7):
        expected = ref_batched_nms(boxes.tolist(), scores.tolist(), classes.tolist(), threshold)
        single = ref_nms(boxes.tolist(), scores.tolist(), threshold)
        for kind in KINDS:
            b, s = as_kind(boxes, kind), as_kind(scores, kind)
            got = to_numpy(batched_nms(b, s, as_kind(classes, kind, torch.long), threshold))
            assert got.tolist() == expected and got.dtype == np.int64
            assert to_numpy(nms(b, s, threshold)).tolist() == single
        top = batched_nms(boxes, scores, classes, threshold, max_output=5)
        assert top.tolist() == expected[:5]
    assert batched_nms(boxes, scores, classes, 0.5, max_output=0).tolist() == []


def test_nms_float32_ties_and_empty():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    scores = np.array([0.5, 0.5, 0.9, 0.5])
    # equal scores: the lower index wins; the IoU of box 2 with box 0 is 81 / 119
    assert nms(boxes, scores, 0.5).tolist() == [2, 3]
    assert nms(boxes, scores, 0.7).tolist() == [2, 0, 3]
    as_torch = torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores)
    got = batched_nms(*as_torch, torch.tensor([0, 1, 0, 0]), 0.5)
    assert got.dtype == torch.long and got.tolist() == [2, 1, 3]
    assert nms(np.zeros((0, 6)), np.zeros(0), 0.5).shape == (0,)
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).dtype == torch.long
    with pytest.raises(ValueError, match="scores and classes"):
        batched_nms(boxes, scores[:2], np.zeros(4), 0.5)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 3), st.floats(0.1, 0.9))
def test_nms_properties(seed, ndim, threshold):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 80, ndim, span=15, size=(2, 10))
    scores, classes = np.round(rng.random(80), 1), rng.integers(0, 2, 80)
    kept = batched_nms(boxes, scores, classes, threshold)
    assert np.all(np.diff(scores[kept]) <= 0)
    iou = np_iou(boxes, boxes)
    same = classes[:, None] == classes[None]
    inner = (iou[np.ix_(kept, kept)] > threshold) & same[np.ix_(kept, kept)]
    assert not np.any(np.triu(inner, 1))  # kept boxes never overlap within a class
    dropped = np.setdiff1d(np.arange(80), kept)
    assert np.all(((iou[np.ix_(dropped, kept)] > threshold) & same[np.ix_(dropped, kept)]).any(1))


@pytest.mark.parametrize(("ndim", "count"), [(2, 5000), (3, 3000)])
def test_batched_nms_many_boxes(ndim, count):
    rng = np.random.default_rng(ndim)
    span = 400.0 if ndim == 2 else 120.0
    boxes = random_boxes(rng, count, ndim, span=span, size=(4, 40))
    scores, classes = rng.random(count), rng.integers(0, 4, count)
    kept = batched_nms(
        torch.as_tensor(boxes), torch.as_tensor(scores), torch.as_tensor(classes), 0.4
    )
    kept = kept.numpy()
    assert 0 < len(kept) < count and len(set(kept.tolist())) == len(kept)
    # the greedy fixed point: a box is kept iff no better kept box of its class overlaps it
    rank = np.empty(count, dtype=np.int64)
    rank[np.lexsort((np.arange(count), -scores))] = np.arange(count)
    is_kept = np.zeros(count, dtype=bool)
    is_kept[kept] = True
    rows = np.sort(rng.choice(count, 800, replace=False))  # checked on a subsample
    hit = (np_iou(boxes[rows], boxes[kept]) > 0.4) & (classes[rows, None] == classes[kept])
    hit &= rank[kept][None] < rank[rows, None]
    assert np.array_equal(~hit.any(1), is_kept[rows])
    # and the pure-Python reference on a subsample
    sub = rng.choice(count, 400, replace=False)
    got = batched_nms(boxes[sub], scores[sub], classes[sub], 0.4)
    expected = ref_batched_nms(
        boxes[sub].tolist(), scores[sub].tolist(), classes[sub].tolist(), 0.4
    )
    assert got.tolist() == expected


# ----------------------------------------------------------------------------- fusion
def test_wbf_identical_boxes_fuse_with_full_score():
    box = np.array([[1.0, 2.0, 5.0, 9.0]])
    fused, scores, labels = weighted_box_fusion([box] * 3, [np.array([0.8])] * 3, [[1]] * 3)
    np.testing.assert_allclose(fused, box)
    np.testing.assert_allclose(scores, [0.8])
    assert labels.tolist() == [1] and labels.dtype == np.int64


def test_wbf_separate_boxes_and_partial_support():
    a, b = [0.0, 0.0, 0.0, 4.0, 4.0, 4.0], [10.0, 10.0, 10.0, 14.0, 14.0, 14.0]
    boxes = [np.array([a, b]), np.array([a]), np.zeros((0, 6))]
    scores = [np.array([0.9, 0.6]), np.array([0.9]), np.zeros(0)]
    fused, got, labels = weighted_box_fusion(boxes, scores, [[0, 0], [0], []])
    np.testing.assert_allclose(fused, [a, b])
    np.testing.assert_allclose(got, [0.9 * 2 / 3, 0.6 / 3])  # b was seen by 1 model of 3
    # different labels never fuse; weighted coordinates
    fused, got, labels = weighted_box_fusion(
        [np.array([[0, 0, 10, 10.0]]), np.array([[1, 1, 11, 11.0]]), np.array([[0, 0, 10, 10.0]])],
        [[0.9], [0.3], [0.5]],
        [[2], [2], [7]],
    )
    np.testing.assert_allclose(fused, [[0.25, 0.25, 10.25, 10.25], [0, 0, 10, 10]])
    np.testing.assert_allclose(got, [0.6 * 2 / 3, 0.5 / 3])
    assert labels.tolist() == [2, 7]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("conf_type", ["avg", "max"])
def test_wbf_matches_reference(kind, ndim, conf_type):
    rng = np.random.default_rng(40 + ndim)
    base = random_boxes(rng, 12, ndim, span=60, size=(5, 15))
    boxes, scores, labels = [], [], []
    for _ in range(4):  # four "models": jittered copies of a subset, plus noise boxes
        pick = rng.random(12) < 0.7
        jitter = base[pick] + rng.normal(0, 0.8, (pick.sum(), 2 * ndim))
        boxes.append(np.concatenate([jitter, random_boxes(rng, 3, ndim, span=60)]))
        scores.append(rng.random(len(boxes[-1])))
        labels.append(np.concatenate([np.arange(12)[pick] % 3, rng.integers(0, 3, 3)]))
    weights = [1.0, 2.0, 1.0, 0.5]
    got = weighted_box_fusion(
        [as_kind(b, kind) for b in boxes],
        [as_kind(s, kind) for s in scores],
        [as_kind(v, kind, torch.long) for v in labels],
        iou_threshold=0.5,
        skip_threshold=0.1,
        weights=weights,
        conf_type=conf_type,
    )
    expected = ref_wbf(
        [b.tolist() for b in boxes],
        [s.tolist() for s in scores],
        [v.tolist() for v in labels],
        0.5,
        weights,
        0.1,
        conf_type,
    )
    assert all(isinstance(x, torch.Tensor if kind == "torch" else np.ndarray) for x in got)
    fused, fused_scores, fused_labels = (to_numpy(x) for x in got)
    assert len(fused) == len(expected)
    np.testing.assert_allclose(fused_scores, [e[1] for e in expected], rtol=1e-9)
    np.testing.assert_allclose(fused, [e[0] for e in expected], rtol=1e-9)
    assert fused_labels.tolist() == [e[2] for e in expected]


def test_wbf_empty_and_errors():
    fused, scores, labels = weighted_box_fusion([np.zeros((0, 4))], [np.zeros(0)], [[]])
    assert fused.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    assert weighted_box_fusion([], [], [])[0].shape == (0, 4)
    with pytest.raises(ValueError, match="weights"):
        weighted_box_fusion([np.zeros((0, 4))], [np.zeros(0)], [[]], weights=[1, 2])
    with pytest.raises(ValueError, match="conf_type"):
        weighted_box_fusion([], [], [], conf_type="median")
    with pytest.raises(ValueError, match="2 boxes, 1 scores"):
        weighted_box_fusion([np.ones((2, 4))], [[0.5]], [[0, 0]])


# ----------------------------------------------------------------------------- label maps
def test_boxes_from_labels_hand_made():
    label_map = np.zeros((6, 8), dtype=np.uint8)
    label_map[0:2, 0:2] = 1  # rows 0-1, columns 0-1
    label_map[4:6, 5:8] = 1  # a second component of label 1
    label_map[2:4, 2:4] = 2  # touches the first only diagonally
    boxes, labels = boxes_from_labels(label_map)
    np.testing.assert_array_equal(
        boxes, [[-0.5, -0.5, 1.5, 1.5], [4.5, 3.5, 7.5, 5.5], [1.5, 1.5, 3.5, 3.5]]
    )
    assert labels.tolist() == [1, 1, 2] and labels.dtype == np.int64
    boxes, labels = boxes_from_labels(torch.as_tensor(label_map), per="class")
    assert isinstance(boxes, torch.Tensor)
    np.testing.assert_array_equal(boxes.numpy(), [[-0.5, -0.5, 7.5, 5.5], [1.5, 1.5, 3.5, 3.5]])
    assert labels.tolist() == [1, 2]
    boxes, labels = boxes_from_labels(label_map, spacing=(2.0, 0.5), ignore=(0, 2))
    np.testing.assert_array_equal(boxes, [[-1, -0.25, 3, 0.75], [9, 1.75, 15, 2.75]])
    # diagonal neighbours join with full connectivity
    both = np.where(label_map == 2, 1, label_map)
    assert len(boxes_from_labels(both)[0]) == 3
    assert len(boxes_from_labels(both, connectivity=2)[0]) == 2
    empty = boxes_from_labels(np.zeros((4, 4, 4), dtype=int))
    assert empty[0].shape == (0, 6) and empty[1].shape == (0,)
    with pytest.raises(ValueError, match="integer label map"):
        boxes_from_labels(np.zeros((4, 4)))


@pytest.mark.parametrize("values", [(0, 1, 2, 3), (-2, 0, 5, 3_000_000)])
@pytest.mark.parametrize("per", ["component", "class"])
def test_boxes_from_labels_matches_nonzero(values, per):
    from scipy import ndimage

    rng = np.random.default_rng(5)
    label_map = rng.choice(values, size=(7, 9, 11), p=[0.7, 0.1, 0.1, 0.1]).astype(np.int64)
    boxes, labels = boxes_from_labels(label_map, per=per, ignore=(values[1],))
    expected = []
    for value in sorted(set(values) - {values[1]}):
        mask = label_map == value
        parts = ndimage.label(mask)[0] if per == "component" else mask.astype(int)
        for k in range(1, parts.max() + 1):
            z, y, x = np.nonzero(parts == k)
            low = [x.min() - 0.5, y.min() - 0.5, z.min() - 0.5]
            high = [x.max() + 0.5, y.max() + 0.5, z.max() + 0.5]
            expected.append((value, low + high))
    assert labels.tolist() == [v for v, _ in expected]
    np.testing.assert_array_equal(boxes, np.array([b for _, b in expected]).reshape(-1, 6))


# ----------------------------------------------------------------------------- crops and checks
@pytest.mark.parametrize("kind", KINDS)
def test_crop_boxes_keeps_clips_and_drops(kind):
    boxes = np.array(
        [
            [2.0, 2.0, 6.0, 6.0],  # inside: kept as is
            [-2.0, 3.0, 2.0, 5.0],  # 5/8 visible: kept, clipped
            [-6.0, 3.0, 2.0, 5.0],  # 5/16 visible: dropped
            [20.0, 20.0, 24.0, 24.0],  # outside: dropped
            [9.0, 9.0, 11.0, 11.0],  # 1/16 visible
        ]
    )
    got, keep = crop_boxes(as_kind(boxes, kind), [0, 0], [10, 10])  # window [-0.5, 9.5]
    assert to_numpy(keep).tolist() == [0, 1] and to_numpy(keep).dtype == np.int64
    np.testing.assert_allclose(to_numpy(got), [[2, 2, 6, 6], [-0.5, 3, 2, 5]])
    got, keep = crop_boxes(as_kind(boxes, kind), [1, 2], [9, 8], min_visible=0.0)
    assert to_numpy(keep).tolist() == [0, 1, 2, 4]
    np.testing.assert_allclose(to_numpy(got)[1], [-0.5, 1, 1, 3])  # moved by (1, 2)
    # against the loop reference, in 3D
    rng = np.random.default_rng(3)
    cubes = random_boxes(rng, 50, 3, span=30, size=(2, 12))
    start, size = np.array([5, 8, 2]), np.array([12, 10, 20])
    got, keep = crop_boxes(as_kind(cubes, kind), start, size, min_visible=0.4)
    expected = []
    for i, b in enumerate(cubes.tolist()):
        low = [min(max(b[k], start[k] - 0.5), start[k] + size[k] - 0.5) for k in range(3)]
        high = [min(max(b[k + 3], start[k] - 0.5), start[k] + size[k] - 0.5) for k in range(3)]
        visible = ref_volume(low + high) / ref_volume(b)
        if visible >= 0.4:
            expected.append((i, [v - s for v, s in zip(low + high, [*start, *start], strict=True)]))
    assert to_numpy(keep).tolist() == [i for i, _ in expected]
    np.testing.assert_allclose(to_numpy(got), np.array([b for _, b in expected]).reshape(-1, 6))
    with pytest.raises(ValueError, match="min_visible"):
        crop_boxes(boxes, [0, 0], [4, 4], min_visible=2)
    with pytest.raises(ValueError, match="index order"):
        crop_boxes(boxes, [0, 0, 0], [4, 4, 4])


def test_clip_boxes_uses_array_order():
    boxes = np.array([[-3.0, -3.0, -1.0, 40.0, 4.0, 2.0]])
    clipped = clip_boxes(boxes, (3, 10, 20))  # (z, y, x)
    np.testing.assert_array_equal(clipped, [[-0.5, -0.5, -0.5, 19.5, 4.0, 2.0]])
    clipped = clip_boxes(torch.as_tensor(boxes[:, [0, 1, 3, 4]]), (1, 10, 20))  # a channel axis
    np.testing.assert_array_equal(clipped.numpy(), [[-0.5, -0.5, 19.5, 4.0]])


def test_check_boxes_names_the_problem():
    good = np.array([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 9.0]])
    check_boxes(good)
    check_boxes(torch.as_tensor(good), (10, 10))
    cases = [
        (np.zeros((2, 5)), None, "expected \\(N, 4\\) or \\(N, 6\\)"),
        (np.array([[0.0, np.nan, 1.0, 1.0]]), None, "non-finite"),
        (np.array([[0.0, 0.0, 0.0, 1.0]]), None, "zero or negative size"),
        (np.array([[0.0, 0.0, 2.0, 1.0], [0, 3, 1, 2]]), None, r"gt\[1\].*negative"),
        (np.array([[30.0, 0.0, 40.0, 4.0]]), (10, 20), "entirely outside"),
        (np.array([[19.5, 0.0, 40.0, 4.0]]), (10, 20), "entirely outside"),
        ([["a", "b", "c", "d"]], None, "not a numeric array"),
    ]
    for boxes, shape, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            check_boxes(boxes, shape, name="gt")
        assert "\n" not in str(error.value) and str(error.value).startswith("gt")
    check_boxes(np.array([[18.0, 0.0, 40.0, 4.0]]), (10, 20))  # partly inside is fine
