"""Detection data for training: cases on the plan's grid once, patches with their boxes per batch.

:func:`preprocess_case` resamples a case's image to the plan's grid (same origin and direction),
normalises it as the plan says, and maps the case's world-coordinate boxes onto the new grid
(:meth:`~medlens.image.Image.world_to_index`), so boxes stay right whatever the resampling.
:class:`BoxBatches` draws training batches: a patch per slot (the whole padded image when it fits
the patch) of a case drawn uniformly or, with ``weights="tiles"``, in proportion to the patches
that cover it, centred on a random box for ``object_share`` of the slots, anywhere otherwise; boxes
are cut to the patch (:func:`medlens.boxes.crop_boxes`: kept when at least ``min_visible`` of them
is inside, clipped to it); the batch is augmented with the transform engine, which moves the
boxes with the image (flips, scaling) and drops those pushed out. Positions come from a generator
seeded by ``(seed, epoch)``, so a resumed run draws the same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medlens.errors import DatasetError
from medlens.tasks.detection.plan import DetectionPlan

__all__ = [
    "BoxBatches",
    "DetectionCase",
    "detection_augment",
    "normalise",
    "open_boxes",
    "preprocess_case",
]


@dataclass
class DetectionCase:
    """One case on the plan's grid: image ``(C, *shape)`` float32, boxes ``(G, 2n)`` in its
    index coordinates, labels ``(G,)``."""

    id: str
    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def open_boxes(
    data,
    *,
    split: str | None = None,
    plan: DetectionPlan | None = None,
    overrides=(),
    progress: bool = False,
):
    """The dataset at ``data`` for detection (:func:`medlens.data.label_boxes.open_detection`):
    its boxes, or boxes from its label maps, one per structure or per connected piece as
    ``plan.boxes_from_labels`` says, else a ``boxes_from_labels=`` override, else per class.
    ``split``: a reader's own split; ``"val"``/``"all"`` open everything (the run's splits
    choose)."""
    from medlens._json import parse_override, parse_value
    from medlens.data.label_boxes import PER, open_detection

    per = plan.boxes_from_labels if plan is not None else None
    for item in overrides:  # read with the plan's own --set grammar
        parts, raw = parse_override(item, error=DatasetError)
        if parts == ["boxes_from_labels"]:
            per = parse_value(raw)
    if per not in (None, *PER):
        raise DatasetError(f"boxes_from_labels={per}: use class or component", data)
    kwargs = {} if split in (None, "val", "all") else {"split": split}
    return open_detection(data, per=per or "class", progress=progress, **kwargs)


def normalise(array: np.ndarray, plan: DetectionPlan) -> np.ndarray:
    """``(C, ...)`` float32 normalised as the plan says, by the one normaliser of every task
    (:func:`medlens.tasks.segmentation.data.normaliser`: CT clipped and standardised with the
    dataset's statistics, anything else standardised per image); ``preprocessing.json`` of the
    run holds it."""
    from medlens.tasks.segmentation.data import normalise as by_plan

    return by_plan(array, plan)


def to_grid(image, plan: DetectionPlan):
    """``image`` resampled to the plan's spacing (unchanged when already on it)."""
    from medlens.geometry import resample

    if image.spatial_dims != plan.spatial_dims:
        raise DatasetError(
            f"a {image.spatial_dims}D image for a {plan.spatial_dims}D plan", image.meta.get("path")
        )
    target = plan.target_spacing
    if np.allclose(image.spacing, target, rtol=1e-3):
        return image
    return resample(image, spacing=tuple(target))


def channels_first(image) -> np.ndarray:
    """The image's array as ``(C, *spatial)``."""
    array = np.asarray(image.array)
    if "channel" in image.leading:
        return np.moveaxis(array, image.leading.index("channel"), 0)
    return array[None]


def world_to_grid(boxes_world: np.ndarray, image) -> np.ndarray:
    """World-corner boxes ``(G, 2n)`` as index boxes of ``image`` (corners re-sorted, since a
    flipped direction swaps them)."""
    boxes_world = np.asarray(boxes_world, dtype=np.float64).reshape(-1, 2 * image.spatial_dims)
    n = image.spatial_dims
    if boxes_world.shape[0] == 0:
        return np.zeros((0, 2 * n), np.float32)
    a = image.world_to_index(boxes_world[:, :n])
    b = image.world_to_index(boxes_world[:, n:])
    return np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.float32)


def preprocess_case(sample: Any, plan: DetectionPlan) -> DetectionCase:
    """A sample (image, ``meta["boxes_world"]``, labels) on the plan's grid, normalised."""
    moved = to_grid(sample.image, plan)
    world = sample.meta.get("boxes_world")
    if world is None:
        raise DatasetError("the sample has no boxes_world (not a detection dataset?)", sample.id)
    boxes = world_to_grid(world, moved)
    labels = np.asarray(sample.label if sample.label is not None else [], np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise DatasetError(f"{len(boxes)} boxes but {len(labels)} labels", sample.id)
    meta = {
        "spacing": list(sample.image.spacing),
        "grid_spacing": list(moved.spacing),
        "shape": list(sample.image.spatial_shape),
    }
    if "diameter_mm" in sample.meta:  # LUNA16-style findings: the radius FROC hits are within
        meta["diameter_mm"] = np.asarray(sample.meta["diameter_mm"], float).reshape(-1)
    return DetectionCase(sample.id, normalise(channels_first(moved), plan), boxes, labels, meta)


def detection_augment(
    spatial_dims: int,
    *,
    scale: float = 0.15,
    rotate: float = 0.0,
    p: float = 0.5,
    flip: bool = True,
    intensity: float = 0.2,
    min_visible: float = 0.5,
) -> Any:
    """``augment(images, boxes, labels, generator)`` for box batches: flips along every axis,
    scaling (and rotation, off by default: the box of a rotated box is larger than the rotated
    object's), noise, brightness and contrast; boxes move with the image, those with less than
    ``min_visible`` of themselves left inside are dropped, and their labels follow the boxes
    kept."""
    from medlens.transforms import (
        Batch,
        Brightness,
        Compose,
        Contrast,
        GaussianNoise,
        RandomAffine,
        RandomFlip,
    )

    steps: list[Any] = []
    if scale or rotate:
        steps.append(RandomAffine(rotate=rotate, scale=scale, p=p))
    if flip:
        steps.append(RandomFlip(axes=tuple(range(spatial_dims)), p=0.5))
    if intensity:
        steps += [
            GaussianNoise(std=0.5 * intensity, p=0.15),
            Brightness(delta=(-intensity, intensity), p=0.3),
            Contrast(factor=(1 - intensity, 1 + intensity), p=0.3),
        ]

    def augment(images, boxes, labels, generator):
        batch = Batch(image=images, boxes=list(boxes))
        batch.meta["boxes_min_visible"] = min_visible
        out = Compose(steps, generator=generator)(batch)
        kept = out.meta.get("boxes_kept")
        if kept is not None:
            labels = [lab[k.to(lab.device)] for lab, k in zip(labels, kept, strict=True)]
        return out["image"], list(out["boxes"]), list(labels)

    return augment


class BoxBatches:
    """Batches ``(images (B, C, *patch), (shape, boxes, labels))`` for :class:`FCOSLoss`.

    An epoch is ``batches_per_epoch`` batches.
    """

    def __init__(
        self,
        cases: list[DetectionCase],
        patch_size,
        batch_size: int,
        *,
        batches_per_epoch: int = 40,
        object_share: float = 0.5,
        min_visible: float = 0.5,
        seed: int = 0,
        augment: Any = None,
        weights: str = "cases",
    ) -> None:
        if not cases:
            raise DatasetError("no training cases")
        self.cases = cases
        self.weights = case_weights(cases, patch_size) if weights == "tiles" else None
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch)
        self.object_share = float(object_share)
        self.min_visible = float(min_visible)
        self.seed = int(seed)
        self.augment = augment
        self.epoch = 0
        self.task = "detection"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches_per_epoch):
            images, boxes, labels = [], [], []
            for _slot in range(self.batch_size):
                case = self.cases[self._draw(rng)]
                image, box, label = patch_of(
                    case, self.patch_size, rng, self.object_share, self.min_visible
                )
                images.append(image)
                boxes.append(torch.from_numpy(box))
                labels.append(torch.from_numpy(label))
            x = torch.from_numpy(np.stack(images))
            if self.augment is not None:
                x, boxes, labels = self.augment(x, boxes, labels, generator)
            yield x, (tuple(self.patch_size), boxes, labels)

    def _draw(self, rng: np.random.Generator) -> int:
        if self.weights is None:
            return int(rng.integers(len(self.cases)))
        return int(rng.choice(len(self.cases), p=self.weights))


def case_weights(cases: list[DetectionCase], patch_size) -> np.ndarray | None:
    """Each case's share of the draws, in proportion to the patches that tile it; ``None`` when
    every case needs as many (uniform draws, which keep the seeded positions of such sets)."""
    patch = [int(p) for p in patch_size]
    counts = [
        math.prod(-(-d // p) for d, p in zip(c.image.shape[1:], patch, strict=True)) for c in cases
    ]
    tiles = np.asarray(counts, dtype=np.float64)
    if np.all(tiles == tiles[0]):
        return None
    return tiles / tiles.sum()


def patch_of(
    case: DetectionCase, patch, rng: np.random.Generator, object_share: float, min_visible: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A patch of ``case`` (zero-padded where the image is smaller) and its boxes."""
    from medlens.boxes import crop_boxes

    shape = case.image.shape[1:]
    n = len(shape)
    if len(case.boxes) and rng.random() < object_share:
        box = case.boxes[int(rng.integers(len(case.boxes)))]
        centre = ((box[:n] + box[n:]) / 2)[::-1]  # array order
        jitter = rng.uniform(-0.25, 0.25, n) * np.asarray(patch)
        start = [round(c + j - p / 2) for c, j, p in zip(centre, jitter, patch, strict=True)]
        start = [
            min(max(s, min(0, d - p)), max(0, d - p))
            for s, d, p in zip(start, shape, patch, strict=True)
        ]
    else:
        start = [
            int(rng.integers(min(0, d - p), max(0, d - p) + 1))
            for d, p in zip(shape, patch, strict=True)
        ]
    from medlens.tasks.segmentation.data import padded_crop

    image = padded_crop(case.image, start, tuple(patch), 0.0, np.float32)
    boxes, keep = crop_boxes(case.boxes, start[::-1], tuple(patch)[::-1], min_visible=min_visible)
    return image, np.asarray(boxes, np.float32), case.labels[np.asarray(keep, np.int64)]
