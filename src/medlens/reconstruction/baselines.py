"""Classical reconstructions of undersampled Cartesian k-space: the baselines a learned
reconstruction has to beat.

- :func:`zero_filled`: the inverse FFT of the k-space with the missing lines left at zero (coil
  combined with the maps, or root-sum-of-squares without them): the floor every method starts
  from;
- :func:`sense`: CG-SENSE (Pruessmann et al. 1999), ``min ||A x - y||^2 / 2 + lamda ||x||^2 / 2``;
- :func:`cs_wavelet`: compressed sensing with an L1 penalty on Daubechies-4 wavelet coefficients
  (Lustig et al. 2007), ``min ||A x - y||^2 / 2 + lamda ||W x||_1``;
- :func:`cs_tv`: compressed sensing with total variation (Block et al. 2007),
  ``min ||A x - y||^2 / 2 + lamda ||G x||_1``.

``A = M F S`` (:mod:`medlens.reconstruction.kspace`). Every function takes one slice's k-space
``(C, H, W)`` (a single-coil ``(H, W)`` is ``C = 1``), the ``(W,)`` mask of measured
phase-encode lines and ``(C, H, W)`` coil maps (ones for single-coil data when None) and returns
the complex image ``(H, W)`` complex64. The iterative ones run sigpy's ``mri.app`` solvers on the
CPU, quietly, and deterministically: the step sizes come from the bound
``||A^H A|| <= max_pixel sum_c |S_c|^2`` (and ``||G^H G|| <= 8`` for 2D finite differences)
instead of sigpy's power iteration, which starts from NumPy's global random state. The solvers
are scale-equivariant: k-space times ``a`` gives the image times ``a`` with the same SENSE
``lamda`` (an L2 penalty) and with the L1 ``lamda`` of the CS methods times ``a``.

``lamda`` is absolute, as in sigpy: the grid of :func:`tune_lambda` suits k-space whose image
has a maximum of about 1 (scale raw scanner k-space first). sigpy is in the ``recon`` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from medlens.errors import MedlensError

__all__ = [
    "BASELINES",
    "DEFAULT_GRID",
    "cs_tv",
    "cs_wavelet",
    "reconstruct_volume",
    "sense",
    "tune_lambda",
    "zero_filled",
]

DEFAULT_GRID = tuple(float(v) for v in np.logspace(-4, -1, 7))  # half-decade steps, max ~1
_TV_NORM = 8.0  # ||G^H G|| of circular finite differences over two axes: 4 per axis
# PDHG dual step: with tau = 1 / (sigma (L + 8)) the iteration converges for any sigma, but on
# 64-128 px phantoms and photographs (max 1, 4x) sigma = 0.03 is within 1 dB of its 1000-iteration
# result after 100 iterations, where sigpy's default sigma = 1 falls 2.5-16 dB short.
_TV_SIGMA = 0.03
# CG stops once ||A^H (y - A x)|| falls to this fraction of ||A^H y||: below it single-precision
# round-off drives CG off (single-coil data converges in one step, then blows up).
_CG_RTOL = 1e-5


def _sigpy(what: str) -> Any:
    try:
        import sigpy
        import sigpy.mri
    except ImportError as error:
        raise MedlensError(f"{what} needs sigpy: pip install 'medlens[recon]'") from error
    return sigpy


def _inputs(kspace: Any, mask: Any, maps: Any,
            need_maps: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:  # fmt: skip
    """complex64 k-space ``(C, H, W)``, bool mask ``(W,)`` and complex64 maps, checked.

    ``need_maps``: single-coil data gets maps of ones; multi-coil data must come with maps.
    """
    k = np.asarray(kspace)
    if k.ndim == 2:
        k = k[None]
    if k.ndim != 3:
        raise MedlensError(f"k-space of shape {k.shape}: a slice is (coils, H, W) or (H, W)")
    k = np.ascontiguousarray(k, dtype=np.complex64)  # torch.from_numpy refuses negative strides
    m = np.asarray(mask)
    if m.ndim != 1 or m.shape[0] != k.shape[-1]:
        raise MedlensError(
            f"mask of shape {m.shape} for k-space {k.shape}: the mask is ({k.shape[-1]},), "
            "one value per phase-encode line (the last axis)"
        )
    m = np.ascontiguousarray(m, dtype=bool)
    if maps is None:
        if need_maps and k.shape[0] > 1:
            raise MedlensError(
                f"{k.shape[0]}-coil k-space needs coil maps (espirit_maps estimates them)"
            )
        return k, m, (np.ones(k.shape, np.complex64) if need_maps else None)
    s = np.asarray(maps)
    if s.ndim == 2 and k.shape[0] == 1:
        s = s[None]
    if s.shape != k.shape:
        raise MedlensError(f"coil maps of shape {s.shape} for k-space of shape {k.shape}")
    return k, m, np.ascontiguousarray(s, dtype=np.complex64)


def _lipschitz(maps: np.ndarray) -> float:
    """``max sum_c |S_c|^2``: a bound on ``||A^H A||`` (the FFT is unitary, the mask <= 1)."""
    bound = float(np.max(np.sum(np.abs(maps) ** 2, axis=0)))
    if not bound > 0:
        raise MedlensError("coil maps are zero everywhere: nothing to reconstruct")
    return bound


def _weights(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The mask as sigpy's data-consistency weights ``(H, W)`` (sigpy multiplies k-space by
    their square root; 0/1 weights are the mask itself)."""
    return np.ones((shape[-2], 1), np.float32) * mask[None, :].astype(np.float32)


def _image(x: Any) -> np.ndarray:
    return np.asarray(x).astype(np.complex64, copy=False)


def zero_filled(kspace: Any, mask: Any, maps: Any = None) -> np.ndarray:
    """The inverse FFT of the zero-filled k-space ``(H, W)`` complex64: coil images combined
    with the maps (``sum conj(S) x / sum |S|^2``) when given, otherwise their root sum of
    squares (real-valued; a single coil keeps its phase)."""
    import torch

    from medlens.reconstruction.kspace import apply_mask, ifft2c, rss, sense_combine

    k, m, s = _inputs(kspace, mask, maps, need_maps=False)
    coil_images = ifft2c(apply_mask(torch.from_numpy(k), torch.from_numpy(m)))
    if s is not None:
        image = sense_combine(coil_images, torch.from_numpy(s))
    elif k.shape[0] == 1:
        image = coil_images[0]
    else:
        image = rss(coil_images)
    return _image(image.numpy())


def sense(kspace: Any, mask: Any, maps: Any, *, lamda: float = 0.0,
          iterations: int = 30) -> np.ndarray:  # fmt: skip
    """CG-SENSE with an optional L2 (Tikhonov) penalty ``lamda``: unfolds the aliasing with the
    coil maps; ``maps`` may be None for single-coil data (then it is the zero-filled image)."""
    k, m, s = _inputs(kspace, mask, maps, need_maps=True)
    sp = _sigpy("SENSE")
    adjoint = np.sum(np.conj(s) * sp.ifft(k * m, axes=(-2, -1)), axis=0)
    app = sp.mri.app.SenseRecon(k * m, s, lamda=float(lamda), weights=_weights(m, k.shape),
                                device=sp.cpu_device, max_iter=int(iterations),
                                tol=_CG_RTOL * float(np.linalg.norm(adjoint)),
                                show_pbar=False)  # fmt: skip
    return _image(app.run())


def cs_wavelet(kspace: Any, mask: Any, maps: Any, *, lamda: float,
               iterations: int = 100) -> np.ndarray:  # fmt: skip
    """L1-wavelet compressed sensing (FISTA, step ``1 / max sum |S|^2``): anatomy is nearly
    sparse in wavelets, the incoherent aliasing of random undersampling is not."""
    k, m, s = _inputs(kspace, mask, maps, need_maps=True)
    sp = _sigpy("L1-wavelet compressed sensing")
    app = sp.mri.app.L1WaveletRecon(k * m, s, float(lamda), weights=_weights(m, k.shape),
                                    device=sp.cpu_device, max_iter=int(iterations),
                                    alpha=1.0 / _lipschitz(s), show_pbar=False)  # fmt: skip
    return _image(app.run())


def cs_tv(kspace: Any, mask: Any, maps: Any, *, lamda: float,
          iterations: int = 100) -> np.ndarray:  # fmt: skip
    """Total-variation compressed sensing (primal-dual hybrid gradient, ``sigma = 0.03``,
    ``tau = 1 / (sigma (max sum |S|^2 + 8))``): favours piecewise-constant images."""
    k, m, s = _inputs(kspace, mask, maps, need_maps=True)
    sp = _sigpy("total-variation compressed sensing")
    app = sp.mri.app.TotalVariationRecon(k * m, s, float(lamda), weights=_weights(m, k.shape),
                                         device=sp.cpu_device, max_iter=int(iterations),
                                         sigma=_TV_SIGMA,
                                         tau=1.0 / (_TV_SIGMA * (_lipschitz(s) + _TV_NORM)),
                                         show_pbar=False)  # fmt: skip
    return _image(app.run())


BASELINES: dict[str, Callable[..., np.ndarray]] = {
    "zero_filled": zero_filled,
    "sense": sense,
    "cs_wavelet": cs_wavelet,
    "cs_tv": cs_tv,
}


def _baseline(name: str) -> Callable[..., np.ndarray]:
    if name not in BASELINES:
        raise MedlensError(f"unknown baseline {name!r}: use one of {', '.join(BASELINES)}")
    return BASELINES[name]


def reconstruct_volume(name: str, kspace: Any, mask: Any, maps: Any = None,
                       **params: Any) -> np.ndarray:  # fmt: skip
    """A baseline slice by slice: k-space ``(S, C, H, W)``, one ``(W,)`` mask for all slices,
    maps ``(C, H, W)`` shared, ``(S, C, H, W)`` per slice, or None; returns ``(S, H, W)``
    complex64. ``params`` go to the baseline (``lamda``, ``iterations``)."""
    fn = _baseline(name)
    k = np.asarray(kspace)
    if k.ndim != 4:
        raise MedlensError(f"k-space of shape {k.shape}: a volume is (slices, coils, H, W)")
    s = None if maps is None else np.asarray(maps)
    if s is not None and s.ndim == 4 and s.shape[0] != k.shape[0]:
        raise MedlensError(f"coil maps of shape {s.shape} for k-space of shape {k.shape}")
    if s is not None and s.ndim not in (3, 4):
        raise MedlensError(f"coil maps of shape {s.shape}: use (C, H, W) or (S, C, H, W)")
    out = np.empty((k.shape[0], *k.shape[-2:]), np.complex64)
    for i in range(k.shape[0]):
        slice_maps = s[i] if s is not None and s.ndim == 4 else s
        out[i] = fn(k[i], mask, slice_maps, **params)
    return out


def tune_lambda(name: str, slices: Any, targets: Any, mask: Any, maps: Any = None,
                grid: Sequence[float] | None = None,
                **params: Any) -> tuple[float, dict[float, float]]:  # fmt: skip
    """The ``lamda`` of a grid with the best mean PSNR over validation slices.

    Choose on validation slices, never on the test set: the baselines then get the same
    tuning budget as a learned method gets a validation set.

    Args:
        name: a baseline with a ``lamda`` (``sense``, ``cs_wavelet``, ``cs_tv``).
        slices: k-space ``(S, C, H, W)``.
        targets: reference magnitude images ``(S, H, W)``.
        mask, maps, params: as :func:`reconstruct_volume` takes them.
        grid: candidate values; :data:`DEFAULT_GRID` (1e-4 to 1e-1) by default.

    Returns:
        ``(best lamda, {lamda: mean PSNR in dB})``; PSNR of each slice's magnitude with that
        slice's target maximum as the peak; ties go to the smaller ``lamda``.
    """
    from medlens.metrics.reconstruction import psnr

    if name not in BASELINES or name == "zero_filled":
        raise MedlensError(f"{name!r} has no lamda to tune: use sense, cs_wavelet or cs_tv")
    values = sorted(float(v) for v in (DEFAULT_GRID if grid is None else grid))
    if not values or min(values) < 0:
        raise MedlensError(f"lamda grid {values}: needs at least one value, none negative")
    t = np.asarray(targets)
    k = np.asarray(slices)
    if t.ndim != 3 or k.ndim != 4 or t.shape[0] != k.shape[0] or t.shape[1:] != k.shape[-2:]:
        raise MedlensError(f"targets of shape {t.shape} for k-space of shape {k.shape}")
    table: dict[float, float] = {}
    for lamda in values:
        images = np.abs(reconstruct_volume(name, k, mask, maps, lamda=lamda, **params))
        table[lamda] = float(np.mean([psnr(t[i], images[i]) for i in range(len(t))]))
    best = max(values, key=lambda v: (table[v], -v))
    return best, table
