"""The pre-alignment of a learned registration: every image into one atlas frame.

The network sees a pair on the canonical grid of an **atlas frame** (centred on its origin),
each image sampled through its own atlas -> image world map. With ``prealign = "center"`` that
map is the translation to the image's centre (the centres aligned, as ``medlens register
--initial center``); with ``"affine"`` it is an affine found by instance optimisation against
the run's **reference** image (a training case of median extent, kept in the run folder as
``reference.nii.gz``): the images of a pair are then affinely aligned with each other through
the reference, which removes the global part of the deformation before the network (the
registration ``A(p + D u)`` then holds ``A = W_m W_f^-1``). Training computes each case's map
once; prediction computes the two images' maps (two affine stages, about 0.2 s each for a
hippocampus crop).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medlens.image import Image

__all__ = ["AFFINE_ITERATIONS", "PREALIGN", "REFERENCE", "atlas_world", "choose_reference"]

PREALIGN = ("center", "affine")
REFERENCE = "reference.nii.gz"
#: steps per pyramid level of the affine stage against the reference (25: 0.17 s per
#: hippocampus crop on one core, against 0.6 s for 100)
AFFINE_ITERATIONS = 25


def atlas_world(trained: Any, image: Image) -> np.ndarray:
    """The atlas -> ``image`` LPS map of ``trained``'s plan (see the module's notes)."""
    return world_for(trained.plan, trained.reference, image)


def world_for(plan, reference: Image | None, image: Image) -> np.ndarray:
    from medlens.tasks.registration.data import centring

    if plan.prealign == "center" or reference is None or _same(reference, image):
        return centring(plan, image)
    from medlens.registration.optimise import RegistrationError
    from medlens.registration.register import centre_alignment, register

    try:
        world = register(reference, image, method="affine", similarity="ncc",
                         iterations=AFFINE_ITERATIONS).world  # fmt: skip
    except RegistrationError:  # no better than the centres: keep the centres
        world = centre_alignment(reference, image)
    return np.asarray(world) @ centring(plan, reference)


def _same(a: Image, b: Image) -> bool:
    """Whether ``b`` is the image ``a`` (same grid and values): its map is the centring."""
    return (a.spatial_shape == b.spatial_shape and np.allclose(a.affine, b.affine)
            and np.array_equal(np.asarray(a.array), np.asarray(b.array)))  # fmt: skip


def choose_reference(images: dict[str, Image]) -> str:
    """The id of the image whose physical extent is closest to the median extent."""
    ids = sorted(images)
    extents = np.array([np.asarray(images[i].size) * np.asarray(images[i].spacing) for i in ids])
    median = np.median(extents, axis=0)
    return ids[int(np.argmin(np.abs(extents - median).sum(axis=1)))]
