"""The plan of a reconstruction run: what is measured, the network, the loss, the schedule.

``kind="mri"``: undersampled Cartesian MRI. Training slices get a NEW mask each time they are
drawn (the plan's ``mask`` kind, one of its ``accelerations``, fastMRI's centre fractions), so
the network learns the undersampling, not one pattern; validation and evaluation apply the mask
stored with each file. Coil maps come with the data (``maps="given"``: simulated files carry
theirs) or are estimated from each slice's fully sampled centre by ESPIRiT
(``maps="espirit"``). The network is :class:`~medlens.reconstruction.unrolled.UnrolledNet`;
the loss is ``l1`` times the L1 distance of the magnitudes plus ``ssim`` times ``1 - SSIM``
(fastMRI's 7x7 window, each slice scaled by its reference's maximum).

Batches hold slices of one in-plane size, as many as ``batch_pixels`` allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medlens.engine import TrainConfig
from medlens.tasks.plan import Plan, PlanError

__all__ = ["KINDS", "ReconstructionPlan", "make_plan"]

KINDS = ("mri", "superres")
#: cascades and U-Net stages of the default network: 0.70 M parameters
CASCADES, FEATURES = 6, [16, 32, 64]


@dataclass
class ReconstructionPlan(Plan):
    """What a reconstruction run trains (see the module's notes)."""

    FORMAT = "medlens.reconstruction-plan/1"

    format: str
    kind: str
    coils: int = 1
    accelerations: list[float] = field(default_factory=list)
    factors: list[int] = field(default_factory=list)
    patch_size: int = 64
    noise: float = 0.0
    mask: str = "random"
    centre_fraction: float | None = None
    maps: str = "given"
    batch_pixels: int = 2 * 256 * 256
    val_slices: int = 48
    network: dict[str, Any] = field(default_factory=dict)
    loss: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        from medlens.reconstruction.masks import KINDS as MASKS

        if self.kind not in KINDS:
            raise PlanError(f"kind {self.kind!r}: use {', '.join(KINDS)}")
        if self.mask not in MASKS:
            raise PlanError(f"mask {self.mask!r}: use {' or '.join(MASKS)}")
        if self.maps not in ("given", "espirit"):
            raise PlanError(f"maps {self.maps!r}: use given or espirit")
        if self.kind == "mri" and (not self.accelerations
                                   or any(float(a) <= 1 for a in self.accelerations)):  # fmt: skip
            raise PlanError(f"accelerations {self.accelerations}: need values above 1")
        if self.kind == "superres" and (len(self.factors) not in (2, 3)
                                        or any(int(f) < 1 for f in self.factors)
                                        or max(self.factors) < 2):  # fmt: skip
            raise PlanError(f"factors {self.factors}: need 2 or 3 integers >= 1, one >= 2")
        if self.kind == "superres" and self.patch_size % max(self.factors):
            raise PlanError(f"patch_size {self.patch_size}: must be a multiple of the factors")
        if int(self.network.get("cascades", 1)) < 1:
            raise PlanError("network.cascades must be at least 1")

    @property
    def through_plane(self) -> bool:
        """3D super-resolution along the slice axis only, learnt from the in-plane slices."""
        return len(self.factors) == 3 and self.factors[1:] == [1, 1]

    def describe(self) -> list[str]:
        """The plan in a line, for ``medlens plan`` and the training log."""
        net = self.network
        if self.kind == "superres":
            how = ("through-plane, learnt from the in-plane slices (SMORE)" if self.through_plane
                   else "in-plane")  # fmt: skip
            return [f"super-resolution x{'x'.join(map(str, self.factors))} {how}: EDSR-lite "
                    f"({net['blocks']} blocks of {net['width']}) on the cubic interpolation, "
                    f"patches {self.patch_size}, L1 loss; {self.train.epochs} epochs of "
                    f"{self.train.batches_per_epoch} batches of "
                    f"{self.train.batch_size}"]  # fmt: skip
        accel = "/".join(f"{a:g}x" for a in self.accelerations)
        coils = "single-coil" if self.coils == 1 else f"{self.coils} coils ({self.maps} maps)"
        return [
            f"unrolled network, {net['cascades']} cascades of U-Nets {net['features']}"
            f"{' + hard data consistency' if net.get('hard_dc', True) else ''}; {coils}, "
            f"{self.mask} masks at {accel} drawn anew per slice; loss {self.loss['l1']:g} L1 + "
            f"{self.loss['ssim']:g} (1 - SSIM); {self.train.epochs} epochs of "
            f"{self.train.batches_per_epoch} batches"
        ]


def make_superres_plan(fingerprint: dict[str, Any]) -> ReconstructionPlan:
    """The super-resolution plan of an image dataset: ``x4`` in-plane for 2D images; for 3D
    volumes whose slices are at least 1.5 times thicker than their pixels, the slice axis to
    the in-plane spacing (``factors [round(ratio), 1, 1]``, learnt from the in-plane slices),
    else ``x2`` along the slice axis."""
    if fingerprint.get("spatial_dims", 2) == 2:
        factors = [4, 4]
    else:
        ratio = float(fingerprint.get("slice_ratio") or 1.0)
        factors = [max(2, round(ratio)) if ratio >= 1.5 else 2, 1, 1]
    patch = 64 // max(factors) * max(factors)  # 64 pixels, whole low-resolution blocks
    train = TrainConfig(epochs=40, batch_size=16, batches_per_epoch=50, optimizer="adam",
                        lr=2e-3, schedule="cosine", loss="l1", amp="off", monitor="val_score",
                        monitor_mode="max", grad_clip=1.0)  # fmt: skip
    return ReconstructionPlan(
        format=ReconstructionPlan.FORMAT,
        kind="superres",
        factors=factors,
        patch_size=patch,
        noise=0.0,
        # width 32 x 8 blocks: 0.15 M parameters, a 64x64 batch of 16 in about 0.6 s here
        network={"width": 32, "blocks": 8},
        loss={"l1": 1.0, "ssim": 0.0},
        val_slices=24,
        train=train,
    )


def make_plan(fingerprint: dict[str, Any]) -> ReconstructionPlan:
    """The plan from a k-space dataset's fingerprint: ``coils``, ``acceleration`` and ``mask``
    of its files (the stored masks), ``maps`` (whether files carry coil maps)."""
    from medlens.engine import native_bf16

    # bf16 for the regularisers where the CPU computes it natively: 0.8 s a step of 2 256x256
    # slices against 1.2 in float32 (AMD EPYC); the FFTs and data consistency stay complex64
    train = TrainConfig(epochs=30, batch_size=1, batches_per_epoch=40, optimizer="adam",
                        lr=1e-3, schedule="cosine", loss="reconstruction",
                        amp="on" if native_bf16() else "off",
                        monitor="val_score", monitor_mode="max", grad_clip=1.0)  # fmt: skip
    return ReconstructionPlan(
        format=ReconstructionPlan.FORMAT,
        kind="mri",
        coils=int(fingerprint.get("coils", 1)),
        accelerations=[float(fingerprint.get("acceleration") or 4.0)],
        mask=str(fingerprint.get("mask") or "random"),
        centre_fraction=fingerprint.get("centre_fraction"),
        maps="given" if fingerprint.get("maps", True) else "espirit",
        network={"cascades": CASCADES, "features": list(FEATURES), "hard_dc": True},
        loss={"l1": 1.0, "ssim": 1.0},
        train=train,
    )
