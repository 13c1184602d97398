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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medlens.transforms import _compile
from medlens.transforms._resample import resample
from medlens.transforms.batch import Batch

__all__ = [
    "Compose",
    "IntensityTransform",
    "SpatialTransform",
    "Step",
    "Transform",
    "fold_frames",
]

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
    """A transform that moves voxels: every dense field (image, label, spatial, displacement),
    box and point moves together, every frame of a time series with the same parameters."""

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
        return resample(batch, [_stage(self, batch.spatial_shape, params, batch)])


class IntensityTransform(Transform):
    """A transform of image intensities; every other kind (label, spatial, displacement, boxes,
    points) passes through untouched.

    A transform may also offer a *fused* form: ``fused_inputs`` prepares its tensors eagerly
    (random draws, per-sample parameters) and ``fused`` is a pure tensor expression of the image
    and those inputs. :class:`Compose` compiles a run of such transforms into one kernel, so the
    image is read and written once for the run instead of once per transform.

    Images with a time axis ``(B, T, C, *S)`` reach :meth:`apply_image` with the frames folded
    into the channels, ``(B, T * C, *S)``: parameters are per sample, so every frame gets the
    same, and spatial filters (blur, bias field, resizing) act on each frame. Point-wise maps
    whose statistics should pool over a sample's frames (z-scoring, gamma, contrast) set
    ``frames_as_axis``: they get ``(B, C, T, *S)``, the frames as one more axis.
    """

    frames_as_axis: bool = False

    def apply_field(self, image: torch.Tensor, params: Params, timed: bool = False) -> torch.Tensor:
        """:meth:`apply_image` on one image field, with its time axis folded as documented."""
        folded, restore = fold_frames(image, timed, self.frames_as_axis)
        return restore(self.apply_image(folded, params))

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
            out[name] = self.apply_field(batch[name], params, batch.timed(name))
        return out


def fold_frames(
    image: torch.Tensor, timed: bool, as_axis: bool
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``(B, T, C, *S)`` as ``(B, T * C, *S)`` (or ``(B, C, T, *S)`` with ``as_axis``) and the
    function that restores the layout; untimed images pass through."""
    if not timed:
        return image, _same
    if as_axis:
        return image.transpose(1, 2), lambda out: out.transpose(1, 2).contiguous()
    frames = image.shape[1]
    return image.flatten(1, 2), lambda out: out.unflatten(1, (frames, -1))


def _same(image: torch.Tensor) -> torch.Tensor:
    return image


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
                out = resample(out, [_stage_of(s, out) for s in pending], self.label_mode)
                pending = []
            if not isinstance(step.transform, IntensityTransform):
                out = self._intensity_run(out, intensity)
                intensity = []
            if isinstance(step.transform, SpatialTransform):  # unfused: with the recorded
                out = resample(out, [_stage_of(step, out)], self.label_mode)  # spacing
            elif isinstance(step.transform, IntensityTransform) and self.fuse:
                intensity.append(step)
                continue
            else:
                out = step.transform.apply(out, step.params)
        if pending:
            out = resample(out, [_stage_of(s, out) for s in pending], self.label_mode)
        out = self._intensity_run(out, intensity)
        out.trace = list(batch.trace) + list(steps)
        return out

    def _intensity_run(self, batch: Batch, steps: list[Step]) -> Batch:
        """Apply consecutive intensity steps, compiled into one kernel where they allow it."""
        if not steps:
            return batch
        out = batch.copy()
        for name in batch.names("image"):
            timed = batch.timed(name)
            modes = {s.transform.frames_as_axis for s in steps} if timed else {False}
            if len(modes) > 1:  # the steps want the frames laid out differently: one by one
                image = batch[name]
                for step in steps:
                    image = step.transform.apply_field(image, step.params, timed)
                out[name] = image
                continue
            image, restore = fold_frames(batch[name], timed, modes.pop())
            parts = [(s, s.transform.fused_inputs(image, s.params)) for s in steps]
            if (
                len(steps) < 2
                or not _compile.enabled_for(image)
                or any(inputs is None for _, inputs in parts)
            ):
                for step in steps:
                    image = step.transform.apply_image(image, step.params)
                out[name] = restore(image)
                continue
            key = tuple((id(s.transform), len(inputs)) for s, inputs in parts)
            function = self._fused.get(key)
            if function is None:
                function = self._fused[key] = _chain([s.transform for s in steps], key)
            flat = [tensor for _, inputs in parts for tensor in inputs]
            out[name] = restore(_compile.run(function, image, *flat))
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
        out = resample(batch, stages, self.label_mode)
        out.trace = []
        return out

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class _ShapeProbe(Batch):
    """The batch as a sampler sees it mid-chain: the shape after earlier spatial steps."""

    def __init__(self, batch: Batch, shape: tuple[int, ...]) -> None:
        super().__init__(spacing=batch.spacing, time_axis=batch.time_axis)
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
