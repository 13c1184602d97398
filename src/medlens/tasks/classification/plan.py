"""What to train when the user names nothing: a model, a schedule and augmentation for the data.

The choice looks at the dimensionality, the image size and the number of training images, and
keeps training within minutes on an ordinary CPU: tiny 2D images (MedMNIST's 28x28) and small
volumes (28^3) get the small CNN for many epochs, larger 2D images a ResNet-18 with the ImageNet
stem, larger volumes a slim 3D ResNet-10. :class:`Classifier` puts the fitted input
normalisation in front of the network, so the saved weights carry the preprocessing and
prediction applies exactly the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from medlens.tasks.classification.data import InputSpec
from medlens.tasks.plan import Plan as TaskPlan
from medlens.tasks.plan import PlanError

if TYPE_CHECKING:
    from medlens.engine import TrainConfig

PLAN_FORMAT = "medlens.classification-plan/1"

__all__ = [
    "PLAN_FORMAT",
    "Classifier",
    "Plan",
    "build_augment",
    "build_network",
    "fit_normaliser",
    "make_plan",
]


@dataclass
class Plan(TaskPlan):
    """The run's model, training settings and augmentation, with the reason in words.

    It lives in the run's ``run.json`` (``"plan"``); ``--set`` changes it as any plan
    (:mod:`medlens.tasks.plan`): ``lr=0.001`` or ``train.lr=0.001``, ``model_kwargs.width=16``,
    ``augment.rotate=0``.
    """

    model: str
    model_kwargs: dict[str, Any]
    train: TrainConfig
    augment: dict[str, Any]
    reason: str
    chosen: bool = True  # False when the user named the model
    notes: list[str] = field(default_factory=list)
    format: str = PLAN_FORMAT

    FORMAT: ClassVar[str | None] = PLAN_FORMAT

    @classmethod
    def _upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Runs from before plans had a format hold the plan without one."""
        data.setdefault("format", PLAN_FORMAT)
        return data

    def describe(self) -> list[str]:
        """The plan in a few lines, for ``medlens plan``."""
        t = self.train
        return [
            f"{self.model} ({self.reason}); {t.epochs} epochs of batch {t.batch_size}, "
            f"{t.optimizer} lr {t.lr:g}, {t.schedule} schedule, monitor {t.monitor}",
            *(f"  {note}" for note in self.notes),
        ]

    def __post_init__(self) -> None:
        from medlens.engine import TrainConfig
        from medlens.engine.optim import ENGINE_LOSSES

        if isinstance(self.train, dict):  # runs written before the typed plan: a subset
            self.train = TrainConfig.from_dict(self.train)
        if self.train.loss not in ENGINE_LOSSES:
            raise PlanError(f"train.loss={self.train.loss!r}: use {', '.join(ENGINE_LOSSES)}")


def make_plan(
    spec: InputSpec, n_train: int, task: str, *, model: str | None = None, epochs: int | None = None
) -> Plan:
    """Model, schedule and augmentation suited to ``spec`` and ``n_train`` images."""
    side = min(spec.shape)
    train: dict[str, Any] = {
        "optimizer": "adamw",
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 2,
        "label_smoothing": 0.0 if task == "multilabel" else 0.05,
        "monitor": "val_auc",
        "monitor_mode": "max",
    }
    if spec.spatial_dims == 2 and side <= 64:
        name, kwargs = "smallcnn", {"width": 32, "num_blocks": 4, "dropout": 0.2}
        budget = 120_000  # image presentations: about two minutes at ~1,000 images/s
        train.update(batch_size=64, lr=3e-3)
        reason = f"small 2D images ({'x'.join(map(str, spec.shape))}): the small fast CNN"
        bounds = (30, 150)
    elif spec.spatial_dims == 2:
        name, kwargs = "resnet18", {"stem": "large", "dropout": 0.2}
        budget = 40_000
        train.update(batch_size=32, lr=1e-3)
        reason = f"2D images of {'x'.join(map(str, spec.shape))}: ResNet-18 (ImageNet stem)"
        bounds = (10, 60)
    elif side <= 32:
        name, kwargs = "smallcnn", {"width": 16, "num_blocks": 4, "dropout": 0.2}
        budget = 60_000  # ~100 volumes/s: about ten minutes on a 2-core CPU
        train.update(batch_size=16, lr=2e-3)
        reason = f"small 3D volumes ({'x'.join(map(str, spec.shape))}): the small fast 3D CNN"
        bounds = (20, 80)
    else:
        name, kwargs = "resnet10", {"stem": "large", "width": 32, "dropout": 0.2}
        budget = 40_000
        train.update(batch_size=16, lr=2e-3)
        reason = f"3D volumes of {'x'.join(map(str, spec.shape))}: slim 3D ResNet-10"
        bounds = (15, 60)
    chosen = model is None
    if model is not None and model != name:
        name, kwargs = model, {"dropout": 0.2}
        if model.startswith(("resnet", "densenet")):
            kwargs["stem"] = "small" if side <= 64 and spec.spatial_dims == 2 else "large"
        reason = f"model {model} as asked"
    planned = int(np.clip(round(budget / max(n_train, 1)), *bounds))
    train["epochs"] = int(epochs) if epochs is not None else planned
    from medlens.engine import TrainConfig

    augment = {
        "rotate": 10.0,
        "scale": 0.1,
        "translate": max(1.0, 0.05 * side),
        "flip_axes": [spec.spatial_dims - 1] if spec.spatial_dims == 2 else [0, 1, 2],
        "contrast": 0.2,
    }
    return Plan(name, kwargs, TrainConfig(**train), augment, reason, chosen)


# ------------------------------------------------------------------------------- the network
class Classifier(nn.Module):
    """``backbone((x - mean) / std)``: the normalisation travels with the weights.

    Inputs are what :class:`~medlens.engine.TensorBatches` hands over: 8-bit images scaled to
    ``[0, 1]``, other images as they are. The backbone interface (``forward_features``,
    ``forward_head``, ``feature_layer``) is passed through for explanation methods.
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        shape = (1, len(mean)) + (1,) * backbone.spatial_dims
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(self.normalise(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalise(x))

    @property
    def feature_layer(self) -> nn.Module:
        return self.backbone.feature_layer


def build_network(
    plan: Plan, spec: InputSpec, num_outputs: int, mean: Sequence[float], std: Sequence[float]
) -> Classifier:
    """The plan's backbone for ``spec`` inputs behind the normalisation."""
    from medlens.models import create_model

    backbone = create_model(
        plan.model,
        spatial_dims=spec.spatial_dims,
        in_channels=spec.channels,
        num_classes=num_outputs,
        **plan.model_kwargs,
    )
    return Classifier(backbone, mean, std)


def fit_normaliser(images: np.ndarray, *, sample: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of training images (8-bit scaled to ``[0, 1]``):
    a fitted :class:`~medlens.preprocessing.ChannelZScore`'s, the step ``preprocessing.json``
    saves."""
    from medlens.preprocessing import ChannelZScore

    step = ChannelZScore(sample=sample).fit(images)
    return list(step.mean_), list(step.std_)


# ------------------------------------------------------------------------------ augmentation
def build_augment(settings: dict[str, Any], spatial_dims: int):
    """A batch augmentation ``augment(x, generator) -> x`` from the plan's settings (or None)."""
    from medlens.transforms import Batch, Compose, Contrast, RandomAffine, RandomFlip

    if not settings:
        return None
    steps: list[Any] = []
    if settings.get("flip_axes"):
        steps.append(RandomFlip(axes=tuple(settings["flip_axes"]), p=0.5))
    if settings.get("rotate") or settings.get("scale") or settings.get("translate"):
        steps.append(
            RandomAffine(
                rotate=settings.get("rotate", 0.0),
                scale=settings.get("scale", 0.0),
                translate=settings.get("translate", 0.0),
                p=0.8,
            )
        )
    if settings.get("contrast"):
        c = float(settings["contrast"])
        steps.append(Contrast(factor=(1 - c, 1 + c), p=0.5))
    if not steps:
        return None

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return Compose(steps, generator=generator)(Batch(image=x))["image"]

    return augment
