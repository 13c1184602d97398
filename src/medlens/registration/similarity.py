"""Image similarity for registration, differentiable, 2D and 3D: lower is better for every one.

- ``mse``: mean squared difference (same modality, same intensity scale);
- ``ncc``: 1 - the global normalised cross-correlation (same modality, any linear scaling);
- ``lncc``: 1 - the mean squared local cross-correlation in cubic windows (VoxelMorph's NCC;
  robust to slowly varying bias), computed with box filters;
- ``mi``: minus the mutual information of the two intensity histograms with Gaussian Parzen
  windows (Mattes et al. 2003 / Thévenaz and Unser 2000), for images of different modalities;
- ``mind``: the mean absolute difference of MIND-SSC descriptors (Heinrich et al. 2012/2013),
  local self-similarities that look alike across modalities.

Each takes ``fixed`` and ``warped`` ``(B, C, *S)`` float tensors and an optional ``mask``
``(B, 1, *S)`` (1 where the pair counts: the fixed image's mask times the voxels the moving
image covers) and returns a scalar. A similarity computed on features of each image (``mind``)
also carries them as ``features`` (image -> features) and ``compare`` (the similarity of two
feature tensors): an optimiser then computes the moving image's features once per level and
warps them, instead of recomputing them from every warped image (Heinrich et al. warp the
descriptors too; a MIND registration of a 32x256x256 MR volume took 124 s instead of 229).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["SIMILARITIES", "lncc", "mi", "mind", "mind_descriptors", "mse", "ncc", "similarity"]


def _weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(like[:, :1])
    return mask.to(like.dtype)


def mse(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None):
    w = _weights(mask, fixed)
    return ((fixed - warped) ** 2 * w).sum() / (w.sum() * fixed.shape[1]).clamp(min=1)


def ncc(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None):
    w = _weights(mask, fixed)
    dims = tuple(range(2, fixed.ndim))
    total = w.sum(dim=dims, keepdim=True).clamp(min=1)
    f = fixed - (fixed * w).sum(dim=dims, keepdim=True) / total
    m = warped - (warped * w).sum(dim=dims, keepdim=True) / total
    cross = (f * m * w).sum(dim=dims)
    norm = torch.sqrt((f * f * w).sum(dim=dims) * (m * m * w).sum(dim=dims)).clamp(min=1e-8)
    return 1 - (cross / norm).mean()


def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Local means over a ``window``-wide cube (edges: the mean of what is inside), one axis
    at a time by cumulative sums (the mean over a box is the product of the means along its
    sides)."""
    n = x.ndim - 2
    half = window // 2
    for axis in range(2, 2 + n):
        size = x.shape[axis]
        total = F.pad(x.movedim(axis, -1), (1, 0)).cumsum(-1)  # total[..., i] = sum of x[:i]
        index = torch.arange(size, device=x.device)
        high = (index + half + 1).clamp(max=size)
        low = (index - half).clamp(min=0)
        sums = total.index_select(-1, high) - total.index_select(-1, low)
        x = (sums / (high - low).to(x.dtype)).movedim(-1, axis)
    return x


def lncc(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    window: int = 9,
    eps: float = 1e-5,
):
    window = window if window % 2 else window + 1
    window = max(3, min(window, *(2 * (s // 2) + 1 for s in fixed.shape[2:])))
    mf, mm = _box(fixed, window), _box(warped, window)
    vf = _box(fixed * fixed, window) - mf * mf
    vm = _box(warped * warped, window) - mm * mm
    cross = _box(fixed * warped, window) - mf * mm
    cc = cross * cross / (vf.clamp(min=0) * vm.clamp(min=0) + eps)
    w = _weights(mask, fixed)
    return 1 - (cc * w).sum() / (w.sum() * fixed.shape[1]).clamp(min=1)


def mi(
    fixed: torch.Tensor,
    warped: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    bins: int = 32,
    sample: int = 50_000,
):
    """Minus the mutual information (nats) of the first channels, each scaled to ``[0, 1]`` by
    the fixed image's and the warped image's own 0.5-99.5 percentiles within the mask; at most
    ``sample`` voxels, a fixed subset, so the value is deterministic."""
    w = _weights(mask, fixed).reshape(-1)
    f = fixed[:, 0].reshape(-1)
    m = warped[:, 0].reshape(-1)
    keep = w > 0
    f, m, w = f[keep], m[keep], w[keep]
    if f.numel() > sample:
        step = f.numel() // sample
        f, m, w = f[::step], m[::step], w[::step]
    f, m = _unit(f), _unit(m)
    centres = torch.linspace(0, 1, bins, dtype=f.dtype, device=f.device)
    sigma = 1.0 / (bins - 1)
    pf = torch.exp(-0.5 * ((f[:, None] - centres) / sigma) ** 2)
    pm = torch.exp(-0.5 * ((m[:, None] - centres) / sigma) ** 2)
    pf = pf / pf.sum(dim=1, keepdim=True).clamp(min=1e-12)
    pm = pm / pm.sum(dim=1, keepdim=True).clamp(min=1e-12)
    joint = (pf * w[:, None]).T @ pm
    joint = joint / joint.sum().clamp(min=1e-12)
    marginal_f, marginal_m = joint.sum(dim=1, keepdim=True), joint.sum(dim=0, keepdim=True)
    ratio = joint / (marginal_f @ marginal_m).clamp(min=1e-12)
    return -(joint * torch.log(ratio.clamp(min=1e-12))).sum()


def _unit(x: torch.Tensor) -> torch.Tensor:
    values = x.detach()
    if values.numel() > 100_000:
        values = values[:: values.numel() // 100_000]
    low, high = torch.quantile(values.float(), torch.tensor([0.005, 0.995], device=x.device))
    return ((x - low.to(x.dtype)) / (high - low).clamp(min=1e-8).to(x.dtype)).clamp(0, 1)


def mind_descriptors(x: torch.Tensor, *, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptors ``(B, K, *S)`` of the first channel of ``x`` ``(B, C, *S)``: the
    patch distances between pairs of the six-neighbourhood (four in 2D) at ``dilation`` voxels,
    each patch ``2 * radius + 1`` wide, normalised by their mean and mapped through
    ``exp(-d / variance)``."""
    n = x.ndim - 2
    image = x[:, :1]
    offsets = []
    for axis in range(n):
        for sign in (-1, 1):
            step = [0] * n
            step[axis] = sign * dilation
            offsets.append(step)
    pairs = [
        (a, b)
        for i, a in enumerate(offsets)
        for b in offsets[i + 1 :]
        if sum(abs(p - q) for p, q in zip(a, b, strict=True)) == 2 * dilation
    ]  # neighbours at right angles (the SSC pattern): 12 in 3D, 4 in 2D
    pad = dilation
    padded = F.pad(image, [pad] * (2 * n), mode="replicate")
    shape = image.shape[2:]

    def shifted(step):
        index = tuple(slice(pad + s, pad + s + size) for s, size in zip(step, shape, strict=True))
        return padded[(slice(None), slice(None), *index)]

    window = 2 * radius + 1
    distances = torch.cat([_box((shifted(a) - shifted(b)) ** 2, window) for a, b in pairs], 1)
    variance = distances.mean(dim=1, keepdim=True)
    mean = float(variance.detach().mean())
    variance = variance.clamp(min=mean * 1e-3, max=mean * 1e3)
    descriptors = torch.exp(-distances / variance)
    return descriptors / descriptors.amax(dim=1, keepdim=True).clamp(min=1e-8)


def _descriptor_distance(fixed: torch.Tensor, warped: torch.Tensor,
                         mask: torch.Tensor | None = None):  # fmt: skip
    """The mean absolute difference of two descriptor tensors ``(B, K, *S)``."""
    diff = (fixed - warped).abs().mean(dim=1, keepdim=True)
    w = _weights(mask, fixed)
    return (diff * w).sum() / w.sum().clamp(min=1)


def mind(fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor | None = None):
    return _descriptor_distance(mind_descriptors(fixed), mind_descriptors(warped), mask)


mind.features = mind_descriptors  # type: ignore[attr-defined]
mind.compare = _descriptor_distance  # type: ignore[attr-defined]


SIMILARITIES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": mse,
    "ncc": ncc,
    "lncc": lncc,
    "mi": mi,
    "mind": mind,
}


def similarity(name: str) -> Callable[..., torch.Tensor]:
    """The similarity called ``name`` (see the module's notes)."""
    from medlens.errors import MedlensError

    if name not in SIMILARITIES:
        raise MedlensError(f"similarity {name!r}: use one of {', '.join(SIMILARITIES)}")
    return SIMILARITIES[name]
