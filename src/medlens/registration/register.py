"""One pair registered by instance optimisation: :func:`register` and its result.

The images keep their own grids: every comparison samples the moving image at the world points
of the fixed image's voxels (:func:`~medlens.registration.optimise.moving_coords`), so spacing,
direction and origin are honoured and nothing is resampled twice. Intensities are compared on one
grey channel (the mean of the channels, so RGB histology works), each image scaled by its own
1st and 99th percentiles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from medlens.errors import MedlensError
from medlens.image import Image
from medlens.preprocessing import MinMax
from medlens.registration.fields import identity_grid
from medlens.registration.optimise import (
    RegistrationError,
    Stage,
    affine_stage,
    deformable_stage,
    moving_coords,
    overlap,
    warp_moving,
)
from medlens.registration.pyramid import Grid, grid_of, pyramid
from medlens.registration.similarity import similarity as similarity_named
from medlens.transforms._warp import onehot_linear, warp_coords

__all__ = ["INITIAL", "METHODS", "Registration", "normalised_grey", "register"]

METHODS = ("affine", "deformable")
INITIAL = ("affine", "center", "none")
#: diffusion weight of the velocity (mm) against the similarity relative to its starting value,
#: and the Gaussian smoothing of the velocity (control voxels). On 6 hippocampus pairs of the
#: first 100 cases (LNCC; mean Dice / SDlogJ): weight 0.3 unsmoothed 0.821 / 0.49, weight 1 with
#: smoothing 1: 0.815 / 0.24, weight 3 with smoothing 2: 0.791 / 0.12; affine alone 0.721. The
#: default sits where SimpleITK's demons, elastix and ANTs SyN stand in smoothness (0.2-0.3).
WEIGHT = 1.0
SMOOTH = 1.0
#: per similarity where it differs from :data:`WEIGHT`. Mutual information's relative change
#: over a registration is far larger than LNCC's, so weight 1 let it fit noise: on SIMULATED
#: known deformations with intensities remapped (the T1 brain, the TotalSegmentator CT and MR,
#: seed 1 of benchmarks/registration.py's maker, which the benchmark does not score), the
#: endpoint error was 3.94 / 1.22 / 1.25 mm at weight 1 against 1.27 / 0.93 / 1.03 unregistered;
#: 1.70 / 0.91 / 1.09 at 4, 1.19 / 0.93 / 1.03 at 8, 1.10 / 0.92 / 1.01 at 16.
WEIGHTS = {"mi": 16.0}


@dataclass
class Registration:
    """The transform found for one pair and how it was found."""

    fixed: Image
    moving: Image
    world: np.ndarray  # (n+1, n+1) affine, fixed LPS -> moving LPS
    field: torch.Tensor | None  # (1, n, *fixed) displacement in fixed voxels, or None
    stages: list[Stage] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def fixed_grid(self) -> Grid:
        return grid_of(self.fixed, torch.zeros(1, 1, *self.fixed.spatial_shape))

    def coords(self, moving: Image | None = None) -> torch.Tensor:
        """Index coordinates in ``moving`` (default: the registered moving image's grid) of
        every fixed voxel."""
        target = grid_of(moving or self.moving, torch.zeros(1, 1, 1))
        return moving_coords(self.fixed_grid, target, self.world, self.field)

    def warp(self, image: Image | None = None, *, labels: bool = False) -> Image:
        """``image`` (default: the moving image; any image on the moving image's world) on the
        fixed grid: linear, or for ``labels`` per-label linear then the most likely label."""
        image = self.moving if image is None else image
        coords = self.coords(image)
        array = np.asarray(image.array)
        spatial = image.spatial_shape
        x = torch.from_numpy(np.ascontiguousarray(array.reshape(-1, *spatial)))[None]
        if labels:
            values = torch.from_numpy(np.ascontiguousarray(array.astype(np.int64)))[None, None]
            out = onehot_linear(values, lambda t: warp_coords(t, coords, padding="zeros"))
            warped = out[0, 0].numpy().astype(array.dtype)
        else:
            warped = warp_coords(x.float(), coords, padding="zeros")[0].numpy()
            warped = warped.reshape(*array.shape[: array.ndim - len(spatial)], *warped.shape[1:])
            warped = warped.astype(np.float32)
        return on_grid(warped, self.fixed, image)

    def displacement_mm(self) -> np.ndarray:
        """``T(p) - p`` in LPS mm ``(n, *fixed)``, channel 0 along world x (ITK's field)."""
        n = self.fixed.spatial_dims
        grid = self.fixed_grid
        plain = identity_grid(grid.shape, dtype=torch.float64)[0]
        index = plain if self.field is None else plain + self.field[0].movedim(0, -1).double()
        to_world = torch.as_tensor(self.world @ grid.matrix)
        mapped = index @ to_world[:n, :n].T + to_world[:n, n]
        matrix = torch.as_tensor(grid.matrix)
        start = plain @ matrix[:n, :n].T + matrix[:n, n]
        return (mapped - start).movedim(-1, 0).numpy().astype(np.float32)

    def map_points(self, world: np.ndarray) -> np.ndarray:
        """Fixed LPS points ``(N, n)`` to the moving image's world (``T``), the field sampled
        linearly at each point."""
        from medlens.transforms._warp import sample_at

        world = np.asarray(world, dtype=np.float64).reshape(-1, self.fixed.spatial_dims)
        index = self.fixed.world_to_index(world)
        if self.field is not None:
            u = sample_at(self.field, torch.from_numpy(index[None]).float())[0].double().numpy()
            index = index + u
        mapped = self.fixed.index_to_world(index)
        return mapped @ self.world[:-1, :-1].T + self.world[:-1, -1]


def on_grid(array: np.ndarray, grid: Image, like: Image) -> Image:
    """``array`` on ``grid``'s geometry, with ``like``'s role, modality and leading axes."""
    return grid.with_array(
        array, role=like.role, modality=like.modality, leading=like.leading, meta={}
    )


#: how :func:`normalised_grey` scales the channels' mean (a learned run saves it as its
#: ``preprocessing.json``)
GREY_SCALING = MinMax(percentiles=(1, 99), clip=False)


def normalised_grey(image: Image) -> torch.Tensor:
    """One float channel, the mean of the channels scaled linearly so its 1st and 99th
    percentiles land on 0 and 1 (:data:`GREY_SCALING`), ``(1, 1, *S)``."""
    array = np.asarray(image.array, dtype=np.float32).reshape(-1, *image.spatial_shape)
    grey = array.mean(axis=0)
    if not np.all(np.isfinite(grey)):
        raise MedlensError("the image holds NaN or infinite values")
    return GREY_SCALING.transform(torch.from_numpy(np.ascontiguousarray(grey))[None, None])


def centre_alignment(fixed: Image, moving: Image) -> np.ndarray:
    """The translation that puts the moving image's centre on the fixed image's."""
    n = fixed.spatial_dims
    centre = [i.index_to_world((np.asarray(i.size) - 1) / 2) for i in (fixed, moving)]
    out = np.eye(n + 1)
    out[:n, n] = centre[1] - centre[0]
    return out


def register(
    fixed: Image,
    moving: Image,
    *,
    method: str = "deformable",
    similarity: str = "lncc",
    initial: str = "affine",
    weight: float | None = None,
    regulariser: str = "diffusion",
    smooth: float | None = None,
    fixed_mask: Image | None = None,
    levels: int = 4,
    iterations: int = 100,
    log: Callable[[str], None] = lambda s: None,
) -> Registration:
    """Register ``moving`` to ``fixed`` (see the module's notes); ``method`` ``affine`` stops
    after the affine, ``deformable`` adds a diffeomorphic deformation; ``initial``: ``affine``
    (an affine stage first), ``center`` (the images' centres only) or ``none``."""
    if method not in METHODS:
        raise MedlensError(f"method {method!r}: use {', '.join(METHODS)} or learned:RUN")
    if initial not in INITIAL:
        raise MedlensError(f"initial {initial!r}: use {', '.join(INITIAL)}")
    if fixed.spatial_dims != moving.spatial_dims:
        raise MedlensError(
            f"a {fixed.spatial_dims}D fixed image and a {moving.spatial_dims}D moving image"
        )
    loss = similarity_named(similarity)
    started = time.perf_counter()
    try:
        fixed_grey, moving_grey = normalised_grey(fixed), normalised_grey(moving)
    except MedlensError as error:
        raise MedlensError(error.problem, fixed.meta.get("path") or "image") from None
    fine_fixed = grid_of(fixed, fixed_grey)
    fine_moving = grid_of(moving, moving_grey)
    fixed_levels = pyramid(fine_fixed, levels)
    moving_levels = pyramid(fine_moving, len(fixed_levels))
    while len(moving_levels) < len(fixed_levels):
        moving_levels.append(moving_levels[-1])
    masks = _mask_levels(fixed_mask, fixed, fixed_levels)
    pairs = list(zip(fixed_levels, moving_levels, masks, strict=True))[::-1]  # coarse first
    level_loss = loss
    features = getattr(loss, "features", None)
    if features is not None:  # each level's features once; the moving ones are warped
        with torch.no_grad():
            pairs = [(Grid(features(f.tensor), f.matrix), Grid(features(m.tensor), m.matrix), k)
                     for f, m, k in pairs]  # fmt: skip
        level_loss = loss.compare
    world = np.eye(fixed.spatial_dims + 1) if initial == "none" else centre_alignment(fixed, moving)
    start = world
    if overlap(fine_fixed, fine_moving, world) < 0.05:
        raise RegistrationError("the images do not overlap after the initial alignment")
    stages: list[Stage] = []
    if initial == "affine" or method == "affine":
        affine_loss = similarity_named("ncc") if similarity == "lncc" else level_loss
        world, stage = affine_stage(pairs, world, affine_loss, iterations=iterations, log=log)
        stages.append(stage)
        if overlap(fine_fixed, fine_moving, world) < 0.05:
            raise RegistrationError("the affine stage moved the images apart (no overlap left)")
    displacement = None
    if method == "deformable":
        displacement, stage = deformable_stage(
            pairs,
            world,
            level_loss,
            weight=WEIGHTS.get(similarity, WEIGHT) if weight is None else float(weight),
            smooth=SMOOTH if smooth is None else float(smooth),
            regulariser=regulariser,
            iterations=iterations,
            log=log,
        )
        stages.append(stage)
    result = Registration(fixed, moving, world, displacement, stages)
    _check_improved(result, start, fine_fixed, fine_moving, loss, masks[0])
    result.seconds = time.perf_counter() - started
    return result


def _mask_levels(mask: Image | None, fixed: Image, levels: list[Grid]):
    """The fixed mask at each level (1 inside), or ``None`` each."""
    if mask is None:
        return [None] * len(levels)
    fixed.check_same_grid(mask, name=mask.meta.get("path") or "the fixed mask")
    tensor = torch.from_numpy((np.asarray(mask.array) > 0).astype(np.float32))[None, None]
    out: list[torch.Tensor | None] = []
    for grid in levels:
        mode = ("linear", "bilinear", "trilinear")[tensor.ndim - 3]
        out.append(torch.nn.functional.interpolate(tensor, size=grid.shape, mode=mode) > 0.5)
    return [m.float() if m is not None else None for m in out]


def _check_improved(result: Registration, start, fixed: Grid, moving: Grid, loss, mask) -> None:
    """Refuse a result whose similarity is worse than at its starting alignment ``start``."""
    values = []
    with torch.no_grad():
        for world, u in ((start, None), (result.world, result.field)):
            warped, inside = warp_moving(moving, moving_coords(fixed, moving, world, u))
            weight = inside if mask is None else inside * mask
            values.append(float(loss(fixed.tensor, warped, weight)))
    result.stages.append(Stage("check", [{"start": values[0], "registered": values[1]}]))
    if not np.isfinite(values[1]) or values[1] > values[0] + 0.05 * abs(values[0]) + 1e-6:
        raise RegistrationError(
            f"the registration diverged: similarity {values[1]:.4f} against {values[0]:.4f} "
            "without it; nothing written"
        )
