"""Coil sensitivities and phase: synthetic ones for simulation, ESPIRiT estimates for real data.

- :func:`birdcage_maps`: ``C`` coils on a ring around the field of view (sigpy's birdcage model,
  normalised to a root sum of squares of 1), what simulated multi-coil k-space is made with;
- :func:`smooth_phase`: a smooth random phase (low spatial frequencies, up to ``pi``), which a
  real magnitude image lacks and every real acquisition has;
- :func:`espirit_maps`: coil maps estimated from the fully sampled centre of k-space by ESPIRiT
  (Uecker et al. 2014, sigpy's ``EspiritCalib``), for k-space that comes without maps.

sigpy is in the ``recon`` extra.
"""

from __future__ import annotations

import numpy as np

from medlens.errors import MedlensError

__all__ = ["birdcage_maps", "espirit_maps", "smooth_phase"]


def _sigpy():
    try:
        import sigpy
        import sigpy.mri
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise MedlensError("coil maps need sigpy: pip install 'medlens[recon]'") from error
    return sigpy


def birdcage_maps(coils: int, shape: tuple[int, int], *, radius: float = 1.5) -> np.ndarray:
    """``(coils, H, W)`` complex64 sensitivities of a birdcage of ``coils`` elements."""
    if coils < 1:
        raise MedlensError(f"{coils} coils: need at least 1")
    if coils == 1:
        return np.ones((1, *shape), np.complex64)
    maps = _sigpy().mri.birdcage_maps((coils, *shape), r=radius)
    return maps.astype(np.complex64)


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator, *, strength: float = np.pi,
                 frequencies: int = 3) -> np.ndarray:  # fmt: skip
    """A ``(H, W)`` float32 phase map: a random sum of the lowest ``frequencies`` cosines per
    axis, scaled so its largest value is ``strength`` radians."""
    y = np.linspace(0, np.pi, shape[0])[:, None]
    x = np.linspace(0, np.pi, shape[1])[None, :]
    phase = np.zeros(shape)
    for i in range(frequencies):
        for j in range(frequencies):
            if i or j:
                phase += rng.normal() / (1 + i + j) * np.cos(i * y) * np.cos(j * x)
    peak = np.abs(phase).max()
    return (phase / peak * strength if peak > 0 else phase).astype(np.float32)


def espirit_maps(kspace: np.ndarray, *, calibration: int = 24, threshold: float = 0.02,
                 crop: float = 0.95) -> np.ndarray:  # fmt: skip
    """``(C, H, W)`` complex64 ESPIRiT maps from one slice's k-space ``(C, H, W)`` (its centre
    ``calibration`` lines must be fully sampled)."""
    if kspace.ndim != 3:
        raise MedlensError(f"k-space of shape {kspace.shape}: ESPIRiT takes (coils, H, W)")
    sp = _sigpy()
    width = min(calibration, kspace.shape[-1], kspace.shape[-2])
    app = sp.mri.app.EspiritCalib(kspace.astype(np.complex64), calib_width=width,
                                  thresh=threshold, crop=crop, show_pbar=False)  # fmt: skip
    return np.asarray(app.run(), np.complex64)
