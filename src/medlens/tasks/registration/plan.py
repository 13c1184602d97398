"""The plan of a learned registration run: the common grid, the network, the loss.

Every image of a pair is brought to one **canonical grid** before the network sees it: the
plan's spacing, shape and direction, centred on the image's own centre. Two images on their
canonical grids are then aligned at their centres (the ``center`` pre-alignment of ``medlens
register``), and the network predicts, on the fixed image's canonical grid, a stationary
velocity field in canonical voxels whose exponential (scaling and squaring) is the deformation.

The shape holds the 90th percentile of the cases' physical extents at the median spacing,
rounded up to the network's divisor; volumes larger than ``MAX_VOXELS`` coarsen the spacing
until they fit (a CPU trains on whole images, not patches: a deformation needs the context of
the whole image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medlens.engine import TrainConfig
from medlens.tasks.plan import Plan, PlanError

__all__ = ["MAX_VOXELS", "RegistrationPlan", "canonical_matrix", "make_plan"]

#: the most voxels of the canonical grid per dimensionality (whole images go through the net)
MAX_VOXELS = {2: 384 * 384, 3: 96 * 112 * 96}
#: diffusion weight of the velocity (mm). Hippocampus, 10 epochs, 40 validation pairs on the
#: canonical grid: weight 1 Dice 0.785 (SDlogJ 0.24 on the native grids), weight 4 Dice 0.763,
#: SDlogJ 0.109. The first 100 cases, 10 epochs, 20 validation pairs: weight 4 Dice 0.769,
#: SDlogJ 0.112; weight 8 0.759, 0.070; smoothing the velocity by 1 voxel at weight 1 0.765,
#: 0.158 (worse on both). 40 epochs raise the SDlogJ (weight 4: 0.124 on the validation pairs,
#: 0.141 on held-out pairs on their own grids): weight 8 keeps it under the issue's 0.1.
WEIGHT = 8.0
#: Gaussian smoothing of the velocity before integration (half-resolution voxels)
SMOOTH = 0.0
#: the similarities a learned run trains with (:mod:`medlens.registration.similarity`)
SIMILARITIES = ("mse", "ncc", "lncc", "mind")


@dataclass
class RegistrationPlan(Plan):
    """What a learned registration run trains (see the module's notes).

    ``loss``: ``similarity`` (lncc by default; mind across modalities), ``weight`` (diffusion of
    the velocity in mm, against the similarity), ``label_weight`` (soft Dice of the warped
    labels, where the data has labels; 0 without). ``refine``: instance optimisation from the
    network's velocity at predict time (``steps``; 0 = the network alone), the same loss without
    labels (the uniGradICON recipe)."""

    FORMAT = "medlens.registration-plan/1"

    format: str
    spatial_dims: int
    shape: list[int]  # canonical grid, array order
    spacing: list[float]  # mm per voxel, array order
    direction: list[list[float]]  # (n, n) index (x, y[, z]) -> LPS directions
    label_values: list[int]
    pairs: str  # "random" (inter-subject pairs of a dataset) or "csv" (listed pairs)
    prealign: str = "center"  # or "affine": each image to the run's reference (prealign.py)
    batch_size: int = 2
    integration_steps: int = 7
    network: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    refine: dict[str, Any] = field(default_factory=dict)
    val_pairs: int = 20
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        n = self.spatial_dims
        if n not in (2, 3) or len(self.shape) != n or len(self.spacing) != n:
            raise PlanError(f"shape {self.shape} and spacing {self.spacing}: need {n} values each")
        if self.loss.get("similarity", "lncc") not in SIMILARITIES:
            raise PlanError(f"loss.similarity {self.loss.get('similarity')!r}: use "
                            f"{', '.join(SIMILARITIES)}")  # fmt: skip
        if self.prealign not in ("center", "affine"):
            raise PlanError(f"prealign {self.prealign!r}: use center or affine")
        if any(int(s) % self.divisor for s in self.shape):
            raise PlanError(f"shape {self.shape}: each axis must be a multiple of {self.divisor}")

    @property
    def divisor(self) -> int:
        return 2 ** (len(self.network.get("features", [0])) - 1)

    def describe(self) -> list[str]:
        """The plan in a line, for ``medlens plan`` and the training log."""
        grid = "x".join(str(s) for s in self.shape)
        mm = "x".join(f"{s:g}" for s in self.spacing)
        labels = " + label Dice" if self.num_labels else ""
        pairs = "random pairs of the images" if self.pairs == "random" else "the listed pairs"
        smooth = f" (velocity smoothed by {self.smooth:g} voxels)" if self.smooth else ""
        return [
            f"{self.spatial_dims}D U-Net {self.network['features']}{smooth}, canonical grid "
            f"{grid} at {mm} mm, {self.prealign} pre-alignment, {self.loss['similarity']} + "
            f"diffusion {self.loss['weight']:g}{labels}, {self.train.epochs} epochs of "
            f"{self.train.batches_per_epoch} batches of {self.batch_size} ({pairs})"
        ]

    @property
    def smooth(self) -> float:
        """The Gaussian (half-resolution voxels) the velocity is smoothed by (0: none)."""
        return float(self.network.get("smooth", 0.0))

    @property
    def num_labels(self) -> int:
        """Foreground labels the loss scores (0: no label supervision)."""
        if not float(self.loss.get("label_weight", 0)):
            return 0
        return len([v for v in self.label_values if v != 0])


def canonical_matrix(plan: RegistrationPlan, centre: np.ndarray) -> np.ndarray:
    """The ``(n+1, n+1)`` index (x, y[, z]) -> LPS matrix of the canonical grid centred at
    ``centre`` (LPS mm)."""
    n = plan.spatial_dims
    linear = np.asarray(plan.direction, float) @ np.diag(np.asarray(plan.spacing, float)[::-1])
    middle = (np.asarray(plan.shape[::-1], float) - 1) / 2
    out = np.eye(n + 1)
    out[:n, :n] = linear
    out[:n, n] = np.asarray(centre, float) - linear @ middle
    return out


def make_plan(images: list[Any], *, labelled: bool, label_values: list[int], pairs: str,
              device: str = "cpu") -> RegistrationPlan:  # fmt: skip
    """The plan from the training images (:class:`~medlens.image.Image`, headers suffice)."""
    n = images[0].spatial_dims
    spacing = np.median([np.asarray(i.spacing, float)[::-1] for i in images], axis=0)
    extent = np.percentile([np.asarray(i.size[::-1]) * np.asarray(i.spacing[::-1]) for i in images],
                           90, axis=0)  # fmt: skip
    features = [16, 32, 32, 32] if n == 3 else [16, 32, 32, 32, 32]
    divisor = 2 ** (len(features) - 1)
    while True:
        shape = [
            int(-(-np.ceil(e / s) // divisor) * divisor)
            for e, s in zip(extent, spacing, strict=True)
        ]
        if int(np.prod(shape)) <= MAX_VOXELS[n]:
            break
        spacing = spacing * 1.25
    direction = np.asarray(images[0].direction, float).reshape(n, n)
    voxels = int(np.prod(shape))
    batch = int(max(1, min(8, (MAX_VOXELS[n] // 4) // voxels)))
    # lr 3e-3 reached in 10 epochs the validation Dice 1e-3 reached in 20 (hippocampus)
    train = TrainConfig(epochs=40, batch_size=batch, batches_per_epoch=50,
                        optimizer="adam", lr=3e-3, schedule="cosine", loss="registration",
                        monitor="val_score", monitor_mode="max", grad_clip=10.0)  # fmt: skip
    return RegistrationPlan(
        format=RegistrationPlan.FORMAT,
        spatial_dims=n,
        shape=shape,
        spacing=[round(float(s), 6) for s in spacing],
        direction=direction.round(6).tolist(),
        label_values=[int(v) for v in label_values],
        pairs=pairs,
        # listed pairs may cross modalities, which an NCC affine to one reference cannot align
        prealign="affine" if pairs == "random" else "center",
        batch_size=batch,
        network={"features": features, "norm": "instance", "smooth": SMOOTH},
        loss={"similarity": "lncc", "weight": WEIGHT, "label_weight": 1.0 if labelled else 0.0},
        refine={"steps": 0, "lr": 0.05, "weight": 0.25},
        train=train,
    )
