"""FCOS targets and loss, 2D and 3D: which location learns which box, and how wrong it is.

Assignment (Tian et al. 2019, with centre sampling as in its later versions): a location is a
candidate for a box when it lies inside the box, within ``centre_radius`` strides of the box's
centre, and the largest of its distances to the box's faces falls in its level's size range
(``ranges``, pixels; the plan derives them from the boxes' sizes). A location claimed by several
boxes learns the smallest. Positive locations learn their box's class, the distances to its
faces (in strides) and its centre-ness ``(prod_a min(lo_a, hi_a) / max(lo_a, hi_a)) ** (1/n)``
(the square root of the 2D product, the cube root in 3D).

The loss is the sum of the sigmoid focal loss of the classes over all locations (alpha 0.25,
gamma 2) divided by the number of positives, the GIoU loss of the positives' boxes weighted by
their centre-ness target, and the binary cross-entropy of the centre-ness of the positives.
Targets come as one dict per image with ``boxes`` ``(G, 2n)`` (index coordinates of the input,
``x, y[, z]``) and ``labels`` ``(G,)``.

With a dense head (:class:`~medlens.models.fcos.FCOS` ``dense_head``) and ``dense_weight``, the
loss adds ``dense_weight`` times the binary cross-entropy plus the batch soft Dice of its per-pixel
logits, upsampled to the input, against the ellipse (ellipsoid) inscribed in each box
(:func:`box_ellipsoids`): Retina U-Net's dense supervision (Jaeger et al. 2018), which nnDetection
uses for the same reason, with boxes standing in for masks as LUNA16's spheres do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from medlens.boxes import giou_loss

__all__ = ["FCOSLoss", "assign_targets", "box_ellipsoids", "decode_boxes"]


def decode_boxes(points: torch.Tensor, strides: torch.Tensor, distances: torch.Tensor):
    """Boxes ``(..., P, 2n)`` from locations ``(P, n)``, strides ``(P,)`` and the predicted
    distances ``(..., P, 2n)`` (in strides) to the low and high faces."""
    n = points.shape[-1]
    scaled = distances * strides[:, None]
    return torch.cat([points - scaled[..., :n], points + scaled[..., n:]], dim=-1)


def assign_targets(
    points: torch.Tensor,
    strides: torch.Tensor,
    ranges: torch.Tensor,
    boxes: torch.Tensor,
    centre_radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each location ``(P,)``: the index of the box it learns (-1: background), and the
    distances ``(P, 2n)`` (pixels) to that box's faces.

    ``ranges`` ``(P, 2)``: each location's level's size range ``[lo, hi)`` of the largest
    distance to a face.
    """
    p, n = points.shape
    if boxes.numel() == 0:
        return torch.full((p,), -1, dtype=torch.long, device=points.device), points.new_zeros(
            (p, 2 * n)
        )
    low, high = boxes[:, :n], boxes[:, n:]
    to_low = points[:, None, :] - low[None]  # (P, G, n)
    to_high = high[None] - points[:, None, :]
    distances = torch.cat([to_low, to_high], dim=-1)  # (P, G, 2n)
    inside = distances.min(dim=-1).values > 0
    centre = (low + high) / 2
    radius = strides[:, None, None] * centre_radius
    near = ((points[:, None, :] - centre[None]).abs() < radius).all(dim=-1)
    reach = distances.max(dim=-1).values
    fits = (reach >= ranges[:, None, 0]) & (reach < ranges[:, None, 1])
    # a box smaller than one stride still needs a location: its nearest one on the finest level
    candidate = inside & near & fits
    volume = (high - low).clamp(min=0).prod(dim=-1)  # (G,)
    cost = torch.where(candidate, volume[None].expand(p, -1), torch.full_like(reach, float("inf")))
    best, which = cost.min(dim=1)
    which = torch.where(torch.isfinite(best), which, torch.full_like(which, -1))
    unclaimed = ~candidate.any(dim=0)
    if unclaimed.any():
        finest = strides == strides.min()
        for g in torch.nonzero(unclaimed).flatten().tolist():
            d2 = ((points - centre[g]) ** 2).sum(-1).masked_fill(~finest, float("inf"))
            d2 = d2.masked_fill(which >= 0, float("inf"))
            nearest = int(d2.argmin())
            if torch.isfinite(d2[nearest]):
                which[nearest] = g
    chosen = which.clamp(min=0)
    target = distances[torch.arange(p, device=points.device), chosen]
    return which, target


class FCOSLoss(nn.Module):
    """The FCOS loss of a batch (see the module's notes).

    Args:
        num_classes: ``K``.
        spatial_dims: ``n``.
        locations: a function ``shape -> (points, strides)`` (:meth:`FCOS.locations`).
        ranges: per pyramid level, the ``[lo, hi)`` size range (pixels) it predicts.
        centre_radius: centre sampling radius in strides.
        dense_weight: weight of the dense head's loss (see the module's notes).
    """

    def __init__(
        self,
        num_classes: int,
        spatial_dims: int,
        locations,
        ranges: Sequence,
        centre_radius: float = 1.5,
        alpha: float = 0.25,
        gamma: float = 2.0,
        dense_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.n = num_classes, spatial_dims
        self.dense_weight = float(dense_weight)
        self.locations = locations
        self.ranges = [(float(lo), float(hi)) for lo, hi in ranges]
        self.centre_radius, self.alpha, self.gamma = centre_radius, alpha, gamma
        self._cache: dict = {}

    def _grid(self, shape, device):
        key = (tuple(shape), str(device))
        if key not in self._cache:
            points, strides = self.locations(shape, device=device)
            levels = sorted(set(strides.tolist()))
            if len(levels) != len(self.ranges):
                raise ValueError(f"{len(levels)} pyramid levels but {len(self.ranges)} ranges")
            table = torch.tensor(self.ranges, device=device, dtype=torch.float32)
            level = torch.bucketize(strides, torch.tensor(levels, device=device), right=False)
            self._cache = {key: (points, strides, table[level])}
        return self._cache[key]

    def forward(self, outputs, targets: tuple) -> torch.Tensor:
        """``outputs`` ``(B, P, K + 2n + 1)`` of :class:`~medlens.models.fcos.FCOS` (with a
        dense head in training: the pair of that and its logits); ``targets``: ``(shape, boxes,
        labels)``: the input's spatial shape and per image the boxes ``(G, 2n)`` and labels
        ``(G,)``."""
        shape, all_boxes, all_labels = targets
        dense = None
        if isinstance(outputs, tuple):
            outputs, dense = outputs
        total = self._boxes(outputs.float(), shape, all_boxes, all_labels)
        if dense is not None and self.dense_weight > 0:
            total = total + self.dense_weight * dense_loss(
                dense, shape, all_boxes, all_labels, self.num_classes
            )
        return total

    def _boxes(self, outputs: torch.Tensor, shape, all_boxes, all_labels) -> torch.Tensor:
        k, n = self.num_classes, self.n
        points, strides, ranges = self._grid(shape, outputs.device)
        cls_t, box_t, which_all = [], [], []
        for boxes, labels in zip(all_boxes, all_labels, strict=True):
            boxes = boxes.to(outputs.device, torch.float32).reshape(-1, 2 * n)
            labels = labels.to(outputs.device).long().reshape(-1)
            which, distances = assign_targets(points, strides, ranges, boxes, self.centre_radius)
            onehot = torch.zeros((points.shape[0], k), device=outputs.device)
            pos = which >= 0
            onehot[pos, labels[which[pos]]] = 1.0
            cls_t.append(onehot)
            box_t.append(distances)
            which_all.append(which)
        cls_t, box_t = torch.stack(cls_t), torch.stack(box_t)
        pos = torch.stack(which_all) >= 0  # (B, P)
        n_pos = max(float(pos.sum()), 1.0)
        logits = outputs[..., :k]
        cls_loss = _focal(logits, cls_t, self.alpha, self.gamma).sum() / n_pos
        if not pos.any():
            return cls_loss + 0.0 * outputs[..., k:].sum()
        pred = outputs[..., k : k + 2 * n][pos]
        target = box_t[pos]
        ctr_logit = outputs[..., k + 2 * n][pos]
        ctr_target = centreness(target)
        stride = strides.expand(pos.shape[0], -1)[pos]
        origin = torch.zeros((pred.shape[0], n), device=outputs.device)
        pred_box = torch.cat(
            [origin - pred[:, :n] * stride[:, None], origin + pred[:, n:] * stride[:, None]], -1
        )
        true_box = torch.cat([origin - target[:, :n], origin + target[:, n:]], -1)
        weight = ctr_target
        box_loss = (giou_loss(pred_box, true_box) * weight).sum() / weight.sum().clamp(min=1e-6)
        ctr_loss = (
            F.binary_cross_entropy_with_logits(ctr_logit, ctr_target, reduction="sum") / n_pos
        )
        return cls_loss + box_loss + ctr_loss


def box_ellipsoids(shape, boxes: torch.Tensor, labels: torch.Tensor, num_classes: int):
    """``(K, *shape)`` float masks: per class, the ellipses (ellipsoids) inscribed in its boxes
    ``(G, 2n)`` (index coordinates ``x, y[, z]``, pixel centres at integers), clipped to the
    array; the pixel nearest a box's centre is always in, however small the box."""
    n = len(shape)
    masks = torch.zeros((num_classes, *shape), device=boxes.device)
    for box, label in zip(
        boxes.reshape(-1, 2 * n).tolist(), labels.reshape(-1).tolist(), strict=True
    ):
        centre = [(box[a] + box[n + a]) / 2 for a in range(n)][::-1]  # array order
        radius = [max((box[n + a] - box[a]) / 2, 1e-3) for a in range(n)][::-1]
        lo = [max(0, math.floor(c - r)) for c, r in zip(centre, radius, strict=True)]
        hi = [
            min(side, math.ceil(c + r) + 1)
            for c, r, side in zip(centre, radius, shape, strict=True)
        ]
        if any(a >= b for a, b in zip(lo, hi, strict=True)):
            continue  # wholly outside
        distance = sum(
            (((torch.arange(a, b, device=boxes.device) - c) / r) ** 2).reshape(
                [-1 if i == axis else 1 for i in range(n)]
            )
            for axis, (a, b, c, r) in enumerate(zip(lo, hi, centre, radius, strict=True))
        )
        block = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        masks[int(label)][block] = torch.maximum(masks[int(label)][block], (distance <= 1).float())
        nearest = [round(c) for c in centre]
        if all(0 <= i < side for i, side in zip(nearest, shape, strict=True)):
            masks[(int(label), *nearest)] = 1.0
    return masks


def dense_loss(logits: torch.Tensor, shape, all_boxes, all_labels, num_classes: int):
    """Binary cross-entropy plus batch soft Dice (per class, nnU-Net's smoothing) of the dense
    head's logits ``(B, K, *level)``, upsampled to the input's ``shape``, against
    :func:`box_ellipsoids`."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(shape)]
    logits = F.interpolate(logits.float(), size=tuple(shape), mode=mode, align_corners=False)
    target = torch.stack(
        [
            box_ellipsoids(shape, boxes.to(logits.device, torch.float32), labels, num_classes)
            for boxes, labels in zip(all_boxes, all_labels, strict=True)
        ]
    )
    from medlens.tasks.segmentation.losses import soft_dice

    bce = F.binary_cross_entropy_with_logits(logits, target)
    return bce + soft_dice(torch.sigmoid(logits), target)


def centreness(distances: torch.Tensor) -> torch.Tensor:
    """Centre-ness of locations from their distances ``(P, 2n)`` to the box faces."""
    n = distances.shape[-1] // 2
    low, high = distances[:, :n].clamp(min=0), distances[:, n:].clamp(min=0)
    ratio = torch.minimum(low, high) / torch.maximum(low, high).clamp(min=1e-6)
    return ratio.prod(dim=-1).clamp(min=0) ** (1.0 / n)


def _focal(logits: torch.Tensor, target: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    return loss * (alpha * target + (1 - alpha) * (1 - target))
