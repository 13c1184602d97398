"""Spatial preprocessing: resample, reorient, crop to the foreground, pad or crop, resize.

Every step returns a new :class:`~medlens.image.Image` whose geometry describes its voxels: a crop
or pad moves the origin to the world position of the new first voxel, a resize changes the spacing
so the physical extent (edge to edge) is kept. Label maps are always resampled with nearest
neighbour, so they keep exactly their set of values; constant padding fills them with 0.

Shapes are spatial array shapes ``(z, y, x)`` (as ``Image.spatial_shape``); spacings are in index
order ``(x, y, z)`` (as ``Image.spacing``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medlens.errors import MedlensError
from medlens.geometry import reorient, resample
from medlens.image import Image, Role
from medlens.preprocessing.pipeline import Step, register_step

__all__ = [
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
]


# ----------------------------------------------------------------------------- boxes
@dataclass(frozen=True)
class Box:
    """A box of voxels ``[start, stop)`` per spatial array axis ``(z, y, x)``.

    ``start`` may be negative and ``stop`` beyond the image: :func:`crop_to_box` pads there.
    """

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", tuple(int(v) for v in self.start))
        object.__setattr__(self, "stop", tuple(int(v) for v in self.stop))
        if len(self.start) != len(self.stop) or any(
            b <= a for a, b in zip(self.start, self.stop, strict=True)
        ):
            raise ValueError(f"invalid box start={self.start} stop={self.stop}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def start_index(self) -> tuple[int, ...]:
        """The start in index order ``(i, j[, k])``, as ``Image.index_to_world`` takes it."""
        return self.start[::-1]

    def to_dict(self) -> dict[str, list[int]]:
        return {"start": list(self.start), "stop": list(self.stop)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[int]]) -> Box:
        return cls(tuple(data["start"]), tuple(data["stop"]))


def crop_to_box(image: Image, box: Box, *, mode: str = "constant", value: float = 0.0) -> Image:
    """The part of ``image`` inside ``box``; parts of the box outside the image are padded.

    The origin becomes the world position of the box's first voxel, so every voxel keeps its
    world position. Label maps are padded with 0 in ``"constant"`` mode whatever ``value`` is.

    Args:
        mode: ``"constant"`` (fill with ``value``) or ``"edge"`` (repeat the border voxels).
    """
    n = image.spatial_dims
    if len(box.start) != n:
        raise ValueError(f"a {len(box.start)}D box cannot crop a {n}D image")
    if mode not in ("constant", "edge"):
        raise ValueError(f"pad mode must be 'constant' or 'edge', got {mode!r}")
    shape = image.spatial_shape
    lead = len(image.leading)
    inner = tuple(
        slice(min(max(a, 0), s), max(min(b, s), 0))
        for a, b, s in zip(box.start, box.stop, shape, strict=True)
    )
    array = image.array[(slice(None),) * lead + inner]
    before = [max(-a, 0) for a in box.start]
    after = [max(b - s, 0) for b, s in zip(box.stop, shape, strict=True)]
    if any(before) or any(after):
        if any(sl.stop <= sl.start for sl in inner) and mode == "edge":
            raise ValueError("an edge-padded box must overlap the image")
        widths = [(0, 0)] * lead + list(zip(before, after, strict=True))
        if mode == "edge":
            array = np.pad(array, widths, mode="edge")
        else:
            fill = 0 if image.role is Role.LABEL else value
            array = np.pad(array, widths, mode="constant", constant_values=fill)
    origin = image.index_to_world(np.asarray(box.start_index, dtype=float))
    return image.replace(array=array, origin=tuple(origin))


def foreground_box(
    image: Image, *, threshold: float = 0.0, margin: int | Sequence[int] = 0, mask: Any = None
) -> Box:
    """The smallest box holding every voxel above ``threshold`` (or inside ``mask``), grown by
    ``margin`` voxels per side (one value, or one per index axis ``(x, y[, z])``) and kept
    inside the image.

    With a multi-channel image a voxel is foreground when any channel is. An image (or mask) with
    no foreground gives the whole image's box: nothing is cropped.
    """
    if mask is None:
        array = image.array
        if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
            raise MedlensError(
                "image contains NaN values; cannot find its foreground", image.meta.get("path")
            )
        foreground = array > threshold
        if image.leading:
            foreground = foreground.any(axis=tuple(range(len(image.leading))))
    else:
        if isinstance(mask, Image):
            image.check_same_grid(mask, name=mask.meta.get("path") or "mask")
            mask = mask.array
        foreground = np.asarray(mask) != 0
        if foreground.shape != image.spatial_shape:
            raise MedlensError(
                f"mask shape {foreground.shape} differs from the image's {image.spatial_shape}",
                image.meta.get("path"),
            )
    shape = image.spatial_shape
    if not foreground.any():
        return Box((0,) * len(shape), shape)
    margin_arr = np.broadcast_to(np.asarray(margin, dtype=int), (len(shape),))[::-1]  # index->array
    start, stop = [], []
    for axis in range(len(shape)):
        others = tuple(a for a in range(len(shape)) if a != axis)
        hits = np.flatnonzero(foreground.any(axis=others))
        start.append(max(int(hits[0]) - int(margin_arr[axis]), 0))
        stop.append(min(int(hits[-1]) + 1 + int(margin_arr[axis]), shape[axis]))
    return Box(tuple(start), tuple(stop))


def centered_box(shape: Sequence[int], target: Sequence[int | None]) -> Box:
    """The box of ``target`` shape centred on an array of ``shape`` (None keeps an axis).

    Cropping starts at ``(size - target) // 2``; padding puts ``(target - size) // 2`` voxels
    before, so padding undoes a crop of the same sizes exactly.
    """
    if len(target) != len(shape):
        raise ValueError(f"target shape {tuple(target)} needs {len(shape)} values")
    start, stop = [], []
    for size, want in zip(shape, target, strict=True):
        want = size if want is None or want == -1 else int(want)
        if want < 1:
            raise ValueError(f"target sizes must be positive, got {tuple(target)}")
        first = (size - want) // 2 if want <= size else -((want - size) // 2)
        start.append(first)
        stop.append(first + want)
    return Box(tuple(start), tuple(stop))


# ----------------------------------------------------------------------------- steps
class _SpatialStep(Step):
    """A grid change applied identically to an image and its label map."""

    spatial = True

    def transform_pair(self, image: Image, label: Image | None) -> tuple[Image, Image | None]:
        out = self.transform(image)
        if label is None:
            return out, None
        return out, self._follow(label, image, out)

    def _follow(self, label: Image, image: Image, out: Image) -> Image:
        """Bring ``label`` (on ``image``'s grid) onto ``out``'s grid."""
        return resample(label, like=out, order=0)


@register_step
class Resample(_SpatialStep):
    """Resample to a voxel spacing (mm, index order ``(x, y[, z])``, or one value), keeping the
    origin, direction and physical extent; linear for intensities, nearest for labels.

    Args:
        fill: value where the new grid reaches past the image's field of view (rounding).
    """

    def __init__(self, spacing: float | Sequence[float], fill: float = 0.0) -> None:
        self.spacing = spacing
        self.fill = fill

    def transform(self, image: Image) -> Image:
        return resample(image, spacing=self.spacing, fill=self.fill)


@register_step
class ResampleLike(_SpatialStep):
    """Resample onto a fixed grid (an atlas or a reference image's grid).

    The grid is stored as numbers (JSON friendly); :meth:`from_image` takes it from an image.

    Args:
        shape: spatial array shape ``(z, y, x)``.
        spacing, origin: index order ``(x, y[, z])``, mm and LPS world mm.
        direction: the ``n x n`` direction matrix as nested lists (column ``d`` is index axis
            ``d``'s world direction, as ``Image.direction``); identity by default.
    """

    def __init__(
        self,
        shape: Sequence[int],
        spacing: Sequence[float],
        origin: Sequence[float],
        direction: Sequence[Sequence[float]] | None = None,
        fill: float = 0.0,
    ) -> None:
        self.shape = shape
        self.spacing = spacing
        self.origin = origin
        self.direction = direction
        self.fill = fill

    @classmethod
    def from_image(cls, reference: Image, fill: float = 0.0) -> ResampleLike:
        return cls(
            shape=list(reference.spatial_shape),
            spacing=list(reference.spacing),
            origin=list(reference.origin),
            direction=np.asarray(reference.direction).tolist(),
            fill=fill,
        )

    def grid(self) -> Image:
        return _grid(self.shape, self.spacing, self.origin, self.direction)

    def transform(self, image: Image) -> Image:
        return resample(image, like=self.grid(), fill=self.fill)


@register_step
class Reorient(_SpatialStep):
    """Permute and flip axes (no interpolation) so the orientation codes equal ``codes``."""

    def __init__(self, codes: str = "RAS") -> None:
        self.codes = codes

    def transform(self, image: Image) -> Image:
        return reorient(image, self.codes)

    def _follow(self, label: Image, image: Image, out: Image) -> Image:
        return reorient(label, self.codes)


@register_step
class CropForeground(_SpatialStep):
    """Crop to the box of voxels above ``threshold``, grown by ``margin`` voxels per side.

    A label map given with the image is cropped with the image's box. :meth:`crop` also returns
    the box (to crop other images identically with :func:`crop_to_box`, or to paste a
    prediction back); its ``mask`` argument takes the box from a mask instead of the image.
    Nothing is cropped when the image has no foreground.
    """

    def __init__(self, threshold: float = 0.0, margin: int | Sequence[int] = 0) -> None:
        self.threshold = threshold
        self.margin = margin

    def box(self, image: Image, mask: Any = None) -> Box:
        return foreground_box(image, threshold=self.threshold, margin=self.margin, mask=mask)

    def crop(self, image: Image, mask: Any = None) -> tuple[Image, Box]:
        box = self.box(image, mask)
        return crop_to_box(image, box), box

    def transform(self, image: Image, mask: Any = None) -> Image:
        return self.crop(image, mask)[0]

    def transform_pair(self, image: Image, label: Image | None) -> tuple[Image, Image | None]:
        out, box = self.crop(image)
        return out, None if label is None else crop_to_box(label, box)


@register_step
class PadOrCrop(_SpatialStep):
    """Pad and/or crop each axis, centred, to ``shape`` ``(z, y, x)`` (None keeps an axis).

    Args:
        mode: ``"constant"`` (fill with ``value``; label maps with 0) or ``"edge"``.
    """

    def __init__(
        self, shape: Sequence[int | None], mode: str = "constant", value: float = 0.0
    ) -> None:
        self.shape = shape
        self.mode = mode
        self.value = value

    def box(self, image: Image) -> Box:
        return centered_box(image.spatial_shape, self.shape)

    def transform(self, image: Image) -> Image:
        return crop_to_box(image, self.box(image), mode=self.mode, value=self.value)

    def _follow(self, label: Image, image: Image, out: Image) -> Image:
        return crop_to_box(label, self.box(image), mode=self.mode, value=self.value)


@register_step
class Resize(_SpatialStep):
    """Resize to ``shape`` ``(z, y, x)`` voxels, keeping the physical extent (spacing changes).

    The new grid covers the same box as the old one, edge to edge (as ``torch`` ``interpolate``
    with ``align_corners=False`` and ITK resampling do), so content stays at its world position.
    Linear for intensities, nearest for label maps. With ``keep_aspect`` every axis is scaled by
    the same factor (the most limiting axis decides), then the result is padded, centred, to
    ``shape`` with ``value`` (labels with 0).
    """

    def __init__(self, shape: Sequence[int], keep_aspect: bool = False, value: float = 0.0) -> None:
        self.shape = shape
        self.keep_aspect = keep_aspect
        self.value = value

    def _target(self, image: Image) -> tuple[int, ...]:
        shape = tuple(int(v) for v in self.shape)
        if len(shape) != image.spatial_dims or any(v < 1 for v in shape):
            raise ValueError(
                f"Resize shape {tuple(self.shape)} needs {image.spatial_dims} positive sizes"
            )
        if not self.keep_aspect:
            return shape
        factor = min(t / s for t, s in zip(shape, image.spatial_shape, strict=True))
        return tuple(
            min(t, max(1, round(s * factor)))
            for t, s in zip(shape, image.spatial_shape, strict=True)
        )

    def grid(self, image: Image) -> Image:
        """The resized grid (same extent, new spacing) before any padding."""
        target = self._target(image)
        old = np.asarray(image.spacing)
        new = old * np.asarray(image.size) / np.asarray(target[::-1])
        # first voxel centre: half a new voxel in from the edge, which is half an old voxel
        # before the old first centre
        origin = image.index_to_world(0.5 * (new / old - 1.0))
        return _grid(target, new, origin, image.direction)

    def transform(self, image: Image) -> Image:
        out = resample(image, like=self.grid(image))
        if self.keep_aspect and out.spatial_shape != tuple(int(v) for v in self.shape):
            out = crop_to_box(out, centered_box(out.spatial_shape, self.shape), value=self.value)
        return out

    def _follow(self, label: Image, image: Image, out: Image) -> Image:
        label_out = resample(label, like=self.grid(image), order=0)
        if label_out.spatial_shape != out.spatial_shape:
            label_out = crop_to_box(label_out, centered_box(label_out.spatial_shape, self.shape))
        return label_out


def _grid(shape, spacing, origin, direction) -> Image:
    """A geometry-only image (a zero-stride array: no memory) describing a target grid."""
    shape = tuple(int(v) for v in shape)
    return Image(
        np.broadcast_to(np.zeros((), np.uint8), shape),
        spacing=tuple(float(v) for v in spacing),
        origin=tuple(float(v) for v in origin),
        direction=None if direction is None else np.asarray(direction, dtype=float),
    )
