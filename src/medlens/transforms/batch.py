"""A batch of named tensors that transforms move together.

Each field has a *kind* that tells transforms what to do with it:

* ``image``: intensities ``(B, C, [D,] H, W)``, float; interpolated linearly, changed by intensity
  transforms.
* ``label``: label maps ``(B, C, [D,] H, W)``, integer; resampled by nearest neighbour (or one-hot
  linear), never blended into new values, never touched by intensity transforms.
* ``spatial``: float maps ``(B, C, [D,] H, W)`` that move exactly as images (linear
  interpolation) but get no intensity augmentation: reconstruction targets, a registration's fixed
  image, regression maps.
* ``displacement``: displacement fields ``(B, ndim, [D,] H, W)``, float, in voxels (index units
  of the field's own grid), components in index order ``(x, y[, z])``: channel 0 is the
  displacement along the *last* tensor axis. A vector ``u`` at voxel ``p`` joins ``p`` to
  ``p + u``; either reading (a motion ``p -> p + u`` or a registration's pull-back, sample the
  moving image at ``p + u``) moves the same way when both ends live in the augmented space.
  Spatial transforms resample the field linearly and map its vectors: with the forward transform
  ``F``, the new field is ``u'(y) = F(x + u(x)) - y`` at ``x = F^-1(y)``: under an affine ``F``
  that is the linear part of ``F`` applied to ``u`` (a flip negates the flipped component), and
  elastic deformations are composed exactly (Newton's method per voxel on the CPU, see
  :mod:`._resample`: a few seconds per 64^3 volume, milliseconds for affine chains; folded
  regions, which have no inverse, keep the best estimate). Intensity transforms never touch it.
* ``boxes``: per sample an ``(N, 2 * ndim)`` tensor ``(x_min, y_min[, z_min], x_max, ...)``.
* ``points``: per sample an ``(N, ndim)`` tensor ``(x, y[, z])``.

Boxes and points are in continuous *index coordinates* in index order ``(x, y, z)`` (``x`` along
the last tensor axis), with voxel centres at integers, as :meth:`Image.world_to_index` gives them:
a box covering voxels ``a..b`` spans ``[a - 0.5, b + 0.5]`` (see :func:`boxes_from_mask`).

**Time axis.** ``Batch(..., time_axis=True)`` declares image sequences: every dense field (image,
label, spatial, displacement) is ``(B, T, C, [D,] H, W)``; ``time_axis={"cine", "flow"}`` names
the fields that have one (a static label on a cine series stays ``(B, C, ...)``). Spatial
transforms move every frame of a sample with the same parameters and intensity transforms draw
one parameter per sample for all its frames; boxes and points have no time axis (frames share
their geometry). :meth:`Batch.frame` takes one frame out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from medlens.image import Image

__all__ = ["DENSE_KINDS", "KINDS", "Batch", "boxes_from_mask", "kind_from_name"]

KINDS = ("image", "label", "spatial", "displacement", "boxes", "points")
#: kinds stored as one ``(B, [T,] C, *spatial)`` tensor, resampled on the batch's grid
DENSE_KINDS = ("image", "label", "spatial", "displacement")
_FLOAT_KINDS = ("image", "spatial", "displacement")
_DEFAULT_KINDS = {
    "image": "image", "images": "image", "label": "label", "labels": "label", "mask": "label",
    "masks": "label", "seg": "label", "segmentation": "label", "boxes": "boxes",
    "points": "points", "landmarks": "points", "displacement": "displacement",
    "displacements": "displacement", "flow": "displacement", "ddf": "displacement",
    "dvf": "displacement",
}  # fmt: skip


def kind_from_name(name: str) -> str | None:
    """The kind a field name implies (``"mask"`` -> label, ``"flow"`` -> displacement), if any."""
    return _DEFAULT_KINDS.get(name)


class Batch(MutableMapping[str, Any]):
    """Named tensors of one batch plus their kinds, spacing and the trace of applied transforms.

    Args:
        data: fields by name (or give them as keyword arguments).
        kinds: kind of each field where its name does not say (``"image"``, ``"label"``,
            ``"spatial"``, ``"displacement"``, ``"boxes"``, ``"points"``); otherwise floating
            tensors are images and integer tensors label maps.
        spacing: voxel spacing per sample ``(B, ndim)`` in index order, or one tuple for all;
            rotations and elastic deformations are then isotropic in millimetres.
        time_axis: ``True``: every dense field has a time axis after the batch axis,
            ``(B, T, C, *spatial)``; a collection of names: only those fields have one.
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        kinds: Mapping[str, str] | None = None,
        spacing: torch.Tensor | Sequence[float] | None = None,
        time_axis: bool | Collection[str] = False,
        **fields: Any,
    ) -> None:
        self._fields: dict[str, Any] = {}
        self.kinds: dict[str, str] = {}
        self.trace: list = []
        self.meta: dict[str, Any] = {}
        if isinstance(time_axis, str):
            time_axis = (time_axis,)
        self.time_axis: bool | frozenset[str] = (
            time_axis if isinstance(time_axis, bool) else frozenset(time_axis)
        )
        given = dict(kinds or {})
        for name, value in {**(data or {}), **fields}.items():
            self._set(name, value, given.get(name))
        self.spacing = None if spacing is None else torch.as_tensor(spacing, dtype=torch.float64)
        self._check_consistent()

    # ---------------------------------------------------------------- mapping protocol
    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self._set(name, value, self.kinds.get(name))

    def __delitem__(self, name: str) -> None:
        del self._fields[name]
        del self.kinds[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __repr__(self) -> str:
        parts = []
        for name, value in self._fields.items():
            if isinstance(value, torch.Tensor):
                timed = ", timed" if self.timed(name) else ""
                kind = self.kinds[name]
                parts.append(f"{name}: {kind} {tuple(value.shape)} {value.dtype}{timed}")
            else:
                parts.append(f"{name}: {self.kinds[name]} x{len(value)}")
        return "Batch(" + ", ".join(parts) + ")"

    # ---------------------------------------------------------------- queries
    def names(self, kind: str) -> list[str]:
        """Fields of one kind, in insertion order."""
        return [name for name, k in self.kinds.items() if k == kind]

    def timed(self, name: str) -> bool:
        """Whether dense field ``name`` has a time axis ``(B, T, C, *spatial)``."""
        return self.kinds.get(name) in DENSE_KINDS and self._declared_timed(name)

    def _declared_timed(self, name: str) -> bool:
        if isinstance(self.time_axis, frozenset):
            return name in self.time_axis
        return self.time_axis

    @property
    def reference(self) -> torch.Tensor:
        """The first image or label field (else the first dense field): defines batch size,
        shape and device."""
        return self._fields[self._reference_name()]

    def _reference_name(self) -> str:
        for kinds in (("image", "label"), DENSE_KINDS):
            for name, kind in self.kinds.items():
                if kind in kinds:
                    return name
        raise ValueError(
            "a batch needs at least one image or label field (or a spatial or displacement one)"
        )

    @property
    def batch_size(self) -> int:
        return int(self.reference.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.reference.shape[3 if self.timed(self._reference_name()) else 2 :])

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_shape)

    @property
    def num_frames(self) -> int | None:
        """Frames ``T`` of the timed fields, ``None`` without a time axis."""
        for name in self._fields:
            if self.timed(name):
                return int(self._fields[name].shape[1])
        return None

    @property
    def device(self) -> torch.device:
        return self.reference.device

    def spacing_tensor(self) -> torch.Tensor:
        """Spacing ``(B, ndim)`` in index order (ones when unknown), float64 on the CPU."""
        n, b = self.spatial_dims, self.batch_size
        if self.spacing is None:
            return torch.ones(b, n, dtype=torch.float64)
        return self.spacing.reshape(-1, n).expand(b, n).clone()

    def copy(self) -> Batch:
        """A shallow copy: new mapping, same tensors."""
        out = Batch(spacing=self.spacing, time_axis=self.time_axis)
        out._fields = dict(self._fields)
        out.kinds = dict(self.kinds)
        out.trace = list(self.trace)
        out.meta = dict(self.meta)
        return out

    def frame(self, index: int) -> Batch:
        """Frame ``index`` of every timed field, as a batch without a time axis (other fields,
        trace and meta as they are): to check or apply something frame by frame."""
        out = self.copy()
        out.time_axis = False
        for name in self._fields:
            if self.timed(name):
                out._fields[name] = self._fields[name][:, index]
        return out

    def to(self, device: torch.device | str) -> Batch:
        out = self.copy()
        for name, value in self._fields.items():
            if isinstance(value, torch.Tensor):
                out._fields[name] = value.to(device)
            else:
                out._fields[name] = [v.to(device) for v in value]
        return out

    @classmethod
    def from_images(
        cls, images: Sequence[Image], labels: Sequence[Image] | None = None, *, dtype=torch.float32
    ) -> Batch:
        """Stack same-shaped :class:`Image` objects (and label maps) with their spacings."""
        tensors = [im.to_tensor(add_channel=True).to(dtype) for im in images]
        fields: dict[str, Any] = {"image": torch.stack(tensors)}
        if labels is not None:
            fields["label"] = torch.stack([lb.to_tensor(add_channel=True).long() for lb in labels])
        return cls(fields, spacing=torch.tensor([im.spacing for im in images], dtype=torch.float64))

    @classmethod
    def from_samples(cls, samples: Sequence[Any], *, dtype: torch.dtype = torch.float32) -> Batch:
        """Stack samples (:class:`medlens.data.Sample`) into a batch with their fields' kinds.

        Uses each sample's ``batch_arrays()`` (per field ``([T,] C, *spatial)`` arrays, boxes
        ``(N, 2n)`` and points ``(N, n)``), ``batch_kinds()`` and ``image.spacing``; a dense field
        with one axis more than ``(C, *spatial)`` has a time axis. Label maps become int64, other
        dense fields ``dtype``; the samples' ``times`` (when any) go to ``meta["times"]``.
        """
        if not samples:
            raise ValueError("from_samples needs at least one sample")
        arrays = [sample.batch_arrays() for sample in samples]
        kinds = dict(samples[0].batch_kinds())
        n = samples[0].image.spatial_dims
        fields: dict[str, Any] = {}
        timed = set()
        for name in arrays[0]:
            if any(set(a) != set(arrays[0]) for a in arrays):
                raise ValueError("samples of one batch need the same fields")
            values = [np.asarray(a[name]) for a in arrays]
            kind = kinds.get(name) or _guess_kind(name, values[0])
            kinds[name] = kind
            if kind in ("boxes", "points"):
                fields[name] = [torch.from_numpy(v.astype(np.float32)) for v in values]
                continue
            shapes = {v.shape for v in values}
            if len(shapes) > 1:
                raise ValueError(f"field {name!r} has different shapes across samples: {shapes}")
            target = np.int64 if kind == "label" else np.float32
            stacked = torch.from_numpy(np.ascontiguousarray(np.stack(values).astype(target)))
            fields[name] = stacked if kind == "label" else stacked.to(dtype)
            if stacked.ndim == n + 3:
                timed.add(name)
        spacing = torch.tensor([s.image.spacing for s in samples], dtype=torch.float64)
        out = cls(fields, kinds=kinds, spacing=spacing, time_axis=timed)
        times = [getattr(s, "times", None) for s in samples]
        if any(t is not None for t in times):
            out.meta["times"] = times
        return out

    # ---------------------------------------------------------------- internals
    def _check_consistent(self) -> None:
        """Dense fields share batch size, frames and spatial shape; displacement fields have one
        component per axis; boxes, points and spacing fit them."""
        dense = [name for name, kind in self.kinds.items() if kind in DENSE_KINDS]
        if not dense:
            return
        first = self._reference_name()
        b, shape = self.batch_size, self.spatial_shape
        n, frames = len(shape), self.num_frames
        for name in dense:
            value = self._fields[name]
            own = tuple(value.shape[3 if self.timed(name) else 2 :])
            if value.shape[0] != b:
                raise ValueError(f"{name!r} has batch size {value.shape[0]}, {first!r} {b}")
            if own != shape:
                raise ValueError(f"{name!r} has spatial shape {own}, {first!r} {shape}")
            if self.timed(name) and value.shape[1] != frames:
                raise ValueError(f"{name!r} has {value.shape[1]} frames, others {frames}")
            channels = value.shape[2 if self.timed(name) else 1]
            if self.kinds[name] == "displacement" and channels != n:
                raise ValueError(
                    f"displacement {name!r} of {n}D data needs {n} components (x, y[, z]) on its "
                    f"channel axis, got {channels}"
                )
        for name, kind in self.kinds.items():
            if kind not in ("boxes", "points"):
                continue
            entries = self._fields[name]
            if len(entries) != b:
                raise ValueError(
                    f"{name!r} needs one entry per sample ({b}), got {len(entries)}: give a list "
                    "of (N, k) tensors or one (B, N, k) tensor"
                )
            width = 2 * n if kind == "boxes" else n
            for entry in entries:
                if entry.shape[-1] != width:
                    raise ValueError(
                        f"{kind} {name!r} of {n}D data need {width} values each, "
                        f"got {entry.shape[-1]}"
                    )
        if self.spacing is not None and self.spacing.numel() not in (n, b * n):
            raise ValueError(
                f"spacing needs {n} values or ({b}, {n}), got shape {tuple(self.spacing.shape)}"
            )

    def _set(self, name: str, value: Any, kind: str | None) -> None:
        kind = kind or _DEFAULT_KINDS.get(name)
        if kind is None:
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"say the kind of field {name!r} (kinds={{...}})")
            kind = "image" if value.is_floating_point() else "label"
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} for {name!r}; kinds are {KINDS}")
        if kind in DENSE_KINDS:
            timed = self._declared_timed(name)
            if not isinstance(value, torch.Tensor) or value.ndim - timed not in (4, 5):
                shape = getattr(value, "shape", None)
                layout = "(B, T, C, [D,] H, W)" if timed else "(B, C, [D,] H, W)"
                raise ValueError(f"{name!r} must be a {layout} tensor, got shape {shape}")
            if kind in _FLOAT_KINDS and not value.is_floating_point():
                raise ValueError(f"{kind} field {name!r} must be floating point, got {value.dtype}")
        else:
            if isinstance(value, torch.Tensor):
                value = list(value)
            value = [torch.as_tensor(v, dtype=torch.float32).reshape(-1, _width(v)) for v in value]
        self._fields[name] = value
        self.kinds[name] = kind


def _width(value: Any) -> int:
    tensor = torch.as_tensor(value)
    return int(tensor.shape[-1]) if tensor.ndim else 1


def _guess_kind(name: str, value: np.ndarray) -> str:
    kind = _DEFAULT_KINDS.get(name)
    if kind is None:
        kind = "image" if value.dtype.kind == "f" else "label"
    return kind


def boxes_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bounding box of the non-zero voxels of a ``([D,] H, W)`` mask, in index coordinates.

    Returns ``(x_min, y_min[, z_min], x_max, y_max[, z_max])`` spanning the voxels' extents
    (centre +- 0.5), or an empty ``(0, 2 * ndim)`` tensor for an empty mask.
    """
    n = mask.ndim
    found = torch.nonzero(mask)
    if found.numel() == 0:
        return torch.zeros(0, 2 * n)
    low = found.min(dim=0).values.flip(0).float() - 0.5
    high = found.max(dim=0).values.flip(0).float() + 0.5
    return torch.cat([low, high])[None]
