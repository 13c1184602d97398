"""Self-configuration of segmentation from the dataset fingerprint: the plan.

The rules follow what nnU-Net showed works, restated for medlens and for ordinary machines:

- **Target spacing**: the median spacing per axis; when the data are anisotropic (coarsest axis
  more than 3x the finest), the coarse axis takes the 10th percentile of its spacings instead,
  so thin-slice cases are not thrown away.
- **Zoomed acquisitions** (2D): when the images' spacings vary (90th/10th percentile over
  ``ZOOM_SPREAD``) and the foreground's size varies less in pixels than in millimetres, the
  operator zoomed to the anatomy (ultrasound, microscopy, photographs): every image is then
  resampled by one scale factor (``target_scale``) instead of to one spacing, so the anatomy keeps
  its size in pixels and each image fills the patch alike. HC18's early heads (0.05 mm pixels)
  would otherwise shrink to a third of the late ones' size and the late images outgrow the patch.
- **Normalisation**: CT is clipped to the foreground's 0.5-99.5 percentiles and z-scored with
  the foreground's dataset mean and standard deviation (HU mean something across patients);
  everything else (MR, ultrasound, photographs) is z-scored per image.
- **Patch and batch size** fit a voxel budget that depends on the device (a CPU affords far
  less than a GPU): the patch starts from the median image shape after resampling and its
  largest axis (in millimetres) shrinks until it fits. In 2D, where a CPU cannot afford full
  resolution in the time budget, the spacing is coarsened (up to ``MAX_COARSEN``x) so that the
  median image fits in about one patch: the head of a fetus needs context more than the finest
  pixel.
- **Network**: a U-Net whose stages halve each axis while it stays at least ``MIN_FEATURE_MAP``
  voxels long, and (anisotropic data) not the coarse axis until its spacing is within 2x of the
  others, with kernel size 1 on that axis until then; features 32, 64, ... capped at 320 (3D)
  or 512 (2D) on a GPU, half those widths on a CPU; deep supervision.
- **Schedule**: SGD with Nesterov momentum 0.99, cosine decay; 40 epochs of 50 patch batches on
  a CPU (validated every 5), 250 of 250 on a GPU. A 3D plan on a CPU that computes bf16 natively
  (AVX512-BF16 or AMX) trains in bf16 mixed precision (``train.amp = "on"``; the loss in float32),
  which makes its steps about 1.8x faster there, and takes three times the epochs: the
  Decathlon hippocampus measured 0.86 s a step against 1.58, and 120 epochs took 37 min
  (fold 3 of 5: mean Dice 0.8895, against 0.883 with 80 epochs in 25 min).

The plan is a JSON file (``medlens plan DATA -o plan.json``), editable by hand and overridable
with ``key=value``; :class:`SegmentationPlan` gives typed access and checks it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from medlens.tasks.plan import Plan, PlanError

if TYPE_CHECKING:
    from medlens.engine import TrainConfig

__all__ = [
    "PLAN_FORMAT",
    "PlanError",
    "SegmentationPlan",
    "apply_plan_overrides",
    "inference_settings",
    "make_plan",
]

PLAN_FORMAT = "medlens.segmentation-plan/1"
ANISOTROPY = 3.0
MIN_FEATURE_MAP = 4
MAX_STAGES = 6
MAX_COARSEN = 4.0
ZOOM_SPREAD = 1.5
#: Voxels per patch and per batch the planner allows, by device (per-batch = batch x patch).
BUDGETS = {
    "cpu": {
        2: {"patch": 192 * 192, "batch": 8 * 192 * 192},
        3: {"patch": 64**3, "batch": 2 * 64**3},
    },
    "gpu": {
        2: {"patch": 512 * 512, "batch": 12 * 512 * 512},
        3: {"patch": 128**3, "batch": 2 * 128**3},
    },
}
#: Features of the first stage (doubling per stage up to the cap) and the training schedule,
#: by device. A CPU affords half of nnU-Net's widths and 2,000 steps (HC18: about 37 minutes on
#: 2 cores); a GPU the widths and a longer schedule.
WIDTHS = {"cpu": {"base": 16, 2: 256, 3: 160}, "gpu": {"base": 32, 2: 512, 3: 320}}
SCHEDULES = {
    "cpu": {"epochs": 40, "batches_per_epoch": 50, "val_every": 5},
    "gpu": {"epochs": 250, "batches_per_epoch": 250, "val_every": 10},
}


#: The losses a segmentation plan may name (``train.loss``).
LOSSES = ("dice_ce", "dice_focal")
#: ``inference.window``: the training patch (the default), or (``"image"``) the patch grown to
#: hold a small image whole (:func:`medlens.tasks.segmentation.network.inference_window`):
#: fewer passes, but on the hippocampus Dice 0.879 against 0.891 with the patch.
WINDOWS = ("patch", "image")
#: ``inference.precision``: bf16 runs only where the CPU computes it natively, else float32.
PRECISIONS = ("float32", "bf16")
#: An axis of the window grows to hold the image when the image is at most this much longer.
WINDOW_GROWTH = 1.5


#: The spatial augmentation's defaults (nnU-Net's rotation and scaling, less often).
AUGMENTATION = {"scale": 0.15, "rotate": 15.0, "p": 0.3}


@dataclass
class SegmentationPlan(Plan):
    """Everything training and inference need to know about a segmentation dataset.

    Geometry: ``target_spacing`` is in index order ``(x, y[, z])`` like
    :attr:`medlens.Image.spacing`; ``patch_size``, ``median_shape`` and the network's strides and
    kernel sizes are in array order ``([z,] y, x)`` like the tensors they shape. With
    ``target_scale`` (index order) every image is resampled by that factor per axis instead, and
    ``target_spacing`` is the median image's spacing after it (see :meth:`grid_spacing`).
    """

    dataset: str
    spatial_dims: int
    in_channels: int
    num_classes: int
    label_values: list[int]
    target_spacing: list[float]
    median_shape: list[int]
    patch_size: list[int]
    batch_size: int
    normalisation: dict[str, Any]
    network: dict[str, Any]
    modality: str | None = None
    ignore_label: int | None = None
    foreground_oversampling: float = 0.33
    train: TrainConfig = field(default_factory=lambda: default_train())
    batch_dice: bool = True
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    target_scale: list[float] | None = None
    training_range: dict[str, Any] | None = None
    #: How prediction runs (``mirror``, ``window``, ``precision``); None in plans written before
    #: it, which predict as they always did (see :func:`inference_settings`).
    inference: dict[str, Any] | None = None
    #: Spatial augmentation: with probability ``p`` a patch is rotated by up to ``rotate``
    #: degrees and scaled by a factor in ``[1 - scale, 1 + scale]``.
    augmentation: dict[str, float] = field(default_factory=lambda: dict(AUGMENTATION))
    format: str = PLAN_FORMAT

    FORMAT: ClassVar[str | None] = PLAN_FORMAT

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):
            self.train = default_train(**self.train)
        if self.train.loss not in LOSSES:
            raise PlanError(f"train.loss={self.train.loss!r}: use {' or '.join(LOSSES)}")
        n = self.spatial_dims
        if n not in (2, 3):
            raise PlanError(f"spatial_dims must be 2 or 3, got {n}")
        for name in ("target_spacing", "median_shape", "patch_size"):
            if len(getattr(self, name)) != n:
                raise PlanError(f"{name} needs {n} values, got {getattr(self, name)}")
        if any(v <= 0 for v in self.target_spacing):
            raise PlanError(f"target_spacing must be positive, got {self.target_spacing}")
        if self.target_scale is not None and (
            len(self.target_scale) != n or any(float(v) <= 0 for v in self.target_scale)
        ):
            raise PlanError(f"target_scale needs {n} positive values, got {self.target_scale}")
        strides = self.network.get("strides", [])
        divisor = [math.prod(s[i] for s in strides) for i in range(n)] if strides else [1] * n
        bad = [i for i in range(n) if self.patch_size[i] % divisor[i]]
        if bad:
            raise PlanError(
                f"patch_size {self.patch_size} is not divisible by the network's total stride "
                f"{divisor} along axis {bad[0]}"
            )
        if self.batch_size < 1 or not 0.0 <= self.foreground_oversampling <= 1.0:
            raise PlanError("batch_size must be >= 1 and foreground_oversampling in [0, 1]")
        if self.normalisation.get("scheme") not in ("ct", "zscore", "none"):
            raise PlanError(f"unknown normalisation {self.normalisation.get('scheme')!r}")
        self.augmentation = {**AUGMENTATION, **(self.augmentation or {})}
        a = self.augmentation
        if set(a) != set(AUGMENTATION) or not (
            0 <= a["scale"] < 1 and 0 <= a["p"] <= 1 and 0 <= a["rotate"] <= 180
        ):
            raise PlanError(
                f"augmentation {a}: keys {', '.join(AUGMENTATION)}; scale in [0, 1), p in [0, 1], "
                "rotate in [0, 180] degrees"
            )
        settings = self.inference or {}
        if (
            settings.get("window", "patch") not in WINDOWS
            or settings.get("precision", "float32") not in PRECISIONS
        ):
            raise PlanError(
                f"inference {settings}: window is {' or '.join(WINDOWS)}, precision "
                f"{' or '.join(PRECISIONS)}"
            )

    def grid_spacing(self, spacing: tuple[float, ...] | list[float]) -> tuple[float, ...]:
        """The spacing (index order) an image of ``spacing`` is resampled to."""
        if self.target_scale is None:
            return tuple(float(s) for s in self.target_spacing)
        return tuple(float(s) * float(f) for s, f in zip(spacing, self.target_scale, strict=True))

    @property
    def divisor(self) -> list[int]:
        """Per array axis, what patch sizes must be multiples of."""
        strides = self.network["strides"]
        return [math.prod(s[i] for s in strides) for i in range(self.spatial_dims)]

    def describe(self) -> list[str]:
        """The plan in a few lines, for ``medlens plan``."""
        shape = "x".join(map(str, self.patch_size))
        spacing = ", ".join(f"{s:.3g}" for s in self.target_spacing)
        grid = f"spacing ({spacing}) mm"
        if self.target_scale is not None:
            factors = ", ".join(f"{s:.3g}" for s in self.target_scale)
            grid = f"pixels scaled by 1/({factors}), median spacing ({spacing}) mm"
        return [
            f"{self.dataset}: {self.spatial_dims}D, {grid}, patch {shape}, batch "
            f"{self.batch_size}, {len(self.network['features'])}-stage U-Net, "
            f"{self.normalisation['scheme']} normalisation",
            *(f"  {note}" for note in self.notes),
        ]

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Plans written before the typed ``train`` section: its ``batch_dice`` is the plan's;
        the training batch size is the plan's ``batch_size``."""
        train = dict(data.get("train") or {})
        if "batch_dice" in train:
            data["batch_dice"] = bool(train.pop("batch_dice"))
        train.setdefault("batch_size", data.get("batch_size", 2))
        data["train"] = train
        return data

    def with_overrides(self, overrides):  # type: ignore[override]
        """As :meth:`Plan.with_overrides`; ``batch_size`` and ``train.batch_size`` are one
        setting, and a patch size set by hand is noted."""
        items = list(overrides)
        keys = [item.split("=", 1)[0].strip() for item in items]
        plan = super().with_overrides(items)
        for key in keys:
            if key in ("batch_size", "train.batch_size"):
                size = plan.batch_size if key == "batch_size" else plan.train.batch_size
                plan.batch_size, plan.train = size, plan.train.replace(batch_size=size)
        if "patch_size" in keys:
            plan.notes = [*plan.notes, "patch_size set by hand"]
        return plan


# ----------------------------------------------------------------------------------- planning
def make_plan(fp: dict[str, Any], *, device: str = "cpu") -> SegmentationPlan:
    """The plan for a dataset from its :func:`medlens.data.fingerprint` (segmentation)."""
    if fp.get("task") != "segmentation":
        raise PlanError(f"dataset {fp.get('name')!r} is a {fp.get('task')} dataset")
    n = int(fp["spatial_dims"])
    if device not in ("cpu", "gpu"):
        raise PlanError(f"device must be cpu or gpu, got {device!r}")
    budget = BUDGETS[device][n]
    notes: list[str] = []
    spacing_x = list(fp["spacing"]["median"])  # index order
    sizes_x = list(fp["size"]["median"])
    if fp.get("anisotropic"):
        coarse = max(range(n), key=lambda i: spacing_x[i])
        spacing_x[coarse] = float(fp["spacing"].get("p10", fp["spacing"]["median"])[coarse])
        notes.append(f"anisotropic: axis {coarse} (index order) at its 10th percentile spacing")
    median_mm = [s * p for s, p in zip(sizes_x, fp["spacing"]["median"], strict=True)]
    scale: list[float] | None = None
    if n == 2:  # fit the median image in about one patch: coarsen up to MAX_COARSEN
        voxels = math.prod(m / s for m, s in zip(median_mm, spacing_x, strict=True))
        factor = min(MAX_COARSEN, max(1.0, math.sqrt(voxels / budget["patch"])))
        if factor > 1.0:
            spacing_x = [s * factor for s in spacing_x]
            notes.append(f"2D spacing coarsened {factor:.2f}x so the median image fits a patch")
        if _zoomed(fp):
            scale = [factor] * n
            notes.append(
                "zoomed acquisitions (spacing varies, the foreground's size varies less in "
                f"pixels than in mm): each image scaled by 1/{factor:.2f}, not to one spacing"
            )
    shape = [max(1, round(m / s)) for m, s in zip(median_mm, spacing_x, strict=True)][::-1]
    spacing_a = spacing_x[::-1]  # array order
    patch = _fit_patch(shape, spacing_a, budget["patch"])
    strides, kernels = _topology(patch, spacing_a)
    divisor = [math.prod(s[i] for s in strides) for i in range(n)]
    patch = [max(d, _round_to(p, d)) for p, d in zip(patch, divisor, strict=True)]
    batch = max(2, min(64, budget["batch"] // math.prod(patch)))
    kind = "cpu" if device == "cpu" else "gpu"
    widths = WIDTHS[kind]
    features = [min(widths[n], widths["base"] * 2**i) for i in range(len(strides))]
    schedule = dict(SCHEDULES[kind])
    bf16 = kind == "cpu" and n == 3 and _native_bf16()
    if bf16:
        schedule.update(epochs=3 * schedule["epochs"], amp="on")
        notes.append(
            "bf16 mixed precision (this CPU computes bf16 natively): three times the epochs"
        )
    whole = all(s <= WINDOW_GROWTH * p for s, p in zip(shape, patch, strict=True))
    inference = {
        # one window holds the median image: mirroring costs 2^n small passes, and pays
        "mirror": n == 2 or whole,
        # "image" (one grown window) measured worse on the hippocampus: Dice 0.879 against
        # 0.891, the instance norms seeing other statistics than in training; an option only
        "window": "patch",
        "precision": "bf16" if bf16 else "float32",
    }
    if n == 3 and whole:
        notes.append("small volumes (a few windows each): predicted mirrored")
    modality = fp.get("modality")
    values = [int(v) for v in fp.get("label_values", [0, 1])]
    normalisation = normalisation_for(fp)
    return SegmentationPlan(
        dataset=str(fp.get("name", "dataset")),
        spatial_dims=n,
        in_channels=int(fp.get("channels", 1)),
        num_classes=max(values) + 1,
        label_values=values,
        target_spacing=[float(s) for s in spacing_x],
        median_shape=[int(s) for s in shape],
        patch_size=[int(p) for p in patch],
        batch_size=int(batch),
        normalisation=normalisation,
        network={
            "name": "unet",
            "features": features,
            "strides": strides,
            "kernel_sizes": kernels,
            "encoder": "plain",
            "deep_supervision": True,
        },
        modality=modality,
        train=default_train(**schedule, batch_size=int(batch)),
        device=kind,
        notes=notes,
        target_scale=scale,
        training_range=_training_range(fp),
        inference=inference,
    )


def normalisation_for(fp: dict[str, Any]) -> dict[str, Any]:
    """The intensity normalisation of a fingerprint's data, nnU-Net's rule: CT clipped to the
    (foreground's) 0.5-99.5 percentiles and standardised with the dataset's statistics, any
    other modality standardised per image (the plans of every task use it)."""
    intensity = (fp.get("intensity") or [{}])[0]
    if (fp.get("modality") or "").upper() == "CT" and intensity.get("n_voxels"):
        return {
            "scheme": "ct",
            "clip": [intensity["p00_5"], intensity["p99_5"]],
            "mean": intensity["mean"],
            "std": intensity["std"],
        }
    return {"scheme": "zscore"}


def inference_settings(plan: SegmentationPlan) -> dict[str, Any]:
    """How ``plan`` predicts: its ``inference`` section over what plans without one did
    (mirroring in 2D only, the training patch as the window, float32)."""
    return {"mirror": plan.spatial_dims == 2, "window": "patch", "precision": "float32",
            **(plan.inference or {})}  # fmt: skip


def _native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (:func:`medlens.engine.native_bf16`)."""
    from medlens.engine import native_bf16

    return native_bf16()


def _training_range(fp: dict[str, Any]) -> dict[str, Any] | None:
    """The pixel spacings and foreground sizes (mm and voxels, index order) the training
    images span, from the fingerprint: prediction warns outside them
    (:func:`outside_training_range`)."""
    spacing = fp.get("spacing") or {}
    if "min" not in spacing or "max" not in spacing:
        return None
    out: dict[str, Any] = {"spacing_mm": [list(spacing["min"]), list(spacing["max"])]}
    for unit in ("mm", "voxels"):
        extent = (fp.get("foreground_extent") or {}).get(unit) or {}
        if "min" in extent and "max" in extent:
            out[f"foreground_{unit}"] = [list(extent["min"]), list(extent["max"])]
    return out


def outside_training_range(plan: SegmentationPlan, spacing, extent_mm, margin: float = 1.25, *,
                           extent_voxels=None):  # fmt: skip
    """Why an image (its spacing, its predicted foreground's extent in mm, both index order)
    lies outside what the plan's training images spanned by more than ``margin``; None if not.

    ``spacing=None`` is an image that carries no pixel spacing (a photographic PNG or JPEG):
    its foreground is then compared in pixels (``extent_voxels``), never in millimetres."""
    span = plan.training_range or {}
    problems = []
    checks = (
        (("foreground_voxels", extent_voxels, "predicted foreground size", "pixels"),)
        if spacing is None
        else (("spacing_mm", spacing, "pixel spacing", "mm"),
              ("foreground_mm", extent_mm, "predicted foreground size", "mm"))
    )  # fmt: skip
    for name, values, what, unit in checks:
        if name not in span or values is None:
            continue
        low, high = min(span[name][0]), max(span[name][1])
        size = max(float(v) for v in values)
        if size > high * margin or size < low / margin:
            problems.append(f"{what} {size:.3g} {unit} outside the training images' "
                            f"{low:.3g}-{high:.3g} {unit}")  # fmt: skip
    return "; ".join(problems) or None


def _spread(stats: dict[str, list[float]]) -> float:
    """Geometric mean over axes of the 90th/10th percentile ratio."""
    ratios = [hi / lo for lo, hi in zip(stats["p10"], stats["p90"], strict=True) if lo > 0]
    return math.prod(ratios) ** (1 / len(ratios)) if ratios else 1.0


def _zoomed(fp: dict[str, Any]) -> bool:
    """Whether the images were zoomed to the anatomy (see the module's notes)."""
    extent = fp.get("foreground_extent")
    if not extent or "p90" not in fp["spacing"] or _spread(fp["spacing"]) <= ZOOM_SPREAD:
        return False
    return _spread(extent["voxels"]) < _spread(extent["mm"])


def _fit_patch(shape: list[int], spacing: list[float], voxels: int) -> list[int]:
    """Start from the median shape; shrink the axis longest in millimetres until it fits."""
    patch = [float(s) for s in shape]
    while math.prod(patch) > voxels:
        axis = max(range(len(patch)), key=lambda i: patch[i] * spacing[i] if patch[i] > 8 else -1)
        patch[axis] = max(8.0, patch[axis] * 0.9)
        if all(p <= 8 for p in patch):
            break
    return [max(8, round(p)) for p in patch]


def _topology(patch: list[int], spacing: list[float]) -> tuple[list[list[int]], list[list[int]]]:
    """Strides and kernel sizes per stage (array order), nnU-Net's rules restated."""
    n = len(patch)
    size, current = list(patch), list(spacing)
    strides, kernels = [[1] * n], [[3] * n]
    finest = min(current)
    kernels[0] = [1 if current[i] > 2 * finest else 3 for i in range(n)]
    while len(strides) < MAX_STAGES:
        finest = min(current)
        step = [
            2 if size[i] >= 2 * MIN_FEATURE_MAP and current[i] <= 2 * finest else 1
            for i in range(n)
        ]
        if not any(s == 2 for s in step):
            break
        size = [s // st for s, st in zip(size, step, strict=True)]
        current = [c * st for c, st in zip(current, step, strict=True)]
        finest = min(current)
        strides.append(step)
        kernels.append([1 if current[i] > 2 * finest else 3 for i in range(n)])
    return strides, kernels


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


# ---------------------------------------------------------------------------------- overrides
def default_train(**settings: Any) -> TrainConfig:
    """A segmentation plan's training settings: nnU-Net's SGD schedule, Dice + CE, validation
    Dice chosen as the best epoch; ``settings`` change them."""
    from medlens.engine import TrainConfig

    base = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.99, "nesterov": True,
            "weight_decay": 3e-5, "schedule": "cosine", "loss": "dice_ce", "monitor": "val_dice",
            "monitor_mode": "max", "batches_per_epoch": 50, "batch_size": 2}  # fmt: skip
    return TrainConfig(**{**base, **settings})


def apply_plan_overrides(plan: SegmentationPlan, overrides: list[str]) -> SegmentationPlan:
    """A copy of ``plan`` with ``key=value`` items applied (``patch_size=96,96,96``,
    ``batch_size=4``, ``network.encoder=residual``, ``train.epochs=50``): see
    :meth:`medlens.tasks.plan.Plan.with_overrides`."""
    return plan.with_overrides(overrides)
