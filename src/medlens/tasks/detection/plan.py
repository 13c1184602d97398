"""The detection plan: grid, patch, pyramid levels and size ranges from the boxes in millimetres.

:func:`box_statistics` measures every box of a dataset in millimetres (its world corners, which
need each image's geometry where boxes were given in pixels); :func:`make_plan` turns that and
the dataset's fingerprint into a :class:`DetectionPlan`:

- **grid**: the median spacing, coarsened (up to ``MAX_COARSEN`` times) while the smallest boxes
  (5th percentile of their shortest side) keep at least ``MIN_OBJECT_PIXELS`` pixels and the median
  image is larger than the budget;
- **patch**: the median image on that grid when it fits the budget (2D: whole images), else the
  largest patch of the image's proportions that does; sides multiples of the network's divisor;
- **levels**: the finest stride is the largest of 4, 8, 16 at most half the smallest boxes'
  shortest side; coarser levels (doubling strides) are added until ``8 * stride`` covers the
  largest boxes (95th percentile of their longest side); each level predicts boxes whose largest
  distance from a location to a face is in ``[4 * stride, 8 * stride)`` (the first from 0, the
  last to infinity), as FCOS's ranges are;
- **network**: an FCOS (:mod:`medlens.models.fcos`) on a group-normed ResNet, narrower in 3D;
  in 3D (except one box per organ) with a dense head (``dense_weight``: per-voxel supervision from
  the ellipsoids inscribed in the boxes), which lifted the simulated lesions' validation CPM from
  0.38 to 0.49 at 40 epochs, and 240 epochs instead of 40 (0.63 at 120 and at 240 with the
  sampling below, whose held-out figure rose from 0.41 at 120 epochs to 0.49 at 240);
- **sampling**: training draws cases in proportion to the patches that tile them, so every part
  of a large scan is as likely as every part of a small one (uniform case draws showed three
  whole-body scans among 160 small crops once per 50 patches, and the three held-out scans then
  held the false positives that brought the held-out CPM from 0.61 on the hippocampus crops down
  to 0.345 over all; tile draws: 0.41 at 120 epochs, 0.49 at 240);
- **normalisation**: CT clipped and standardised with the dataset's statistics, anything else
  standardised per image and channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.engine import TrainConfig
from medlens.tasks.plan import Plan, PlanError

__all__ = ["PLAN_FORMAT", "DetectionPlan", "box_statistics", "make_plan"]

PLAN_FORMAT = "medlens.detection-plan/1"
MIN_OBJECT_PIXELS = 12  # shortest side of the smallest boxes on the plan's grid, at least
MAX_COARSEN = 4.0
BUDGET = {2: 96_000, 3: 96**3}  # pixels of one training patch on a CPU
BATCH = {2: 8, 3: 2}
NETWORK = {
    2: {"backbone": "resnet18", "width": 32, "fpn_channels": 96, "head_convs": 2},
    3: {"backbone": "resnet10", "width": 24, "fpn_channels": 64, "head_convs": 2},
}
SCHEDULE = {"epochs": 40, "batches_per_epoch": 25, "val_every": 5}
#: 3D findings learn slowly: simulated lesions' validation CPM 0.49 at 40 epochs, 0.63 at 120
FINDINGS_3D = {"epochs": 240, "val_every": 10}
AUGMENTATION = {"flip": True, "scale": 0.15, "rotate": 180.0, "p": 0.5, "intensity": 0.2}


@dataclass
class DetectionPlan(Plan):
    """Everything training and prediction need, in JSON (``plan.json``)."""

    FORMAT = PLAN_FORMAT

    dataset: str
    spatial_dims: int
    in_channels: int
    class_names: list[str]
    target_spacing: list[float]  # index order (x, y[, z]), mm
    median_shape: list[int]  # array order, on the plan's grid
    patch_size: list[int]  # array order
    batch_size: int
    normalisation: dict[str, Any]
    network: dict[str, Any]
    ranges: list[list[float]]  # per level [lo, hi) of the largest distance to a face, pixels
    box_sizes_mm: dict[str, Any]
    train: TrainConfig
    augmentation: dict[str, Any] = field(default_factory=lambda: dict(AUGMENTATION))
    inference: dict[str, Any] = field(default_factory=dict)
    modality: str | None = None
    notes: list[str] = field(default_factory=list)
    #: boxes taken from label maps: one per ``"class"`` (organs) or per ``"component"``
    #: (lesions) of each case; ``None``: the dataset's own boxes
    boxes_from_labels: str | None = None
    #: how training draws its cases: ``"tiles"`` in proportion to the patches that cover each
    #: (a scan ten patches large is drawn ten times as often as one that fits a patch),
    #: ``"cases"`` each equally often (plans from before this choice)
    sampling: str = "cases"
    format: str = PLAN_FORMAT

    def __post_init__(self) -> None:
        if self.boxes_from_labels not in (None, "class", "component"):
            raise PlanError(f"boxes_from_labels {self.boxes_from_labels!r}: use class or component")
        if self.sampling not in ("tiles", "cases"):
            raise PlanError(f"sampling {self.sampling!r}: use tiles or cases")

    def describe(self) -> list[str]:
        """The plan in a few lines, for ``medlens plan``."""
        spacing = ", ".join(f"{s:.3g}" for s in self.target_spacing)
        return [
            f"{self.dataset}: {self.spatial_dims}D, spacing ({spacing}) mm, patch "
            f"{'x'.join(map(str, self.patch_size))}, batch {self.batch_size}, FCOS on "
            f"{self.network['backbone']}, strides {', '.join(map(str, self.strides))}, "
            f"{len(self.class_names)} classes ({', '.join(self.class_names)})",
            *(f"  {note}" for note in self.notes),
        ]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def strides(self) -> list[int]:
        return [int(s) for s in self.network["strides"]]

    @property
    def divisor(self) -> int:
        return 32


def box_statistics(dataset) -> dict[str, Any]:
    """Sizes (mm, index order) of every box of ``dataset``, overall and per class, and boxes
    per image, from each sample's ``meta["boxes_world"]``."""
    sides, labels, per_image = [], [], []
    for i in range(len(dataset)):
        boxes, classes = _boxes_of(dataset, i)
        n = boxes.shape[1] // 2
        sides.append(np.abs(boxes[:, n:] - boxes[:, :n]))
        labels.append(classes)
        per_image.append(len(classes))
    side = np.concatenate(sides) if sides else np.zeros((0, 2))
    label = np.concatenate(labels) if labels else np.zeros(0, int)
    if side.shape[0] == 0:
        raise PlanError(f"{dataset.source}: no boxes in the dataset: nothing to learn to detect")

    def summary(s: np.ndarray) -> dict[str, Any]:
        short, long = s.min(axis=1), s.max(axis=1)
        return {
            "n": len(s),
            "shortest_p5": float(np.percentile(short, 5)),
            "shortest_median": float(np.median(short)),
            "longest_median": float(np.median(long)),
            "longest_p95": float(np.percentile(long, 95)),
        }

    per_class = {
        name: summary(side[label == k])
        for k, name in enumerate(dataset.class_names)
        if np.any(label == k)
    }
    return {
        "all": summary(side),
        "per_class": per_class,
        "boxes_per_image": {
            "median": float(np.median(per_image)),
            "max": int(max(per_image)),
            "images_without": int(sum(c == 0 for c in per_image)),
        },
    }


def make_plan(
    fp: dict[str, Any],
    boxes: dict[str, Any],
    *,
    device: str = "cpu",
    boxes_from_labels: str | None = None,
) -> DetectionPlan:
    """The plan from a fingerprint (:func:`medlens.data.fingerprint`) and
    :func:`box_statistics`; ``boxes_from_labels`` records how a segmentation dataset's boxes
    were made (:class:`medlens.data.label_boxes.LabelBoxDataset`)."""
    if fp.get("task") != "detection":
        raise PlanError(f"dataset {fp.get('name')!r} is a {fp.get('task')} dataset")
    n = int(fp["spatial_dims"])
    notes: list[str] = []
    spacing = [float(s) for s in fp["spacing"]["median"]]  # index order
    size_mm = [s * p for s, p in zip(fp["size"]["median"], spacing, strict=True)]
    smallest = boxes["all"]["shortest_p5"]
    pixels = math.prod(m / s for m, s in zip(size_mm, spacing, strict=True))
    by_size = smallest / (MIN_OBJECT_PIXELS * min(spacing))
    by_budget = (pixels / BUDGET[n]) ** (1 / n)
    factor = max(1.0, min(MAX_COARSEN, by_size, by_budget))
    if factor > 1.0:
        spacing = [s * factor for s in spacing]
        notes.append(
            f"grid coarsened {factor:.2f}x: the smallest boxes keep "
            f"{smallest / min(spacing):.0f} pixels"
        )
    shape = [max(1, round(m / s)) for m, s in zip(size_mm, spacing, strict=True)][::-1]
    patch = _fit(shape, BUDGET[n])
    divisor = 32
    patch = [max(divisor, -(-p // divisor) * divisor) for p in patch]
    shortest_px = smallest / min(spacing)
    longest_px = boxes["all"]["longest_p95"] / min(spacing)
    finest = max([s for s in (4, 8, 16) if s <= max(4.0, shortest_px / 2)])
    strides = [finest]
    while 8 * strides[-1] < longest_px and strides[-1] < 32:
        strides.append(strides[-1] * 2)
    ranges = [[4.0 * s, 8.0 * s] for s in strides]
    ranges[0][0], ranges[-1][1] = 0.0, 1e8
    levels = [int(math.log2(s)) - 1 for s in strides]  # ResNet, large stem: stage i at 2^(i+1)
    dense = 1.0 if n == 3 and boxes_from_labels != "class" else 0.0
    if dense:
        notes.append("a dense head beside the boxes (3D findings: few positives per volume)")
    network = {
        "name": "fcos",
        **NETWORK[n],
        "levels": levels,
        "strides": strides,
        "stem": "large",
        "centre_radius": 1.5,
        "dense_weight": dense,
    }
    from medlens.tasks.segmentation.plan import normalisation_for

    modality = fp.get("modality")
    normalisation = normalisation_for(fp)
    batch = BATCH[n]
    from medlens.engine import native_bf16

    bf16 = device == "cpu" and native_bf16()
    schedule = {**SCHEDULE, **(FINDINGS_3D if dense else {})}
    train = default_train(batch_size=batch, amp="on" if bf16 else "auto", **schedule)
    if bf16:
        notes.append("bf16 mixed precision (this CPU computes bf16 natively)")
    inference = {
        "score_threshold": 0.05,
        "nms_iou": 0.6,
        "max_detections": 100,
        "mirror": n == 2,
        "fusion_iou": 0.7,
        "overlap": 0.5,
        "precision": "bf16" if bf16 else "float32",
    }
    return DetectionPlan(
        dataset=str(fp.get("name", "dataset")),
        spatial_dims=n,
        in_channels=int(fp.get("channels", 1)),
        class_names=[str(c) for c in fp.get("class_names", [])],
        target_spacing=spacing,
        median_shape=[int(s) for s in shape],
        patch_size=[int(p) for p in patch],
        batch_size=batch,
        normalisation=normalisation,
        network=network,
        ranges=ranges,
        box_sizes_mm=boxes,
        train=train,
        inference=inference,
        modality=modality,
        notes=notes,
        boxes_from_labels=boxes_from_labels,
        sampling="tiles",
    )


def default_train(**settings: Any) -> TrainConfig:
    """AdamW with a cosine schedule and warm-up; validation mAP (2D), CPM (3D) or, for boxes
    from label maps per class, the mean best-box IoU picks the best epoch (``val_score``)."""
    base = {
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 1e-4,
        "schedule": "cosine",
        "warmup_epochs": 2.0,
        "loss": "fcos",
        "monitor": "val_score",
        "monitor_mode": "max",
        "grad_clip": 10.0,
    }
    return TrainConfig(**{**base, **settings})


def _fit(shape: list[int], budget: int) -> list[int]:
    """``shape`` shrunk evenly until it holds at most ``budget`` pixels."""
    size = list(shape)
    if math.prod(size) <= budget:
        return size
    factor = (budget / math.prod(size)) ** (1 / len(size))
    return [max(32, int(s * factor)) for s in size]


def _boxes_of(dataset, index: int) -> tuple[np.ndarray, np.ndarray]:
    """World boxes and labels of one case (pixel boxes need the image's geometry for mm)."""
    sample = dataset[index]
    return np.asarray(sample.meta["boxes_world"], float), np.asarray(sample.label, int)
