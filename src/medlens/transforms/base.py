"""Transforms as parameter samplers plus deterministic operations, and their composition.

Every transform draws its per-sample parameters from an explicit :class:`torch.Generator` in
:meth:`Transform.sample` and applies them deterministically in :meth:`Transform.apply`. The drawn
parameters are recorded in the batch's trace, so a run can be replayed exactly and its spatial
part inverted (test-time augmentation maps predictions back with it).

Spatial transforms do not resample by themselves inside :class:`Compose`: each contributes a
pull-back (output index -> input index) matrix or displacement field, and a run of consecutive
spatial transforms is resampled once, from the original voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medlens.transforms import _compile, _warp
from medlens.transforms.batch import Batch

__all__ = ["Compose", "IntensityTransform", "SpatialTransform", "Step", "Transform"]

Params = dict[str, Any]


class Transform:
    """Base class: ``sample`` draws parameters, ``apply`` uses them; ``p`` is per sample."""

    p: float = 1.0

    def sample(self, batch: Batch, generator: torch.Generator) -> Params:
        """Per-sample parameters as CPU tensors with leading dimension ``B``."""
        return {"applied": self._coin(batch.batch_size, generator)}

    def apply(self, batch: Batch, params: Params) -> Batch:
        raise NotImplementedError

    def __call__(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        return Compose([self], generator=generator)(batch)

    def _coin(self, size: int, generator: torch.Generator) -> torch.Tensor:
        if self.p >= 1:
            return torch.ones(size, dtype=torch.bool)
        return torch.rand(size, generator=generator) < self.p

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class SpatialTransform(Transform):
    """A transform that moves voxels: every image, label map, box and point moves together."""

    invertible = True

    def out_shape(self, in_shape: tuple[int, ...], params: Params) -> tuple[int, ...]:
        return in_shape

    def matrix(
        self, in_shape: tuple[int, ...], params: Params, spacing: torch.Tensor
    ) -> torch.Tensor:
        """Pull-back matrices ``(B, n+1, n+1)`` (float64): output index -> input index."""
        raise NotImplementedError

    def displacement(self, out_shape: tuple[int, ...], params: Params) -> torch.Tensor | None:
        """Optional displacement ``(B, n, *out_shape)`` added to output coordinates first."""
        return None

    def apply(self, batch: Batch, params: Params) -> Batch:
        return _resample(batch, [_stage(self, batch.spatial_shape, params, batch)])


class IntensityTransform(Transform):
    """A transform of image intensities; label maps, boxes and points pass through untouched.

    A transform may also offer a *fused* form: ``fused_inputs`` prepares its tensors eagerly
    (random draws, per-sample parameters) and ``fused`` is a pure tensor expression of the image
    and those inputs. :class:`Compose` compiles a run of such transforms into one kernel, so the
    image is read and written once for the run instead of once per transform.
    """

    def apply_image(self, image: torch.Tensor, params: Params) -> torch.Tensor:
        raise NotImplementedError

    def fused_inputs(self, image: torch.Tensor, params: Params) -> tuple | None:
        """Tensors for :meth:`fused`; ``None``: no fused form (``()``: one without inputs)."""
        return None

    def fused(self, image: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, batch: Batch, params: Params) -> Batch:
        out = batch.copy()
        for name in batch.names("image"):
            out[name] = self.apply_image(batch[name], params)
        return out


@dataclass
class Step:
    """One recorded application: the transform, its parameters, the shape it saw and the
    batch's spacing ``(B, n)`` then (so that a prediction without spacing replays and inverts
    the same geometry; ``None``: take the spacing of the batch it is applied to)."""

    transform: Transform
    params: Params
    in_shape: tuple[int, ...]
    spacing: torch.Tensor | None = None


class Compose:
    """Apply transforms in order with one generator; fuse consecutive spatial transforms.

    Args:
        transforms: the chain.
        seed: seed of the chain's generator (one seed reproduces a run exactly).
        generator: an explicit generator instead of ``seed``.
        fuse: resample a run of spatial transforms once (default); ``False`` resamples after each.
        label_mode: ``"nearest"`` (default) or ``"onehot"``: each label value's indicator is
            resampled linearly and the most likely value taken, which gives smoother label
            boundaries and still never invents values.
    """

    def __init__(
        self,
        transforms: Sequence[Transform],
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        fuse: bool = True,
        label_mode: str = "nearest",
    ) -> None:
        if label_mode not in ("nearest", "onehot"):
            raise ValueError(f"label_mode must be 'nearest' or 'onehot', got {label_mode!r}")
        self.label_mode = label_mode
        self.transforms = list(transforms)
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(0 if seed is None else int(seed))
        self.generator = generator
        self.fuse = fuse
        self._fused: dict = {}

    def __call__(self, batch: Batch) -> Batch:
        steps = []
        shape = batch.spatial_shape
        for transform in self.transforms:
            probe = _ShapeProbe(batch, shape)
            params = transform.sample(probe, self.generator)
            steps.append(Step(transform, params, shape, batch.spacing_tensor()))
            if isinstance(transform, SpatialTransform):
                shape = transform.out_shape(shape, params)
        return self.replay(batch, steps)

    def replay(self, batch: Batch, steps: Sequence[Step]) -> Batch:
        """Apply recorded steps (from ``batch.trace`` of an earlier call) deterministically."""
        out = batch.copy()
        pending: list[Step] = []
        intensity: list[Step] = []
        for step in steps:
            if isinstance(step.transform, SpatialTransform) and self.fuse:
                out = self._intensity_run(out, intensity)
                intensity = []
                pending.append(step)
                continue
            if pending:
                out = _resample(out, [_stage_of(s, out) for s in pending], self.label_mode)
                pending = []
            if not isinstance(step.transform, IntensityTransform):
                out = self._intensity_run(out, intensity)
                intensity = []
            if isinstance(step.transform, SpatialTransform):  # unfused: with the recorded
                out = _resample(out, [_stage_of(step, out)], self.label_mode)  # spacing
            elif isinstance(step.transform, IntensityTransform) and self.fuse:
                intensity.append(step)
                continue
            else:
                out = step.transform.apply(out, step.params)
        if pending:
            out = _resample(out, [_stage_of(s, out) for s in pending], self.label_mode)
        out = self._intensity_run(out, intensity)
        out.trace = list(batch.trace) + list(steps)
        return out

    def _intensity_run(self, batch: Batch, steps: list[Step]) -> Batch:
        """Apply consecutive intensity steps, compiled into one kernel where they allow it."""
        if not steps:
            return batch
        out = batch.copy()
        for name in batch.names("image"):
            image = batch[name]
            parts = [(s, s.transform.fused_inputs(image, s.params)) for s in steps]
            if (
                len(steps) < 2
                or not _compile.enabled_for(image)
                or any(inputs is None for _, inputs in parts)
            ):
                for step in steps:
                    image = step.transform.apply_image(image, step.params)
                out[name] = image
                continue
            key = tuple((id(s.transform), len(inputs)) for s, inputs in parts)
            function = self._fused.get(key)
            if function is None:
                function = self._fused[key] = _chain([s.transform for s in steps], key)
            flat = [tensor for _, inputs in parts for tensor in inputs]
            out[name] = _compile.run(function, image, *flat)
        return out

    def invert(self, batch: Batch, steps: Sequence[Step] | None = None) -> Batch:
        """Undo the spatial steps of a trace (e.g. on a prediction), in one resampling.

        Intensity steps are skipped: inverting them is not meaningful for predictions.
        """
        steps = list(batch.trace if steps is None else steps)
        spatial = [s for s in steps if isinstance(s.transform, SpatialTransform)]
        if not spatial:
            return batch.copy()
        stages = []
        for step in reversed(spatial):
            if not step.transform.invertible:
                raise ValueError(f"{type(step.transform).__name__} cannot be inverted")
            spacing = batch.spacing_tensor() if step.spacing is None else step.spacing
            matrix = step.transform.matrix(step.in_shape, step.params, spacing)
            stages.append(("affine", torch.linalg.inv(matrix), step.in_shape))
        out = _resample(batch, stages, self.label_mode)
        out.trace = []
        return out

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class _ShapeProbe(Batch):
    """The batch as a sampler sees it mid-chain: the shape after earlier spatial steps."""

    def __init__(self, batch: Batch, shape: tuple[int, ...]) -> None:
        super().__init__(spacing=batch.spacing)
        self._fields = batch._fields
        self.kinds = batch.kinds
        self._shape = shape

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self._shape


def _chain(transforms: list[IntensityTransform], key: tuple):
    """One function applying each transform's fused expression in turn (compiled by the caller)."""
    counts = [count for _, count in key]

    def run(image: torch.Tensor, *flat: torch.Tensor) -> torch.Tensor:
        start = 0
        for transform, count in zip(transforms, counts, strict=True):
            image = transform.fused(image, *flat[start : start + count])
            start += count
        return image

    return run


def _stage_of(step: Step, batch: Batch):
    return _stage(step.transform, step.in_shape, step.params, batch, step.spacing)


def _stage(
    transform: SpatialTransform,
    in_shape,
    params: Params,
    batch: Batch,
    spacing: torch.Tensor | None = None,
):
    out_shape = transform.out_shape(in_shape, params)
    displacement = transform.displacement(out_shape, params)
    spacing = batch.spacing_tensor() if spacing is None else spacing
    matrix = transform.matrix(in_shape, params, spacing)
    if displacement is not None:
        return ("field", matrix, displacement, out_shape)
    return ("affine", matrix, out_shape)


def _resample(batch: Batch, stages: list, label_mode: str = "nearest") -> Batch:
    """Resample every field of ``batch`` through ``stages`` (applied first to last) at once."""
    out = batch.copy()
    out_shape = stages[-1][-1]
    n = len(out_shape)
    has_field = any(stage[0] == "field" for stage in stages)
    total = None
    if not has_field:
        total = stages[0][1]
        for stage in stages[1:]:
            total = total @ stage[1]
    coords = None if total is not None else _pull_grid(stages, out_shape, batch.device)

    def warp(value: torch.Tensor, mode: str) -> torch.Tensor:
        if total is not None:
            return _warp.warp_affine(value, total, out_shape, mode=mode)
        return _warp.warp_coords(value, coords, mode=mode)

    for name in batch.names("image"):
        out[name] = warp(batch[name], "linear")
    for name in batch.names("label"):
        if label_mode == "onehot":
            out[name] = _warp.onehot_linear(batch[name], lambda v: warp(v, "linear"))
        else:
            out[name] = warp(batch[name], "nearest")
    for name in batch.names("points"):
        out[name] = _push_points(stages, batch[name], n)
    for name in batch.names("boxes"):
        moved, kept = _push_boxes(stages, batch[name], out_shape, has_field)
        out[name] = moved
        out.meta[f"{name}_kept"] = kept
    return out


def _pull_grid(stages: list, out_shape, device) -> torch.Tensor:
    """Source coordinates of every output voxel through a chain with displacement fields."""
    b = stages[0][1].shape[0]
    axes = [torch.arange(s, dtype=torch.float32, device=device) for s in out_shape]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)
    coords = coords.unsqueeze(0).expand(b, *coords.shape).contiguous()
    for stage in reversed(stages):
        coords = _pull(stage, coords)
    return coords


def _pull(stage, coords: torch.Tensor) -> torch.Tensor:
    """Map coordinates in a stage's output space to its input space."""
    if stage[0] == "field":
        field = stage[2].to(coords.device, torch.float32)
        n = coords.shape[-1]
        flat = coords.reshape(coords.shape[0], -1, n)
        shift = _warp.sample_at(field, flat)
        coords = (flat + shift).reshape(coords.shape)
    return _warp.apply_matrix(stage[1].to(coords.device), coords)


def _push_points(stages: list, points: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """Where input points land in the output: invert the pull-back chain."""
    out = []
    for b, pts in enumerate(points):
        if pts.numel() == 0:
            out.append(pts.clone())
            continue
        single = [_select(stage, b) for stage in stages]
        moved = _invert_pull(single, pts.to("cpu", torch.float64))  # matrices live on the CPU
        out.append(moved.to(pts.device, pts.dtype))
    return out


def _push_boxes(
    stages: list, boxes: list[torch.Tensor], out_shape, has_field: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Move boxes: the bounding box of their moved corners (a surface lattice under fields).

    Boxes are clipped to the output's extent; those left empty are dropped, and the indices of
    the boxes kept are returned per sample so their class labels can follow.
    """
    n = len(out_shape)
    upper = torch.tensor(out_shape[::-1], dtype=torch.float64) - 0.5
    steps = torch.linspace(0, 1, 7 if has_field else 2, dtype=torch.float64)
    lattice = torch.stack(torch.meshgrid(*([steps] * n), indexing="ij"), dim=-1).reshape(-1, n)
    moved_all, kept_all = [], []
    for b, box in enumerate(boxes):
        if box.numel() == 0:
            moved_all.append(box.clone())
            kept_all.append(torch.zeros(0, dtype=torch.long))
            continue
        device = box.device
        box = box.to("cpu", torch.float64)  # matrices and fields' solves live on the CPU
        low, high = box[:, :n], box[:, n:]
        points = low[:, None, :] + lattice[None] * (high - low)[:, None, :]
        single = [_select(stage, b) for stage in stages]
        moved = _invert_pull(single, points.reshape(-1, n)).reshape(points.shape)
        new_low = moved.min(dim=1).values.clamp(min=-0.5).minimum(upper)
        new_high = moved.max(dim=1).values.clamp(min=-0.5).minimum(upper)
        keep = torch.all(new_high > new_low, dim=1)
        moved_all.append(torch.cat([new_low, new_high], dim=1)[keep].to(device, torch.float32))
        kept_all.append(torch.nonzero(keep).flatten())
    return moved_all, kept_all


def _select(stage, b: int):
    if stage[0] == "field":
        return ("field", stage[1][b : b + 1], stage[2][b : b + 1], stage[3])
    return ("affine", stage[1][b : b + 1], stage[2])


def _invert_pull(stages: list, points: torch.Tensor) -> torch.Tensor:
    """Solve pull(y) = points for y: exact for affine chains, Newton's method with fields.

    A plain fixed-point iteration converges only where the field's Jacobian has spectral radius
    below one; strong (still invertible) deformations exceed that, so the steps here use the
    chain's Jacobian (central differences) and are halved where they would not reduce the error.
    Points in folded regions, which have no proper inverse, keep their best estimate.
    """
    total = stages[0][1]
    for stage in stages[1:]:
        total = total @ stage[1]
    inverse = torch.linalg.inv(total[0].to(torch.float64))
    n = points.shape[-1]
    guess = points @ inverse[:n, :n].T + inverse[:n, n]
    if all(stage[0] == "affine" for stage in stages):
        return guess
    stages = _collapse(stages)
    residual = points - _pull_chain(stages, guess)
    active = torch.arange(points.shape[0])
    for _ in range(40):
        error = residual[active].norm(dim=-1)
        active, error = active[error >= 1e-4], error[error >= 1e-4]
        if active.numel() == 0:
            break
        start, target = guess[active], points[active]
        step = _newton_step(stages, start, residual[active], inverse[:n, :n])
        for _ in range(10):
            trial = start + step
            trial_residual = target - _pull_chain(stages, trial)
            better = trial_residual.norm(dim=-1) < error
            if bool(better.all()):
                break
            step = torch.where(better[:, None], step, step / 2)
        guess[active[better]] = trial[better]
        residual[active[better]] = trial_residual[better]
        active = active[better]  # those that cannot improve any more stop here
    return guess


def _newton_step(
    stages: list, guess: torch.Tensor, residual: torch.Tensor, linear_inverse: torch.Tensor
) -> torch.Tensor:
    """Solve ``J step = residual`` with the pull chain's Jacobian ``J`` at each point (central
    differences); the affine part's inverse stands in where ``J`` is singular."""
    n = guess.shape[-1]
    h = 1e-2
    columns = []
    for k in range(n):
        offset = torch.zeros(n, dtype=guess.dtype)
        offset[k] = h
        ahead, behind = _pull_chain(stages, guess + offset), _pull_chain(stages, guess - offset)
        columns.append((ahead - behind) / (2 * h))
    jacobian = torch.stack(columns, dim=-1)  # (N, n, n): d pull_i / d y_k
    rows = jacobian.unbind(dim=1)
    if n == 2:  # Cramer's rule: much faster than a batched LAPACK call for tiny systems
        (a, b), (c, d) = rows[0].unbind(-1), rows[1].unbind(-1)
        det = a * d - b * c
        step = torch.stack([d * residual[:, 0] - b * residual[:, 1],
                            a * residual[:, 1] - c * residual[:, 0]], dim=-1)  # fmt: skip
    else:
        cofactors = [
            torch.linalg.cross(rows[1], rows[2]),
            torch.linalg.cross(rows[2], rows[0]),
            torch.linalg.cross(rows[0], rows[1]),
        ]
        det = (rows[0] * cofactors[0]).sum(dim=-1)
        step = sum(c * residual[:, k, None] for k, c in enumerate(cofactors))
    fallback = residual @ linear_inverse.T
    usable = det.abs() > 1e-6
    return torch.where(usable[:, None], step / torch.where(usable, det, 1.0)[:, None], fallback)


def _collapse(stages: list) -> list:
    """The same pull with each run of affine stages multiplied into one matrix (into the next
    field stage's matrix where one follows): fewer steps for the iterations above."""
    out, run, last = [], None, None
    for stage in stages:
        if stage[0] == "affine":
            run, last = (stage[1] if run is None else run @ stage[1]), stage
            continue
        if run is not None:
            stage = ("field", run @ stage[1], stage[2], stage[3])
            run = None
        out.append(stage)
    if run is not None:
        out.append(("affine", run, last[2]))
    return out


def _pull_chain(stages: list, points: torch.Tensor) -> torch.Tensor:
    coords = points[None].to(torch.float32)
    for stage in reversed(stages):
        coords = _pull(stage, coords)
    return coords[0].to(torch.float64)
