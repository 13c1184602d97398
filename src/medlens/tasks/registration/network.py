"""The learned registration network and its loss (VoxelMorph's diffeomorphic recipe).

A U-Net takes the fixed and the moving image on the fixed image's canonical grid (two channels)
and predicts a stationary velocity field in canonical voxels. The velocity is integrated at half
resolution (averaged 2x2[x2]: smoother and an eighth of the work in 3D), smoothed there by a
Gaussian of the plan's ``network["smooth"]`` half-resolution voxels (as ``medlens register``
smooths its velocity), integrated by scaling and squaring and the displacement interpolated back
to the grid (:func:`displacement`), so the deformation
is a diffeomorphism up to interpolation. The loss is the similarity of the fixed image and the
warped moving one, plus ``weight`` times the diffusion of the velocity in mm, plus, with labels,
``label_weight`` times the soft Dice loss of the warped moving labels against the fixed ones
(Balakrishnan et al. 2019, "VoxelMorph", auxiliary segmentation).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medlens.registration.fields import diffusion, integrate, resize_field, smoothed, warp_field

__all__ = ["RegistrationLoss", "build_network", "displacement", "warp_labels"]


def build_network(plan) -> nn.Module:
    """The plan's U-Net: 2 input channels, ``n`` output channels (the velocity), its last
    convolution started near zero (the identity transform)."""
    from medlens.models import create_model

    features = list(plan.network["features"])
    net = create_model("unet", spatial_dims=plan.spatial_dims, in_channels=2,
                       num_classes=plan.spatial_dims, features=features,
                       norm=plan.network.get("norm", "instance"),
                       deep_supervision=False)  # fmt: skip
    head = net.heads[0]
    conv = (
        head
        if isinstance(head, nn.modules.conv._ConvNd)
        else next(m for m in head.modules() if isinstance(m, nn.modules.conv._ConvNd))
    )
    nn.init.normal_(conv.weight, std=1e-5)
    nn.init.zeros_(conv.bias)
    return net


def displacement(velocity: torch.Tensor, steps: int, smooth: float = 0.0) -> torch.Tensor:
    """The displacement ``(B, n, *P)`` (canonical voxels) of ``exp(velocity)``, integrated at
    half resolution after a Gaussian of ``smooth`` half-resolution voxels."""
    n = velocity.ndim - 2
    shape = velocity.shape[2:]
    pool = (F.avg_pool2d, F.avg_pool3d)[n - 2]
    half = pool(velocity, 2) / 2  # half the voxels: half the vectors' length in them
    return resize_field(integrate(smoothed(half, smooth), steps), shape)


def warp_labels(onehot: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """Label indicators ``(B, K, *P)`` warped linearly (soft)."""
    return warp_field(onehot, field, padding="zeros")


class RegistrationLoss(nn.Module):
    """The training loss (see the module's notes), on network outputs (velocities) and the
    targets of :class:`~medlens.tasks.registration.data.PairBatches`."""

    def __init__(self, plan) -> None:
        from medlens.registration.similarity import similarity

        super().__init__()
        self.similarity = similarity(plan.loss.get("similarity", "lncc"))
        self.weight = float(plan.loss.get("weight", 1.0))
        self.label_weight = float(plan.loss.get("label_weight", 0.0))
        self.steps = int(plan.integration_steps)
        self.smooth = plan.smooth
        self.spacing = [float(s) for s in plan.spacing[::-1]]  # index order
        self.last: dict[str, float] = {}

    def velocity_mm(self, velocity: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor(self.spacing, dtype=velocity.dtype, device=velocity.device)
        return velocity * scale.view(1, -1, *[1] * (velocity.ndim - 2))

    def forward(self, velocity: torch.Tensor, targets: dict[str, Any]) -> torch.Tensor:
        velocity = velocity.float()
        field = displacement(velocity, self.steps, self.smooth)
        warped = warp_field(targets["moving"], field, padding="border")
        similarity = self.similarity(targets["fixed"], warped)
        smooth = diffusion(self.velocity_mm(velocity), self.spacing)
        total = similarity + self.weight * smooth
        parts = {"similarity": float(similarity.detach()), "diffusion": float(smooth.detach())}
        if self.label_weight and "moving_labels" in targets:
            from medlens.tasks.segmentation.losses import soft_dice

            moved = warp_labels(targets["moving_labels"], field)
            dice = soft_dice(moved, targets["fixed_labels"], batch_dice=False)
            total = total + self.label_weight * dice
            parts["label_dice_loss"] = float(dice.detach())
        self.last = parts
        return total
