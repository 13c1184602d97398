"""The segmentation network of a plan, and the sliding-window prediction of a case with it.

Training validates with :func:`predict_case`; ``predict``, ``evaluate`` and ``explain`` predict
with it too, so every command sees the same probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medlens.tasks.segmentation.plan import SegmentationPlan

__all__ = ["build_network", "inference_window", "predict_case", "predict_cases"]


def build_network(plan: SegmentationPlan) -> torch.nn.Module:
    """The plan's U-Net."""
    from medlens.models import create_model

    net = plan.network
    name = "resunet" if net.get("encoder") == "residual" else net.get("name", "unet")
    return create_model(
        name,
        spatial_dims=plan.spatial_dims,
        in_channels=plan.in_channels,
        num_classes=plan.num_classes,
        features=net["features"],
        strides=net["strides"],
        kernel_sizes=net["kernel_sizes"],
        deep_supervision=bool(net.get("deep_supervision", True)),
    )


def predict_case(
    networks: Sequence[torch.nn.Module],
    image: np.ndarray,
    plan: SegmentationPlan,
    *,
    mirror: bool = False,
) -> np.ndarray:
    """Class probabilities ``(K, *shape)`` of a preprocessed image ``(C, *shape)``, window by
    window (:func:`inference_window`), in the plan's ``inference.precision``."""
    return predict_cases(networks, np.asarray(image)[None], plan, mirror=mirror)[0]


@torch.no_grad()
def predict_cases(
    networks: Sequence[torch.nn.Module],
    images: np.ndarray,
    plan: SegmentationPlan,
    *,
    mirror: bool = False,
    precision: str | None = None,
) -> np.ndarray:
    """:func:`predict_case` of a batch of preprocessed images ``(N, C, *shape)`` of one shape
    (the frames of a cine): their windows go through the network together. ``precision``
    (``"bf16"`` or ``"float32"``) overrides the plan's ``inference.precision``."""
    from medlens.inference import sliding_window
    from medlens.tasks.segmentation.plan import _native_bf16, inference_settings

    x = torch.from_numpy(np.ascontiguousarray(images))
    total = None
    axes = tuple(range(plan.spatial_dims)) if mirror else ()
    window = inference_window(plan, images.shape[2:])
    chosen = precision or inference_settings(plan)["precision"]
    bf16 = chosen == "bf16" and _native_bf16()
    for network in networks:
        network.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = sliding_window(x, network, window, overlap=0.5, mirror_axes=axes,
                                    batch_size=max(1, plan.batch_size))  # fmt: skip
        probs = logits.float().softmax(dim=1)
        total = probs if total is None else total + probs
    return (total / len(networks)).numpy()


def inference_window(plan: SegmentationPlan, shape: Sequence[int]) -> tuple[int, ...]:
    """The sliding window for an image of ``shape`` (array order, on the plan's grid): the
    training patch, or with ``inference.window = "image"`` the patch grown on each axis to hold
    the image whole where the image is at most ``WINDOW_GROWTH`` times the patch there (rounded
    up to the network's divisor): one pass instead of several overlapping ones, with the whole
    image as context (the hippocampus: 8 windows become 1, but Dice fell from 0.891 to 0.879:
    the instance norms then see statistics unlike the training patches'; an option, not a
    default)."""
    from medlens.tasks.segmentation.plan import WINDOW_GROWTH, inference_settings

    patch = tuple(int(p) for p in plan.patch_size)
    if inference_settings(plan)["window"] != "image":
        return patch
    return tuple(
        -(-int(s) // d) * d if p < s <= WINDOW_GROWTH * p else p
        for s, p, d in zip(shape, patch, plan.divisor, strict=True)
    )
