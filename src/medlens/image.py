"""The image model: a voxel array with its geometry and role.

Conventions (the same as SimpleITK/ITK and DICOM, stated once here and relied on everywhere):

* ``array`` is a NumPy array in C order with spatial axes last and *reversed*: ``(z, y, x)`` for a
  volume, ``(y, x)`` for a 2D image. Non-spatial axes come first and are named in ``leading``
  (``"channel"`` for multi-channel images, ``"time"`` for temporal series), so an fMRI series is
  ``(t, z, y, x)`` with ``leading=("time",)`` and an RGB photo is ``(3, y, x)`` with
  ``leading=("channel",)``.
* Geometry is in *index order* ``(i, j, k) = (x, y, z)``: ``spacing[0]`` is the spacing along the
  last array axis. ``direction`` is ``n x n`` with column ``d`` the world unit vector of index axis
  ``d``; ``origin`` is the world position of the centre of voxel ``(0, 0, 0)``.
* World coordinates are patient LPS in millimetres (+x towards the patient's left, +y posterior,
  +z superior) as in DICOM and ITK. NIfTI's RAS affine is converted on the way in and out.

The model is a small dataclass, not a tensor subclass: metadata never slows down tensor maths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.errors import GeometryError

if TYPE_CHECKING:
    import torch

__all__ = ["Image", "Role", "orientation_from_direction"]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # positive, negative world direction
_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}
_LEADING_NAMES = ("channel", "time")


class Role(str, Enum):
    """What the voxel values mean; decides interpolation (labels are never blended)."""

    INTENSITY = "intensity"
    LABEL = "label"


def orientation_from_direction(direction: np.ndarray) -> str:
    """Axis codes (``"LPS"``, ``"RAS"``, ...) of a direction matrix, in index order ``(i, j, k)``.

    Each letter is the world direction an index axis points *towards*. Oblique axes take their
    dominant component; axes are assigned greedily so no two share a world axis.
    """
    direction = np.asarray(direction, dtype=float)
    n = direction.shape[0]
    codes = [""] * n
    free_world = set(range(n))
    weights = np.abs(direction)
    # Assign the most clearly aligned index axes first so oblique ones take what is left.
    for axis in np.argsort(-weights.max(axis=0), kind="stable"):
        world = max(free_world, key=lambda w: weights[w, axis])
        free_world.discard(world)
        positive, negative = _AXIS_LETTERS[world]
        codes[axis] = positive if direction[world, axis] >= 0 else negative
    return "".join(codes)


@dataclass(eq=False)
class Image:
    """A medical image: voxels, geometry, role and provenance.

    Args:
        array: voxel values, leading (channel/time) axes first, then spatial axes ``(z, y, x)``.
        spacing: voxel size in mm per index axis ``(x, y[, z])``.
        origin: LPS world position (mm) of the centre of the first voxel.
        direction: ``n x n`` direction cosines, column ``d`` for index axis ``d``.
        role: intensity image or label map.
        modality: DICOM-style modality code (``"CT"``, ``"MR"``, ``"US"``, ...) when known.
        leading: names of the non-spatial leading axes, each ``"channel"`` or ``"time"``.
        meta: provenance and source metadata (file paths, series UID, time points, ...).
    """

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    direction: np.ndarray | None = None
    role: Role = Role.INTENSITY
    modality: str | None = None
    leading: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            self.array = np.asarray(self.array)
        self.role = Role(self.role)
        self.leading = tuple(self.leading)
        for name in self.leading:
            if name not in _LEADING_NAMES:
                raise ValueError(f"leading axis names must be among {_LEADING_NAMES}, got {name!r}")
        n = self.array.ndim - len(self.leading)
        if n not in (2, 3):
            raise ValueError(
                f"an image has 2 or 3 spatial axes; array of shape {self.array.shape} with "
                f"leading axes {self.leading} has {n}"
            )
        spacing = (1.0,) * n if self.spacing is None else self.spacing
        origin = (0.0,) * n if self.origin is None else self.origin
        direction = np.eye(n) if self.direction is None else self.direction
        self.spacing = tuple(float(s) for s in spacing)
        self.origin = tuple(float(o) for o in origin)
        self.direction = np.array(direction, dtype=float).reshape(n, n)
        if len(self.spacing) != n or len(self.origin) != n:
            raise ValueError(f"spacing and origin need {n} values for a {n}D image")
        if not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be positive and finite, got {self.spacing}")
        if not np.all(np.isfinite(self.origin)) or not np.all(np.isfinite(self.direction)):
            raise ValueError("origin and direction must be finite")
        if abs(np.linalg.det(self.direction)) < 1e-6:
            raise ValueError(f"direction matrix is singular: {self.direction.tolist()}")

    # ------------------------------------------------------------------ basic properties
    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return self.array.ndim - len(self.leading)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Array shape of the spatial axes, ``(z, y, x)`` order."""
        return tuple(self.array.shape[len(self.leading) :])

    @property
    def size(self) -> tuple[int, ...]:
        """Number of voxels per index axis ``(x, y[, z])``, as ITK reports it."""
        return self.spatial_shape[::-1]

    @property
    def num_channels(self) -> int:
        return self.array.shape[self.leading.index("channel")] if "channel" in self.leading else 1

    @property
    def num_time_points(self) -> int:
        return self.array.shape[self.leading.index("time")] if "time" in self.leading else 1

    @property
    def is_label(self) -> bool:
        return self.role is Role.LABEL

    @property
    def orientation(self) -> str:
        """Axis codes in index order, e.g. ``"LPS"`` for a standard axial DICOM series."""
        return orientation_from_direction(self.direction)

    @property
    def affine(self) -> np.ndarray:
        """``(n+1) x (n+1)`` matrix mapping index ``(i, j[, k], 1)`` to LPS world (mm)."""
        n = self.spatial_dims
        out = np.eye(n + 1)
        out[:n, :n] = self.direction * np.asarray(self.spacing)[None, :]
        out[:n, n] = self.origin
        return out

    @property
    def ras_affine(self) -> np.ndarray:
        """4x4 NIfTI-style affine from index ``(i, j, k)`` to RAS world (2D lifted to 3D)."""
        lps = np.eye(4)
        n = self.spatial_dims
        lps[:n, :n] = self.affine[:n, :n]
        lps[:n, 3] = self.origin
        return _LPS_TO_RAS @ lps

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_affine(
        cls, array: np.ndarray, affine: np.ndarray, *, ras: bool = False, **kwargs: Any
    ) -> Image:
        """Build an image from an index-to-world affine (LPS, or RAS with ``ras=True``)."""
        affine = np.asarray(affine, dtype=float)
        if ras:
            affine = _LPS_TO_RAS @ affine  # the flip is its own inverse
        n = affine.shape[0] - 1
        linear = affine[:n, :n]
        spacing = np.linalg.norm(linear, axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"affine has a zero-length axis: {affine.tolist()}")
        return cls(
            array,
            spacing=tuple(spacing),
            origin=tuple(affine[:n, n]),
            direction=linear / spacing[None, :],
            **kwargs,
        )

    def replace(self, **changes: Any) -> Image:
        """A new image sharing everything not named (the array is not copied). A new
        ``spacing`` is a known one: ``meta["spacing_known"]`` (False where a reader had none)
        goes."""
        if "meta" not in changes:
            changes["meta"] = dict(self.meta)
            if "spacing" in changes:
                changes["meta"].pop("spacing_known", None)
        return dataclasses.replace(self, **changes)

    def with_array(self, array: np.ndarray, **changes: Any) -> Image:
        """Same geometry, new voxels (e.g. a prediction on this image's grid)."""
        return self.replace(array=array, **changes)

    # ------------------------------------------------------------------ coordinates
    def index_to_world(self, index: np.ndarray) -> np.ndarray:
        """Continuous indices ``(..., n)`` in index order ``(i, j[, k])`` to LPS world (mm)."""
        index = np.asarray(index, dtype=float)
        linear = self.direction * np.asarray(self.spacing)[None, :]
        return index @ linear.T + np.asarray(self.origin)

    def world_to_index(self, points: np.ndarray) -> np.ndarray:
        """LPS world points ``(..., n)`` to continuous indices in index order ``(i, j[, k])``."""
        points = np.asarray(points, dtype=float)
        linear = self.direction * np.asarray(self.spacing)[None, :]
        return (points - np.asarray(self.origin)) @ np.linalg.inv(linear).T

    def same_grid(self, other: Image, *, atol: float = 1e-4) -> bool:
        """Whether two images share spatial shape, spacing, origin and direction."""
        return (
            self.spatial_shape == other.spatial_shape
            and np.allclose(self.spacing, other.spacing, atol=atol, rtol=1e-5)
            and np.allclose(self.origin, other.origin, atol=max(atol, 1e-3), rtol=1e-5)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def check_same_grid(self, other: Image, *, name: str | None = None, atol: float = 1e-4) -> None:
        """Raise :class:`GeometryError` naming ``other`` when its grid differs from this one."""
        if self.same_grid(other, atol=atol):
            return
        where = name or other.meta.get("path") or "image"
        if self.spatial_shape != other.spatial_shape:
            detail = f"shape {other.spatial_shape} != {self.spatial_shape}"
        elif not np.allclose(self.spacing, other.spacing, atol=atol, rtol=1e-5):
            detail = f"spacing {_fmt(other.spacing)} != {_fmt(self.spacing)}"
        elif not np.allclose(self.origin, other.origin, atol=max(atol, 1e-3), rtol=1e-5):
            detail = f"origin {_fmt(other.origin)} != {_fmt(self.origin)}"
        else:
            detail = f"orientation {other.orientation} != {self.orientation}"
        raise GeometryError(f"grid differs from its image ({detail})", where)

    # ------------------------------------------------------------------ conversion
    def to_tensor(self, *, add_channel: bool = False) -> torch.Tensor:
        """A torch tensor sharing memory with ``array`` when it is C-contiguous and writable.

        With ``add_channel=True`` a channel axis is prepended to single-channel images, giving the
        ``(C, [D,] H, W)`` layout that models and batched transforms take.
        """
        import torch

        array = self.array
        if not array.dtype.isnative:  # e.g. a big-endian .npy: torch refuses foreign byte order
            array = array.astype(array.dtype.newbyteorder("="))
        elif not array.flags.writeable:  # torch cannot share read-only memory safely
            array = array.copy()
        elif not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        if array.dtype == np.uint16:  # torch has limited uint16 support: widen losslessly
            array = array.astype(np.int32)
        tensor = torch.from_numpy(array)
        if add_channel and "channel" not in self.leading:
            tensor = tensor.unsqueeze(0)
        return tensor

    # ------------------------------------------------------------------ geometry ops
    def reorient(self, target: str = "RAS") -> Image:
        """Permute and flip axes (no interpolation) so the orientation codes equal ``target``.

        The result is a view of this image's voxels; world positions of all voxels are unchanged.
        """
        from medlens.geometry import reorient

        return reorient(self, target)

    def resample(
        self,
        spacing: float | tuple[float, ...] | None = None,
        *,
        like: Image | None = None,
        order: int | None = None,
        fill: float = 0.0,
    ) -> Image:
        """Resample to a new spacing, or onto ``like``'s grid.

        Linear interpolation for intensities and nearest neighbour for label maps unless ``order``
        says otherwise.
        """
        from medlens.geometry import resample

        return resample(self, spacing=spacing, like=like, order=order, fill=fill)

    def __repr__(self) -> str:
        return (
            f"Image(shape={self.array.shape}, dtype={self.array.dtype}, leading={self.leading}, "
            f"spacing={_fmt(self.spacing)}, origin={_fmt(self.origin)}, "
            f"orientation={self.orientation}, role={self.role.value}, modality={self.modality})"
        )


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
