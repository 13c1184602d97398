"""A batch of named tensors that transforms move together.

Each field has a *kind* that tells transforms what to do with it:

* ``image``: intensities ``(B, C, [D,] H, W)``, float; interpolated linearly, changed by intensity
  transforms.
* ``label``: label maps ``(B, C, [D,] H, W)``, integer; resampled by nearest neighbour (or one-hot
  linear), never blended into new values, never touched by intensity transforms.
* ``boxes``: per sample an ``(N, 2 * ndim)`` tensor ``(x_min, y_min[, z_min], x_max, ...)``.
* ``points``: per sample a ``(N, ndim)`` tensor ``(x, y[, z])``.

Boxes and points are in continuous *index coordinates* in index order ``(x, y, z)`` (``x`` along
the last tensor axis), with voxel centres at integers, as :meth:`Image.world_to_index` gives them:
a box covering voxels ``a..b`` spans ``[a - 0.5, b + 0.5]`` (see :func:`boxes_from_mask`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from medlens.image import Image

__all__ = ["KINDS", "Batch", "boxes_from_mask"]

KINDS = ("image", "label", "boxes", "points")
_DEFAULT_KINDS = {
    "image": "image", "images": "image", "label": "label", "labels": "label", "mask": "label",
    "masks": "label", "seg": "label", "segmentation": "label", "boxes": "boxes",
    "points": "points", "landmarks": "points",
}  # fmt: skip


class Batch(MutableMapping[str, Any]):
    """Named tensors of one batch plus their kinds, spacing and the trace of applied transforms.

    Args:
        data: fields by name (or give them as keyword arguments).
        kinds: kind of each field where its name does not say (``"image"``, ``"label"``, ...);
            otherwise floating tensors are images and integer tensors label maps.
        spacing: voxel spacing per sample ``(B, ndim)`` in index order, or one tuple for all;
            rotations and elastic deformations are then isotropic in millimetres.
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        kinds: Mapping[str, str] | None = None,
        spacing: torch.Tensor | Sequence[float] | None = None,
        **fields: Any,
    ) -> None:
        self._fields: dict[str, Any] = {}
        self.kinds: dict[str, str] = {}
        self.trace: list = []
        self.meta: dict[str, Any] = {}
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
                parts.append(f"{name}: {self.kinds[name]} {tuple(value.shape)} {value.dtype}")
            else:
                parts.append(f"{name}: {self.kinds[name]} x{len(value)}")
        return "Batch(" + ", ".join(parts) + ")"

    # ---------------------------------------------------------------- queries
    def names(self, kind: str) -> list[str]:
        """Fields of one kind, in insertion order."""
        return [name for name, k in self.kinds.items() if k == kind]

    @property
    def reference(self) -> torch.Tensor:
        """The first dense field (image or label): defines batch size, shape and device."""
        for name, kind in self.kinds.items():
            if kind in ("image", "label"):
                return self._fields[name]
        raise ValueError("a batch needs at least one image or label field")

    @property
    def batch_size(self) -> int:
        return int(self.reference.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.reference.shape[2:])

    @property
    def spatial_dims(self) -> int:
        return self.reference.ndim - 2

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
        out = Batch(spacing=self.spacing)
        out._fields = dict(self._fields)
        out.kinds = dict(self.kinds)
        out.trace = list(self.trace)
        out.meta = dict(self.meta)
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

    # ---------------------------------------------------------------- internals
    def _check_consistent(self) -> None:
        """Dense fields share batch size and spatial shape; boxes, points and spacing fit them."""
        dense = [name for name, kind in self.kinds.items() if kind in ("image", "label")]
        if not dense:
            return
        first = self._fields[dense[0]]
        b, shape, n = first.shape[0], tuple(first.shape[2:]), first.ndim - 2
        for name in dense[1:]:
            value = self._fields[name]
            if value.shape[0] != b:
                raise ValueError(f"{name!r} has batch size {value.shape[0]}, {dense[0]!r} {b}")
            if tuple(value.shape[2:]) != shape:
                raise ValueError(
                    f"{name!r} has spatial shape {tuple(value.shape[2:])}, {dense[0]!r} {shape}"
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
        if kind in ("image", "label"):
            if not isinstance(value, torch.Tensor) or value.ndim not in (4, 5):
                shape = getattr(value, "shape", None)
                raise ValueError(f"{name!r} must be a (B, C, [D,] H, W) tensor, got shape {shape}")
            if kind == "image" and not value.is_floating_point():
                raise ValueError(f"image field {name!r} must be floating point, got {value.dtype}")
        else:
            if isinstance(value, torch.Tensor):
                value = list(value)
            value = [torch.as_tensor(v, dtype=torch.float32).reshape(-1, _width(v)) for v in value]
        self._fields[name] = value
        self.kinds[name] = kind


def _width(value: Any) -> int:
    tensor = torch.as_tensor(value)
    return int(tensor.shape[-1]) if tensor.ndim else 1


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
