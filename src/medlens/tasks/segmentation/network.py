"""The segmentation network of a plan, and the sliding-window prediction of a case with it.

Training validates with :func:`predict_case`; ``predict``, ``evaluate`` and ``explain`` predict
with it too, so every command sees the same probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medlens.tasks.segmentation.plan import SegmentationPlan

__all__ = ["build_network", "predict_case"]


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


@torch.no_grad()
def predict_case(
    networks: Sequence[torch.nn.Module],
    image: np.ndarray,
    plan: SegmentationPlan,
    *,
    mirror: bool = False,
) -> np.ndarray:
    """Class probabilities ``(K, *shape)`` of a preprocessed image ``(C, *shape)``."""
    from medlens.inference import sliding_window

    x = torch.from_numpy(np.ascontiguousarray(image))[None]
    total = None
    axes = tuple(range(plan.spatial_dims)) if mirror else ()
    for network in networks:
        network.eval()
        logits = sliding_window(x, network, tuple(plan.patch_size), overlap=0.5,
                                batch_size=max(1, plan.batch_size), mirror_axes=axes)  # fmt: skip
        probs = logits.float().softmax(dim=1)[0]
        total = probs if total is None else total + probs
    return (total / len(networks)).numpy()
