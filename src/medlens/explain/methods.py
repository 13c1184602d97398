"""Attribution methods on Captum, for 2D and 3D classification and segmentation networks.

:func:`attribute` is the one entry point: ``(B, C, *spatial)`` images and a target per image in,
``(B, *spatial)`` maps out (channels summed), on the input grid. The algorithms are Captum's
(Grad-CAM, Integrated Gradients, SmoothGrad over saliency, occlusion, LIME, KernelSHAP, Gradient
SHAP); medlens chooses their settings for medical images, finds the Grad-CAM layer through the
model zoo's backbone interface, makes the superpixels (2D) or supervoxels (3D) LIME and SHAP
perturb with scikit-image's SLIC, batches the forward passes, and for segmentation networks
attributes the mean logit of a class inside a region (:class:`RegionScore`).

Grad-CAM++ is the one method Captum lacks: its weighting (Chattopadhay et al., 2018) is applied
here to the layer activations and gradients, captured with hooks on the same layer Grad-CAM uses.

Sign convention: positive values are evidence for the target. Grad-CAM(++) and SmoothGrad (mean
absolute gradient) are non-negative; Integrated Gradients, occlusion, LIME and the SHAP methods
are signed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medlens.errors import MedlensError

__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "RegionScore",
    "attribute",
    "baseline_like",
    "default_layer",
    "superpixels",
]

#: Method key -> readable name. ``all`` on the command line means every one of these.
METHOD_NAMES: dict[str, str] = {
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "ig": "Integrated Gradients",
    "smoothgrad": "SmoothGrad",
    "occlusion": "Occlusion",
    "lime": "LIME",
    "shap": "KernelSHAP",
    "gradshap": "Gradient SHAP",
}
METHODS = tuple(METHOD_NAMES)
#: Methods that perturb the input many times per image (progress is shown for them).
SLOW = ("occlusion", "lime", "shap")
BASELINES = ("zeros", "mean", "blur", "noise")
#: Input voxels per forward(-backward) pass: bounds the memory of the batched methods.
VOXEL_BUDGET = 2**19


def fit_batch(inputs: torch.Tensor, batch_size: int, budget: int = VOXEL_BUDGET) -> int:
    """``batch_size`` images per pass, fewer when their voxels would exceed ``budget``."""
    voxels = int(np.prod(inputs.shape[1:]))
    return max(1, min(int(batch_size), budget // max(voxels, 1)))


class RegionScore(nn.Module):
    """A segmentation network seen as a scorer: the mean logit of ``label`` inside ``region``.

    ``region`` ``(B, *spatial)`` (bool or 0/1) is fixed, typically the network's own prediction
    of that class, so an attribution answers "what made the network call this region ``label``".
    The output is ``(B, 1)``: attribute it with target 0.
    """

    def __init__(self, network: nn.Module, label: int, region: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.label = int(label)
        region = torch.as_tensor(region, dtype=torch.float32)
        self.register_buffer("region", region)

    @property
    def feature_layer(self) -> nn.Module:
        """Grad-CAM's layer: the network's ``explain_layer`` (a U-Net's decoder stage at 1/8
        resolution) if it has one, else :func:`default_layer`."""
        layer = getattr(self.network, "explain_layer", None)
        return layer if isinstance(layer, nn.Module) else default_layer(self.network)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x)
        if isinstance(logits, (list, tuple)):  # deep supervision in training mode
            logits = logits[0]
        score = logits[:, self.label]
        region = self.region.to(score.dtype)
        if region.shape[0] == 1 and score.shape[0] > 1:
            region = region.expand_as(score)
        elif region.shape[0] != score.shape[0]:  # perturbation batches of one image
            region = region[:1].expand_as(score)
        total = region.flatten(1).sum(1).clamp_min(1.0)
        return ((score * region).flatten(1).sum(1) / total)[:, None]


def default_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM hooks by default: the model's ``feature_layer`` (the last stage of the
    backbone, or a U-Net's bottleneck), else the last convolution found in the model."""
    layer = getattr(model, "feature_layer", None)
    if isinstance(layer, nn.Module):
        return layer
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    if not convs:
        raise MedlensError(f"{type(model).__name__}: no convolutional layer for Grad-CAM")
    return convs[-1]


def baseline_like(inputs: torch.Tensor, kind: str = "zeros", *, seed: int = 0) -> torch.Tensor:
    """The reference image a method compares against, per image.

    ``zeros``: black (the input units' 0); ``mean``: each image's per-channel mean (no
    structure, same brightness); ``blur``: the image blurred with a Gaussian of sigma 1/8 of its
    smallest side (structure removed, low frequencies kept); ``noise``: uniform noise over the
    image's range.
    """
    if kind == "zeros":
        return torch.zeros_like(inputs)
    dims = tuple(range(2, inputs.dim()))
    if kind == "mean":
        return inputs.mean(dim=dims, keepdim=True).expand_as(inputs).contiguous()
    if kind == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = [0.0, 0.0] + [max(min(inputs.shape[2:]) / 8.0, 1.0)] * len(dims)
        array = gaussian_filter(inputs.detach().cpu().double().numpy(), sigma, mode="nearest")
        return torch.from_numpy(array).to(inputs)
    if kind == "noise":
        low = inputs.amin(dim=dims, keepdim=True)
        high = inputs.amax(dim=dims, keepdim=True)
        generator = torch.Generator().manual_seed(seed)
        u = torch.rand(inputs.shape, generator=generator).to(inputs)
        return low + u * (high - low)
    raise MedlensError(f"baseline {kind!r}: use one of {', '.join(BASELINES)}")


def superpixels(image: np.ndarray, n_segments: int | None = None) -> np.ndarray:
    """SLIC superpixels (2D) or supervoxels (3D) of one image ``(C, *spatial)``: int labels
    ``spatial`` from 0, for LIME and KernelSHAP to switch on and off.

    SLIC-zero (adaptive compactness) on the image scaled to [0, 1] per channel, starting from a
    compactness of 0.1 (suited to that range: scikit-image's default of 10 lets the spatial term
    swamp intensity differences of at most 1, giving a square grid that ignores edges); by
    default about one segment per 4x4 pixels (2D) or 4x4x4 voxels (3D), between 16 and 200.
    """
    from skimage.segmentation import slic

    image = np.asarray(image, dtype=np.float64)
    spatial = image.shape[1:]
    if n_segments is None:
        n_segments = int(np.clip(np.prod(spatial) / 4 ** len(spatial), 16, 200))
    low = image.reshape(image.shape[0], -1).min(1).reshape(-1, *([1] * len(spatial)))
    high = image.reshape(image.shape[0], -1).max(1).reshape(-1, *([1] * len(spatial)))
    scaled = (image - low) / np.maximum(high - low, 1e-12)
    labels = slic(
        np.moveaxis(scaled, 0, -1),
        n_segments=n_segments,
        compactness=0.1,
        slic_zero=True,
        channel_axis=-1,
        start_label=0,
        enforce_connectivity=True,
    )
    _, dense = np.unique(labels, return_inverse=True)  # consecutive labels from 0
    return dense.reshape(spatial).astype(np.int64)


def attribute(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    target: int | Sequence[int] | torch.Tensor | None = None,
    *,
    layer: nn.Module | None = None,
    baseline: str = "zeros",
    n_steps: int = 32,
    nt_samples: int = 16,
    noise_level: float = 0.15,
    window: Sequence[int] | None = None,
    n_samples: int = 200,
    segments: np.ndarray | None = None,
    batch_size: int = 64,
    progress: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Attributions ``(B, *spatial)`` of ``model``'s output ``target`` for ``inputs`` (channels
    summed, on the input grid, float32).

    Args:
        model: a classification network (logits ``(B, K)``; pass what its forward returns,
            before softmax) or a :class:`RegionScore` around a segmentation network.
        inputs: ``(B, C, H, W)`` or ``(B, C, D, H, W)`` as the model takes them.
        method: one of :data:`METHODS`.
        target: output index per image, one for all, or None for each image's top output.
        layer: Grad-CAM's layer; default :func:`default_layer`.
        baseline: reference of Integrated Gradients, occlusion, LIME, SHAP and Gradient SHAP
            (see :func:`baseline_like`).
        n_steps: Integrated Gradients' integration steps.
        nt_samples: SmoothGrad's noisy samples (and Gradient SHAP's per baseline).
        noise_level: SmoothGrad's noise, as a fraction of the intensity range (the mean of the
            images' ranges: Captum takes one noise level per call).
        window: occlusion patch per spatial axis; default about 1/7 of each side in 2D, 1/4 in
            3D (at least 2), moved by half of it.
        n_samples: perturbed images per image for LIME and KernelSHAP.
        segments: superpixel labels ``(B, *spatial)`` for LIME and SHAP; default SLIC.
        batch_size: images per forward pass for the methods that evaluate many (IG steps,
            SmoothGrad samples, perturbations), at most :data:`VOXEL_BUDGET` input voxels a pass
            (a 2D U-Net keeps ~10 kB per voxel for the backward pass).
        progress: show a progress bar for the slow methods.
        seed: LIME/SHAP sampling and the noise of SmoothGrad and Gradient SHAP.
    """
    if method not in METHODS:
        raise MedlensError(f"method {method!r}: use one of {', '.join(METHODS)} (or all)")
    if inputs.dim() not in (4, 5):
        raise MedlensError(f"explain expects (B, C, H, W) or (B, C, D, H, W), got {inputs.shape}")
    model.eval()
    inputs = inputs.detach().float()
    batch_size = fit_batch(inputs, batch_size)
    targets = _targets(model, inputs, target)
    torch.manual_seed(seed)
    if method in ("gradcam", "gradcam++"):
        maps = _gradcam(model, inputs, targets, layer, plus=method == "gradcam++")
        return maps.float()
    with torch.enable_grad():
        raw = _captum(
            model,
            inputs,
            method,
            targets,
            baseline=baseline,
            n_steps=n_steps,
            nt_samples=nt_samples,
            noise_level=noise_level,
            window=window,
            n_samples=n_samples,
            segments=segments,
            batch_size=batch_size,
            progress=progress,
            seed=seed,
        )
    return raw.detach().sum(dim=1).float()


def _targets(model: nn.Module, inputs: torch.Tensor, target: Any) -> torch.Tensor:
    n = inputs.shape[0]
    if target is None:
        with torch.no_grad():
            out = model(inputs)
        return out.argmax(dim=1).long()
    t = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        return t.expand(n).clone()
    if t.numel() != n:
        raise MedlensError(f"{t.numel()} targets for {n} images")
    return t


def _gradcam(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, layer: Any, plus: bool
) -> torch.Tensor:
    """Grad-CAM (Captum's LayerGradCam) or Grad-CAM++, upsampled to the input grid."""
    layer = default_layer(model) if layer is None else layer
    mode = "bilinear" if inputs.dim() == 4 else "trilinear"
    if not plus:
        from captum.attr import LayerGradCam

        with torch.enable_grad():
            cam = LayerGradCam(model, layer).attribute(
                inputs, target=targets, relu_attributions=True
            )
    else:
        acts, grads = _layer_gradients(model, layer, inputs, targets)
        dims = tuple(range(2, acts.dim()))
        g2, g3 = grads.pow(2), grads.pow(3)
        denom = 2 * g2 + acts.sum(dim=dims, keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * grads.clamp_min(0)).sum(dim=dims, keepdim=True)
        cam = (weights * acts).sum(dim=1, keepdim=True).clamp_min(0)
    cam = F.interpolate(cam.detach(), size=inputs.shape[2:], mode=mode, align_corners=False)
    return cam[:, 0]


def _layer_gradients(
    model: nn.Module, layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's output and the gradient of each image's target score with respect to it."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        captured["act"] = output

    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            x = inputs.clone().requires_grad_(True)
            out = model(x)
            score = out.gather(1, targets[:, None]).sum()
            act = captured["act"]
            (grads,) = torch.autograd.grad(score, act)
    finally:
        handle.remove()
    return act.detach(), grads.detach()


def _captum(
    model,
    inputs,
    method,
    targets,
    *,
    baseline,
    n_steps,
    nt_samples,
    noise_level,
    window,
    n_samples,
    segments,
    batch_size,
    progress,
    seed,
) -> torch.Tensor:
    from captum import attr

    base = baseline_like(inputs, baseline, seed=seed)
    if method == "ig":
        return attr.IntegratedGradients(model).attribute(
            inputs,
            baselines=base,
            target=targets,
            n_steps=n_steps,
            internal_batch_size=batch_size,
        )
    if method == "smoothgrad":
        dims = tuple(range(1, inputs.dim()))
        spread = (inputs.amax(dim=dims) - inputs.amin(dim=dims)).mean().item()
        return attr.NoiseTunnel(attr.Saliency(model)).attribute(
            inputs,
            nt_type="smoothgrad",
            nt_samples=nt_samples,
            nt_samples_batch_size=max(1, batch_size // max(inputs.shape[0], 1)),
            stdevs=max(noise_level * spread, 1e-6),
            target=targets,
            abs=True,
        )
    if method == "gradshap":  # per image: its own references only (its baseline and noise)
        out = []
        for i in range(inputs.shape[0]):
            one = inputs[i : i + 1]
            references = torch.cat([base[i : i + 1], baseline_like(one, "noise", seed=seed + i)])
            out.append(
                attr.GradientShap(model).attribute(
                    one,
                    baselines=references,
                    n_samples=nt_samples,
                    stdevs=0.0,
                    target=targets[i : i + 1],
                )
            )
        return torch.cat(out)
    if method == "occlusion":
        spatial = inputs.shape[2:]
        if window is None:
            share = 7 if len(spatial) == 2 else 4  # 3D: ~500 patches for 28^3, not ~2200
            window = [max(2, round(s / share)) for s in spatial]
        window = [min(int(w), s) for w, s in zip(window, spatial, strict=True)]
        strides = [max(1, w // 2) for w in window]
        c = inputs.shape[1]
        return _per_image(
            inputs,
            targets,
            progress,
            "occlusion",
            lambda x, t, b: attr.Occlusion(model).attribute(
                x,
                sliding_window_shapes=(c, *window),
                strides=(c, *strides),
                baselines=b,
                target=t,
                perturbations_per_eval=batch_size,
            ),
            base,
        )
    # LIME / KernelSHAP over superpixels, one image at a time (their surrogate is per image)
    if segments is None:
        segments = np.stack([superpixels(img) for img in inputs.cpu().numpy()])
    masks = torch.as_tensor(np.asarray(segments), dtype=torch.long)
    if masks.shape != (inputs.shape[0], *inputs.shape[2:]):
        raise MedlensError(f"segments {tuple(masks.shape)} do not match images {inputs.shape}")
    if method == "lime":
        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr._core.lime import get_exp_kernel_similarity_function

        explainer = attr.Lime(
            model,
            interpretable_model=SkLearnRidge(alpha=1.0),
            similarity_func=get_exp_kernel_similarity_function("cosine", kernel_width=0.25),
        )
    else:
        explainer = attr.KernelShap(model)
    out = []
    for i in _progress(range(inputs.shape[0]), progress, method):
        torch.manual_seed(seed + i)
        mask = masks[i : i + 1, None].expand(1, *inputs.shape[1:])
        out.append(
            explainer.attribute(
                inputs[i : i + 1],
                baselines=base[i : i + 1],
                target=targets[i : i + 1],
                feature_mask=mask,
                n_samples=n_samples,
                perturbations_per_eval=batch_size,
            )
        )
    return torch.cat(out)


def _per_image(inputs, targets, progress, what, fn: Callable, base) -> torch.Tensor:
    out = [
        fn(inputs[i : i + 1], targets[i : i + 1], base[i : i + 1])
        for i in _progress(range(inputs.shape[0]), progress, what)
    ]
    return torch.cat(out)


def _progress(items, show: bool, what: str):
    from medlens._progress import progress

    return progress(items, f"{what}...", enabled=show and len(items) > 1, transient=True)
