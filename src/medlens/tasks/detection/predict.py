"""Detection prediction: images in, scored boxes in the input's pixels and in millimetres out.

An image is brought to the plan's grid as in training and predicted whole when it fits about one
patch, else window by window (``inference.overlap``), padded to the network's divisor. Each pass
is decoded (score ``sqrt(class probability * centre-ness)``, the top candidates above
``inference.score_threshold``, class-aware NMS); mirrored passes (``inference.mirror``) and the
folds' networks are merged by weighted box fusion, windows by NMS. Boxes then go from the grid to
world coordinates to the input's own index coordinates, so a prediction is in the pixels of the
image the user gave, whatever the resampling.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medlens.image import Image
from medlens.tasks.detection.plan import DetectionPlan
from medlens.tasks.run_folder import RunFolder

__all__ = ["DetectionRun", "build_network", "detect_array", "detect_image", "load_detection_run"]

WINDOW_GROWTH = 1.5  # an image up to this times the patch per axis is predicted in one window


class DetectionRun:
    """A finished detection run: plan, class names and one network per fold."""

    def __init__(self, path: Path, info: dict[str, Any], plan: DetectionPlan, networks) -> None:
        self.path, self.info, self.plan, self.networks = path, info, plan, networks


def build_network(plan: DetectionPlan) -> torch.nn.Module:
    """The plan's FCOS."""
    from medlens.models import create_model

    net = plan.network
    return create_model(
        "fcos",
        spatial_dims=plan.spatial_dims,
        in_channels=plan.in_channels,
        num_classes=plan.num_classes,
        backbone=net["backbone"],
        levels=net["levels"],
        fpn_channels=net["fpn_channels"],
        head_convs=net["head_convs"],
        backbone_options={"width": net["width"], "stem": net["stem"]},
        dense_head=float(net.get("dense_weight", 0.0)) > 0,
    )


def load_detection_run(path: str | Path) -> DetectionRun:
    folder = RunFolder(path).require("detection")
    plan = DetectionPlan.load(folder.path / "plan.json")
    networks = folder.load_networks(lambda: build_network(plan))
    return DetectionRun(folder.path, folder.info, plan, networks)


@torch.no_grad()
def detect_array(
    networks: Sequence[torch.nn.Module],
    image: np.ndarray,
    plan: DetectionPlan,
    *,
    mirror: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``(N, 2n)`` (index coordinates of ``image``'s grid), scores and labels of a
    preprocessed image ``(C, *shape)`` on the plan's grid."""
    from medlens.boxes import batched_nms, weighted_box_fusion

    settings = plan.inference
    mirror = bool(settings.get("mirror", True)) if mirror is None else bool(mirror)
    shape = image.shape[1:]
    n = len(shape)
    windows = _windows(shape, plan.patch_size, float(settings.get("overlap", 0.5)))
    flips = [()]
    if mirror:
        flips = [c for r in range(n + 1) for c in itertools.combinations(range(n), r)]
    found_b, found_s, found_l = [], [], []
    bf16 = settings.get("precision") == "bf16" and _native_bf16()
    for start, size in windows:
        crop = image[(slice(None), *(slice(s, s + z) for s, z in zip(start, size, strict=True)))]
        padded = _pad(crop, 32)
        x = torch.from_numpy(np.ascontiguousarray(padded))[None]
        runs = []
        for network in networks:
            network.eval()
            device = _device(network)
            for axes in flips:
                xin = (x.flip([2 + a for a in axes]) if axes else x).to(device)
                with torch.autocast(
                    "cpu", dtype=torch.bfloat16, enabled=bf16 and device.type == "cpu"
                ):
                    raw = network(xin)[0]
                boxes, scores, labels, _ = decode(raw, padded.shape[1:], plan)
                if axes:
                    boxes = _unflip(boxes, axes, padded.shape[1:])
                runs.append((boxes, scores, labels))
        if len(runs) > 1:
            boxes, scores, labels = weighted_box_fusion(
                [r[0] for r in runs],
                [r[1] for r in runs],
                [r[2] for r in runs],
                iou_threshold=float(settings.get("fusion_iou", 0.55)),
            )
        else:
            boxes, scores, labels = runs[0]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 2 * n)
        offset = np.asarray(start[::-1] * 2, np.float32)
        found_b.append(boxes + offset)
        found_s.append(np.asarray(scores, np.float32))
        found_l.append(np.asarray(labels, np.int64))
    boxes, scores, labels = (
        np.concatenate(found_b),
        np.concatenate(found_s),
        np.concatenate(found_l),
    )
    if len(windows) > 1 and len(boxes):
        keep = batched_nms(boxes, scores, labels, float(settings.get("nms_iou", 0.6)))
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")[: int(settings.get("max_detections", 100))]
    return boxes[order], scores[order], labels[order]


def decode(output: torch.Tensor, shape, plan: DetectionPlan):
    """Boxes, scores, labels and the locations that predicted them (indices into the ``P``) of
    one image's FCOS output ``(P, K + 2n + 1)``: the top 1000 candidates above the score
    threshold, then class-aware NMS."""
    from medlens.boxes import batched_nms
    from medlens.models.fcos import fcos_locations
    from medlens.tasks.detection.loss import decode_boxes

    k, n = plan.num_classes, plan.spatial_dims
    settings = plan.inference
    output = output.float()
    points, strides = fcos_locations(plan.strides, shape, device=output.device)
    probs = torch.sigmoid(output[:, :k]) * torch.sigmoid(output[:, -1:])
    scores = probs.sqrt()
    flat = scores.flatten()
    candidates = torch.nonzero(flat > float(settings.get("score_threshold", 0.05))).flatten()
    if candidates.numel() > 1000:
        candidates = candidates[flat[candidates].topk(1000).indices]
    where, labels = candidates // k, candidates % k
    boxes = decode_boxes(points[where], strides[where], output[where, k : k + 2 * n])
    upper = torch.tensor(list(shape)[::-1] * 2, dtype=boxes.dtype, device=boxes.device) - 0.5
    boxes = torch.maximum(torch.minimum(boxes, upper), torch.full_like(boxes, -0.5))
    scores = flat[candidates]
    keep = batched_nms(boxes, scores, labels, float(settings.get("nms_iou", 0.6)))
    keep = keep[: int(settings.get("max_detections", 100))]
    keep = keep.to(boxes.device)
    return tuple(t[keep].cpu().numpy() for t in (boxes, scores, labels, where))


def detect_image(run: DetectionRun, image: Image, *, mirror: bool | None = None):
    """Boxes ``(N, 2n)`` in ``image``'s own index coordinates, their world corners, scores and
    labels (class indices)."""
    from medlens.tasks.classification.data import conform
    from medlens.tasks.detection.data import channels_first, normalise, to_grid, world_to_grid

    grid = to_grid(image, run.plan)
    array = channels_first(grid)
    if array.shape[0] != run.plan.in_channels:  # colour to grey by the mean, grey to colour
        array = conform(array[None], run.plan.in_channels, array.shape[1:], uint8=False)[0]
    array = normalise(array, run.plan)
    boxes, scores, labels = detect_array(run.networks, array, run.plan, mirror=mirror)
    n = image.spatial_dims
    world = (
        np.concatenate(
            [grid.index_to_world(boxes[:, :n]), grid.index_to_world(boxes[:, n:])], axis=1
        )
        if len(boxes)
        else np.zeros((0, 2 * n))
    )
    pixels = world_to_grid(world, image)
    lo, hi = np.minimum(world[:, :n], world[:, n:]), np.maximum(world[:, :n], world[:, n:])
    return pixels, np.concatenate([lo, hi], axis=1), scores, labels


def _device(network) -> torch.device:
    """Where ``network``'s weights are (the CPU for an ONNX session)."""
    parameters = getattr(network, "parameters", None)
    first = next(iter(parameters()), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")


def _native_bf16() -> bool:
    from medlens.engine import native_bf16

    return native_bf16()


def _windows(shape, patch, overlap: float) -> list[tuple[list[int], list[int]]]:
    """Window starts and sizes covering ``shape`` (array order): the whole image when it is at
    most ``WINDOW_GROWTH`` times the patch per axis, else patch-sized windows overlapping by
    ``overlap``."""
    if all(s <= WINDOW_GROWTH * p for s, p in zip(shape, patch, strict=True)):
        return [([0] * len(shape), list(shape))]
    per_axis = []
    for s, p in zip(shape, patch, strict=True):
        if s <= p:
            per_axis.append([(0, s)])
            continue
        step = max(1, int(p * (1 - overlap)))
        starts = [*range(0, s - p, step), s - p]
        per_axis.append([(a, p) for a in sorted(set(starts))])
    return [
        ([c[0] for c in combo], [c[1] for c in combo]) for combo in itertools.product(*per_axis)
    ]


def _pad(array: np.ndarray, divisor: int) -> np.ndarray:
    """``(C, *shape)`` zero-padded at the high end to multiples of ``divisor``."""
    pads = [(0, 0)] + [(0, -(-s // divisor) * divisor - s) for s in array.shape[1:]]
    return np.pad(array, pads) if any(p[1] for p in pads) else array


def _unflip(boxes: np.ndarray, axes: Sequence[int], shape) -> np.ndarray:
    """Boxes predicted on an input flipped along array ``axes`` back in the input's frame."""
    boxes = np.array(boxes, np.float32, copy=True)
    n = len(shape)
    for axis in axes:
        i = n - 1 - axis  # array axis -> index coordinate
        extent = shape[axis] - 1
        low, high = extent - boxes[:, n + i], extent - boxes[:, i]
        boxes[:, i], boxes[:, n + i] = low, high
    return boxes
