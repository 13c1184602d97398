"""Axis-aligned boxes in 2D and 3D: overlaps, losses, suppression, fusion and conversions.

**Convention** (the one of :mod:`medlens.transforms.batch`): ``N`` boxes are an ``(N, 2 * ndim)``
array ``(x_min, y_min[, z_min], x_max, y_max[, z_max])`` in continuous *index coordinates*, index
order ``(x, y, z)`` (``x`` along the *last* array axis), with voxel centres at integers: a box
covering voxels ``a..b`` spans ``[a - 0.5, b + 0.5]``, and an image of array shape ``(D, H, W)``
spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5] x [-0.5, D - 0.5]``. ``ndim`` (2 or 3) is read from the
width (4 or 6). Sizes are ``max - min``; a box with a size ``<= 0`` is degenerate (area zero).

**Arrays.** Every function takes torch tensors (results are torch, on the same device, in the
same floating dtype; half precision is computed in float32) or numpy arrays and sequences
(results are numpy, float64 for integer input). Each operation is written once, in torch.
Indices are ``int64``. Empty inputs give empty results of the right shape. Overlap ratios with
a zero denominator (two degenerate boxes) are 0; the losses add ``eps`` to their denominators
instead, so that their gradients stay finite.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from scipy import ndimage

__all__ = [
    "batched_nms",
    "box_area",
    "box_centres",
    "box_iou",
    "box_sizes",
    "boxes_from_labels",
    "check_boxes",
    "clip_boxes",
    "crop_boxes",
    "diou_loss",
    "distance_box_iou",
    "generalized_box_iou",
    "giou_loss",
    "nms",
    "weighted_box_fusion",
]

Array = TypeVar("Array", torch.Tensor, np.ndarray)
_Kind = Literal["iou", "giou", "diou"]
_NMS_CHUNK = 1024  # boxes resolved per greedy step, and the block of kept boxes compared at once
_MAX_LABEL = 1 << 20  # larger label values are found one by one, not by one find_objects list


def _tensors(*arrays: Any) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], Any]]:
    """Floating tensors on one device and dtype, and the function that returns a result in the
    callers' kind: torch if any input was a tensor, numpy otherwise."""
    given = [a for a in arrays if isinstance(a, torch.Tensor)]
    floating = [a.dtype for a in given if a.is_floating_point()]
    dtype = torch.get_default_dtype() if given else torch.float64
    dtype = functools.reduce(torch.promote_types, floating) if floating else dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    out = [_plain(a).to(given[0].device if given else "cpu", work) for a in arrays]

    def back(result: torch.Tensor) -> Any:
        if given:
            return result.to(dtype) if result.is_floating_point() else result
        return result.detach().cpu().numpy()

    return out, back


def _plain(x: Any) -> torch.Tensor:
    """A tensor of ``x`` in its own dtype (scores, classes, labels)."""
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _ndim(*boxes: torch.Tensor, name: str = "boxes") -> int:
    """``ndim`` of ``(N, 4)`` or ``(N, 6)`` boxes; several arrays must agree."""
    shapes = [tuple(b.shape) for b in boxes]
    if any(len(s) != 2 or s[1] not in (4, 6) or s[1] != shapes[0][1] for s in shapes):
        shown = ", ".join(map(str, shapes))
        raise ValueError(f"{name}: expected (N, 4) or (N, 6) arrays of one width, got {shown}")
    return shapes[0][1] // 2


def _div(num: torch.Tensor, den: torch.Tensor, eps: float) -> torch.Tensor:
    """``num / (den + eps)``, or ``num / den`` with ``0 / 0 = 0`` when ``eps`` is 0."""
    return num / (den + eps) if eps > 0 else num / torch.where(den > 0, den, torch.ones_like(den))


def _volume(boxes: torch.Tensor) -> torch.Tensor:
    """Areas or volumes of ``(..., 2n)`` boxes, zero when degenerate."""
    n = boxes.shape[-1] // 2
    return (boxes[..., n:] - boxes[..., :n]).clamp(min=0).prod(-1)


def _overlap(a: torch.Tensor, b: torch.Tensor, kind: _Kind, eps: float = 0.0) -> torch.Tensor:
    """IoU, GIoU or DIoU of broadcastable ``(..., 2n)`` boxes: the one formula for all uses."""
    n = a.shape[-1] // 2
    a_lo, a_hi, b_lo, b_hi = a[..., :n], a[..., n:], b[..., :n], b[..., n:]
    inter = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp(min=0).prod(-1)
    union = _volume(a) + _volume(b) - inter
    iou = _div(inter, union, eps)
    if kind == "iou":
        return iou
    outer = torch.maximum(a_hi, b_hi) - torch.minimum(a_lo, b_lo)
    if kind == "giou":
        enclosing = outer.clamp(min=0).prod(-1)
        return iou - _div(enclosing - union, enclosing, eps)
    centre_distance = (((a_lo + a_hi) - (b_lo + b_hi)) / 2).pow(2).sum(-1)
    return iou - _div(centre_distance, outer.pow(2).sum(-1), eps)


def _pairwise(a: Array, b: Array, kind: _Kind) -> Array:
    (ta, tb), back = _tensors(a, b)
    _ndim(ta, tb)
    return back(_overlap(ta[:, None, :], tb[None, :, :], kind))


def box_area(boxes: Array) -> Array:
    """Areas (2D) or volumes (3D) ``(N,)`` of ``(N, 2 * ndim)`` boxes; zero when degenerate."""
    (t,), back = _tensors(boxes)
    _ndim(t)
    return back(_volume(t))


def box_centres(boxes: Array) -> Array:
    """Centres ``(N, ndim)`` of the boxes, index order ``(x, y[, z])``."""
    (t,), back = _tensors(boxes)
    n = _ndim(t)
    return back((t[:, :n] + t[:, n:]) / 2)


def box_sizes(boxes: Array) -> Array:
    """Sizes ``max - min`` ``(N, ndim)`` of the boxes, index order; negative ones are kept."""
    (t,), back = _tensors(boxes)
    n = _ndim(t)
    return back(t[:, n:] - t[:, :n])


def box_iou(a: Array, b: Array) -> Array:
    """Pairwise intersection over union ``(N, M)`` of boxes ``a`` ``(N, 2n)`` and ``b``."""
    return _pairwise(a, b, "iou")


def generalized_box_iou(a: Array, b: Array) -> Array:
    """Pairwise generalised IoU ``(N, M)``: IoU minus the share of the enclosing box that
    neither box covers (Rezatofighi et al. 2019); in ``[-1, 1]``."""
    return _pairwise(a, b, "giou")


def distance_box_iou(a: Array, b: Array) -> Array:
    """Pairwise distance IoU ``(N, M)``: IoU minus the squared distance of the centres over the
    squared diagonal of the enclosing box (Zheng et al. 2020); in ``[-1, 1]``."""
    return _pairwise(a, b, "diou")


def _loss(pred: Array, target: Array, kind: _Kind, reduction: str, eps: float) -> Array:
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    (p, t), back = _tensors(pred, target)
    if _ndim(p, t, name="pred and target") and p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} are not aligned")
    loss = 1 - _overlap(p, t, kind, eps)
    if reduction != "none":
        loss = loss.mean() if reduction == "mean" and loss.numel() else loss.sum()
    return back(loss)


def giou_loss(pred: Array, target: Array, reduction: str = "none", *, eps: float = 1e-7) -> Array:
    """``1 - GIoU`` of aligned pairs ``pred[i]``, ``target[i]``: ``(N,)``, or its mean or sum.

    Args:
        pred: predicted boxes ``(N, 2n)``; gradients flow through them.
        target: target boxes, same shape.
        reduction: ``"none"``, ``"mean"`` (0 for no boxes) or ``"sum"``.
        eps: added to every denominator so degenerate boxes give finite values and gradients.
    """
    return _loss(pred, target, "giou", reduction, eps)


def diou_loss(pred: Array, target: Array, reduction: str = "none", *, eps: float = 1e-7) -> Array:
    """``1 - DIoU`` of aligned pairs ``(N,)``, or its mean or sum; arguments as :func:`giou_loss`.

    Unlike GIoU, the centre-distance term keeps pulling a prediction that encloses its target.
    """
    return _loss(pred, target, "diou", reduction, eps)


def batched_nms(
    boxes: Array,
    scores: Array,
    classes: Array,
    iou_threshold: float,
    *,
    max_output: int | None = None,
) -> Array:
    """Class-aware greedy non-maximum suppression; same result as ``torchvision.ops.batched_nms``.

    Boxes are visited by decreasing score (ties: lower index first); a box is dropped when its
    IoU with an already kept box *of the same class* is above ``iou_threshold``. Chunks of boxes
    are compared with all kept boxes at once, then resolved within on a boolean matrix.

    Args:
        boxes: ``(N, 2n)`` boxes, 2D or 3D.
        scores: ``(N,)`` scores.
        classes: ``(N,)`` integer classes; boxes of different classes never suppress each other.
        iou_threshold: suppress overlaps strictly above this IoU.
        max_output: keep at most this many boxes (the best scored).

    Returns:
        Indices ``(K,)`` (int64) of the kept boxes, by decreasing score.
    """
    (b,), back = _tensors(boxes)
    s, c = _plain(scores), _plain(classes)
    if _ndim(b) and (s.shape != (len(b),) or c.shape != (len(b),)):
        raise ValueError(f"{len(b)} boxes need scores and classes of shape ({len(b)},)")
    order = torch.sort(s.to(b.device), descending=True, stable=True).indices
    limit = len(b) if max_output is None else max(0, int(max_output))
    b, c = b[order], c.to(b.device)[order]
    kept = torch.zeros(0, dtype=torch.long, device=b.device)  # positions in the sorted order
    for start in range(0, len(b) if limit else 0, _NMS_CHUNK):
        chunk, chunk_c = b[start : start + _NMS_CHUNK], c[start : start + _NMS_CHUNK]
        alive = np.ones(len(chunk), dtype=bool)
        for k in range(0, len(kept), _NMS_CHUNK):  # against the kept boxes, a block at a time
            block = kept[k : k + _NMS_CHUNK]
            alive[_above(chunk, chunk_c, b[block], c[block], iou_threshold)[0].cpu().numpy()] = 0
        i, j = (x.cpu().numpy() for x in _above(chunk, chunk_c, chunk, chunk_c, iou_threshold))
        within = np.zeros((len(chunk), len(chunk)), dtype=bool)
        within[i, j] = i < j
        for row in np.unique(i[i < j]):  # the sequential part, on the rows that suppress some
            if alive[row]:
                alive &= ~within[row]
        new = torch.from_numpy(np.flatnonzero(alive)).to(b.device) + start
        kept = torch.cat([kept, new])[:limit]
        if len(kept) == limit:
            break
    return back(order[kept])


def _above(
    a: torch.Tensor, a_class: torch.Tensor, b: torch.Tensor, b_class: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``(i, j)`` of same-class boxes with IoU above ``threshold``; only the pairs that
    overlap along x (the others have IoU 0) get their IoU computed."""
    n = a.shape[-1] // 2
    near = a_class[:, None] == b_class[None]
    if threshold >= 0:
        near &= torch.minimum(a[:, None, n], b[None, :, n]) > torch.maximum(a[:, None, 0], b[:, 0])
    i, j = torch.nonzero(near, as_tuple=True)
    hit = _overlap(a[i], b[j], "iou") > threshold
    return i[hit], j[hit]


def nms(
    boxes: Array, scores: Array, iou_threshold: float, *, max_output: int | None = None
) -> Array:
    """Greedy non-maximum suppression of one class; see :func:`batched_nms`."""
    classes = torch.zeros(len(scores), dtype=torch.long)
    return batched_nms(boxes, scores, classes, iou_threshold, max_output=max_output)


def weighted_box_fusion(
    boxes_list: Sequence[Array],
    scores_list: Sequence[Array],
    labels_list: Sequence[Array],
    *,
    iou_threshold: float = 0.55,
    skip_threshold: float = 0.0,
    weights: Sequence[float] | None = None,
    conf_type: Literal["avg", "max"] = "avg",
) -> tuple[Array, Array, Array]:
    """Weighted Boxes Fusion (Solovyev et al. 2021, arXiv:1910.13302) of several predictions.

    Merges the boxes of ``T`` models, folds or test-time augmentations of one image. Boxes
    scoring at least ``skip_threshold`` are visited by decreasing (weighted) score, per label;
    each joins the cluster whose current fused box it overlaps most if that IoU is above
    ``iou_threshold``, else starts a cluster. A fused box is the score-weighted mean of its
    cluster's boxes. Its score is the mean weighted score of the cluster times
    ``min(cluster size, T) / sum(weights)`` (``conf_type="avg"``: a box seen by one model of three
    keeps a third of its score), or the cluster's best score over ``max(weights)``
    (``conf_type="max"``). With unit weights these are the paper's rules.

    Args:
        boxes_list: one ``(N_t, 2n)`` array per model, all 2D or all 3D, in one frame.
        scores_list: one ``(N_t,)`` array of scores per model.
        labels_list: one ``(N_t,)`` array of integer labels per model.
        iou_threshold: IoU with a fused box above which a box joins that cluster.
        skip_threshold: boxes scoring below it are ignored.
        weights: one weight per model (default all 1); scores are multiplied by them.
        conf_type: ``"avg"`` or ``"max"``, the fused score rule above.

    Returns:
        ``(boxes (K, 2n), scores (K,), labels (K,) int64)``, by decreasing score.
    """
    t_models = len(boxes_list)
    if not (len(scores_list) == len(labels_list) == t_models):
        raise ValueError("boxes_list, scores_list and labels_list need one entry per model")
    if conf_type not in ("avg", "max"):
        raise ValueError(f"conf_type must be 'avg' or 'max', got {conf_type!r}")
    w = [1.0] * t_models if weights is None else [float(v) for v in weights]
    if len(w) != t_models:
        raise ValueError(f"{len(w)} weights for {t_models} models")
    tensors, back = _tensors(*boxes_list, *scores_list)
    device = next((t.device for t in tensors), torch.device("cpu"))
    dtype = tensors[0].dtype if tensors else torch.float64
    width = next((b.shape[-1] for b in tensors[:t_models] if b.numel()), 4)
    empty = [torch.zeros(0, width, dtype=dtype), *[torch.zeros(0, dtype=dtype)] * 2]
    models = [(*empty, torch.zeros(0, dtype=torch.long))]  # a sequential algorithm: on the CPU
    for i, (b, s, v) in enumerate(zip(tensors, tensors[t_models:], labels_list, strict=False)):
        b, s, v = b.cpu(), s.cpu().reshape(-1), _plain(v).reshape(-1).long()
        b = b if b.numel() else b.reshape(0, width)
        if _ndim(b, name=f"boxes_list[{i}]") and not len(b) == len(s) == len(v):
            raise ValueError(f"model {i} has {len(b)} boxes, {len(s)} scores, {len(v)} labels")
        models.append((b, s, s * w[i], v.cpu()))
    boxes, raw, scores, labels = (torch.cat(x) for x in zip(*models, strict=True))
    use = raw >= skip_threshold
    out = [(boxes[:0], scores[:0], labels[:0])]
    for label in torch.unique(labels[use]).tolist():
        idx = torch.nonzero(use & (labels == label)).flatten()
        idx = idx[torch.sort(scores[idx], descending=True, stable=True).indices]
        fused, total, count, best = _fuse(boxes[idx], scores[idx], iou_threshold)
        avg = total / count * count.clamp(max=t_models) / sum(w)
        score = avg if conf_type == "avg" else best / max(w)
        out.append((fused, score, torch.full((len(fused),), label, dtype=torch.long)))
    fused, score, label = (torch.cat(x).to(device) for x in zip(*out, strict=True))
    order = torch.sort(score, descending=True, stable=True).indices
    return back(fused[order]), back(score[order]), back(label[order])


def _fuse(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, ...]:
    """Clusters of boxes sorted by score: fused boxes ``(K, 2n)`` and per cluster the score
    sum, the box count and the best score, each ``(K,)``."""
    # per cluster: sums of score * box and of boxes (for clusters whose scores are all zero)
    weighted, plain, fused = (torch.zeros_like(boxes) for _ in range(3))
    total, count, best = (torch.zeros_like(scores) for _ in range(3))
    k = 0
    for j in range(len(boxes)):
        c = k
        if k:
            iou = _overlap(boxes[j], fused[:k], "iou")
            top = int(torch.argmax(iou))
            c = top if float(iou[top]) > threshold else k
        k += c == k
        weighted[c] += scores[j] * boxes[j]
        plain[c] += boxes[j]
        total[c] += scores[j]
        count[c] += 1
        best[c] = torch.maximum(best[c], scores[j])
        fused[c] = weighted[c] / total[c] if total[c] > 0 else plain[c] / count[c]
    return fused[:k], total[:k], count[:k], best[:k]


def _window(t: torch.Tensor, low: Any, high: Any) -> torch.Tensor:
    """Boxes clipped to the window ``[low, high]`` (index order, broadcast per axis)."""
    n = t.shape[-1] // 2
    low, high = (torch.as_tensor(v).to(t).expand(n).repeat(2) for v in (low, high))
    return torch.minimum(torch.maximum(t, low), high)


def _image_high(shape: Sequence[int], n: int) -> list[float]:
    """Upper index limits ``size - 0.5`` of an image of array shape ``shape`` (trailing axes)."""
    if len(shape) < n:
        raise ValueError(f"an image of shape {tuple(shape)} cannot hold {n}D boxes")
    return [float(size) - 0.5 for size in reversed(tuple(shape)[-n:])]


def clip_boxes(boxes: Array, shape: Sequence[int]) -> Array:
    """Boxes clipped to an image of array shape ``shape`` (``(D, H, W)``, array order; its last
    ``ndim`` entries are used), i.e. to ``[-0.5, size - 0.5]`` per axis."""
    (t,), back = _tensors(boxes)
    return back(_window(t, -0.5, _image_high(shape, _ndim(t))))


def crop_boxes(
    boxes: Array, start: Sequence[float], size: Sequence[float], *, min_visible: float = 0.5
) -> tuple[Array, Array]:
    """Boxes moved into the crop window of ``size`` voxels starting at voxel ``start``.

    Each box is clipped to the window ``[start - 0.5, start + size - 0.5]``; it is kept when
    the clipped part is not empty and its share of the box's volume is at least
    ``min_visible`` (a degenerate box counts as fully visible inside the window). Kept boxes are
    returned in the crop's own index coordinates (``start`` becomes 0).

    Args:
        boxes: ``(N, 2n)`` boxes.
        start: first voxel of the crop, index order ``(x, y[, z])``.
        size: voxels of the crop per axis, index order.
        min_visible: smallest visible fraction of a kept box, in ``[0, 1]``.

    Returns:
        ``(boxes (K, 2n), indices (K,) int64)``: the kept boxes and their rows in ``boxes``.
    """
    if not 0 <= min_visible <= 1:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    (t,), back = _tensors(boxes)
    n = _ndim(t)
    low, high = torch.as_tensor(start).to(t), torch.as_tensor(size).to(t)
    high = low + high
    if low.shape != (n,) or high.shape != (n,):
        raise ValueError(f"start and size need {n} values (index order) for {n}D boxes")
    clipped = _window(t, low - 0.5, high - 0.5)
    area, visible = _volume(t), _volume(clipped)
    visible = torch.where(area > 0, _div(visible, area, 0.0), (clipped == t).all(1).to(t.dtype))
    keep = torch.nonzero((visible > 0) & (visible >= min_visible)).flatten()
    return back(clipped[keep] - low.repeat(2)), back(keep)


def _value_slices(array: np.ndarray, ignore: Collection[int]) -> list[tuple[int, tuple]]:
    """``(value, bounding slices)`` of every value of an integer array not in ``ignore``."""
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    dense = 0 < high <= _MAX_LABEL  # positive values in one pass (find_objects skips the others)
    slices = ndimage.find_objects(array, max_label=high) if dense else []
    found = [(v, where) for v, where in enumerate(slices, 1) if where and v not in ignore]
    others = np.unique(array if not dense else array[array < 0] if low < 0 else []).tolist()
    for value in sorted({*others, *([0] if dense and low <= 0 else [])} - set(ignore)):
        where = ndimage.find_objects((array == value).view(np.uint8))  # [] when absent
        found += [(value, where[0])] if where else []
    return sorted(found, key=lambda item: item[0])


def boxes_from_labels(
    label_map: Array,
    *,
    per: Literal["component", "class"] = "component",
    spacing: Sequence[float] | None = None,
    connectivity: int | None = None,
    ignore: Collection[int] = (0,),
) -> tuple[Array, Array]:
    """Bounding boxes of the objects of an integer label map ``([D,] H, W)``.

    Args:
        label_map: integer (or boolean) label map, array order ``(z, y, x)`` or ``(y, x)``.
        per: ``"component"``: one box per connected component of each label value;
            ``"class"``: one box per label value present (organ localisation).
        spacing: voxel spacing in index order; when given, coordinates are multiplied by it
            (millimetres from the centre of the first voxel) instead of being in voxels.
        connectivity: neighbours that connect components, as
            :func:`scipy.ndimage.generate_binary_structure`: 1 (faces, the default) up to ndim.
        ignore: label values that get no box (background).

    Returns:
        ``(boxes (N, 2n), labels (N,) int64)`` in index coordinates (voxels ``a..b`` span
        ``[a - 0.5, b + 0.5]``), by label value, then components in scan order. numpy in, numpy
        out (float64); a tensor gives tensors (default float dtype) on its device.
    """
    if per not in ("component", "class"):
        raise ValueError(f"per must be 'component' or 'class', got {per!r}")
    as_torch = isinstance(label_map, torch.Tensor)
    array = label_map.detach().cpu().numpy() if as_torch else np.asarray(label_map)
    if array.ndim not in (2, 3) or not (array.dtype == bool or array.dtype.kind in "iu"):
        raise ValueError(f"expected a 2D or 3D integer label map, got {array.dtype} {array.shape}")
    array = array.view(np.uint8) if array.dtype == bool else array
    n = array.ndim
    structure = ndimage.generate_binary_structure(n, connectivity or 1)
    rows: list[list[float]] = []
    labels: list[int] = []
    for value, where in _value_slices(array, ignore):
        mask = array[where] == value
        objects = mask.view(np.uint8) if per == "class" else ndimage.label(mask, structure)[0]
        for piece in ndimage.find_objects(objects):
            first = [w.start + p.start for w, p in zip(where, piece, strict=True)][::-1]
            last = [w.start + p.stop - 1 for w, p in zip(where, piece, strict=True)][::-1]
            rows.append([v - 0.5 for v in first] + [v + 0.5 for v in last])
            labels.append(value)
    boxes = np.array(rows, dtype=np.float64).reshape(-1, 2 * n)
    if spacing is not None:
        boxes = boxes * np.tile(np.asarray(spacing, dtype=np.float64).reshape(n), 2)
    found = np.array(labels, dtype=np.int64)
    if not as_torch:
        return boxes, found
    boxes_t = torch.from_numpy(boxes).to(label_map.device, torch.get_default_dtype())
    return boxes_t, torch.from_numpy(found).to(label_map.device)


def check_boxes(boxes: Any, shape: Sequence[int] | None = None, *, name: str = "boxes") -> None:
    """Raise :class:`ValueError` with a one-line message if ``boxes`` are not usable.

    Checks the ``(N, 4)`` / ``(N, 6)`` shape, finite coordinates, positive sizes and, with the
    array ``shape`` of an image (array order, trailing ``ndim`` entries used), that no box lies
    entirely outside it (touching its border only counts as outside).
    """
    try:
        (t,), _ = _tensors(boxes)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name}: not a numeric array ({error})") from None
    n = _ndim(t, name=name)

    def fail(bad: torch.Tensor, problem: str) -> None:
        if bad.any():
            i = int(torch.nonzero(bad)[0])
            row = ", ".join(f"{float(v):g}" for v in t[i])
            raise ValueError(f"{name}[{i}] ({row}): {problem}")

    fail(~torch.isfinite(t).all(1), "non-finite coordinates")
    fail((t[:, n:] <= t[:, :n]).any(1), "zero or negative size (max <= min)")
    if shape is not None:
        clipped = _window(t, -0.5, _image_high(shape, n))
        outside = (clipped[:, n:] <= clipped[:, :n]).any(1)
        fail(outside, f"entirely outside an image of shape {tuple(int(v) for v in shape)}")
