"""medlens: deep learning on medical images.

The package imports nothing heavy at import time; the public names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medlens._lazy import lazy_attributes

__version__ = "0.1.0"

__all__ = ["Image", "Role", "load_image", "load_predictor", "open_dataset", "save_image"]

_LAZY = {
    "Image": "medlens.image",
    "Role": "medlens.image",
    "load_image": "medlens.io",
    "save_image": "medlens.io",
    "open_dataset": "medlens.data",
    "load_predictor": "medlens.tasks.registry",
}

if TYPE_CHECKING:
    from medlens.data import open_dataset
    from medlens.image import Image, Role
    from medlens.io import load_image, save_image
    from medlens.tasks.registry import load_predictor


__getattr__ = lazy_attributes(__name__, _LAZY)
