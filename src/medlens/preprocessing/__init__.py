"""Deterministic preprocessing of :class:`~medlens.image.Image` objects, per sample.

Spatial steps (:mod:`~medlens.preprocessing.spatial`) keep geometry right and move label maps
with their image; intensity steps (:mod:`~medlens.preprocessing.intensity`,
:mod:`~medlens.preprocessing.enhance`) also take torch tensors ``(B, C, ...)`` where natural.
A :class:`Preprocessor` chains steps, fits the fitted ones on a dataset and saves itself as JSON.

Importing this package is cheap: the names below load their module (SciPy, scikit-image) on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medlens._lazy import lazy_attributes

__all__ = [
    "CLAHE",
    "CT_WINDOWS",
    "Box",
    "Brightness",
    "CTWindow",
    "ChannelZScore",
    "Contrast",
    "CropForeground",
    "FittedStep",
    "Gamma",
    "MinMax",
    "NotFittedError",
    "PadOrCrop",
    "PercentileClipZScore",
    "Preprocessor",
    "Reorient",
    "Resample",
    "ResampleLike",
    "Resize",
    "Sharpen",
    "Step",
    "ZScore",
    "centered_box",
    "crop_to_box",
    "foreground_box",
    "register_step",
    "registered_steps",
]

_MODULES = {
    "spatial": (
        "Box",
        "CropForeground",
        "PadOrCrop",
        "Reorient",
        "Resample",
        "ResampleLike",
        "Resize",
        "centered_box",
        "crop_to_box",
        "foreground_box",
    ),
    "intensity": ("CT_WINDOWS", "CTWindow", "MinMax", "PercentileClipZScore", "ZScore"),
    "_channels": ("ChannelZScore",),
    "enhance": ("CLAHE", "Brightness", "Contrast", "Gamma", "Sharpen"),
    "pipeline": (
        "FittedStep",
        "NotFittedError",
        "Preprocessor",
        "Step",
        "register_step",
        "registered_steps",
    ),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}

if TYPE_CHECKING:
    from medlens.preprocessing._channels import ChannelZScore
    from medlens.preprocessing.enhance import CLAHE, Brightness, Contrast, Gamma, Sharpen
    from medlens.preprocessing.intensity import (
        CT_WINDOWS,
        CTWindow,
        MinMax,
        PercentileClipZScore,
        ZScore,
    )
    from medlens.preprocessing.pipeline import (
        FittedStep,
        NotFittedError,
        Preprocessor,
        Step,
        register_step,
        registered_steps,
    )
    from medlens.preprocessing.spatial import (
        Box,
        CropForeground,
        PadOrCrop,
        Reorient,
        Resample,
        ResampleLike,
        Resize,
        centered_box,
        crop_to_box,
        foreground_box,
    )


__getattr__ = lazy_attributes(__name__, {k: f"medlens.preprocessing.{v}" for k, v in _LAZY.items()})


def __dir__() -> list[str]:
    return sorted(__all__)
