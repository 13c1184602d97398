"""Cartesian undersampling masks, as fastMRI draws them.

A mask keeps whole phase-encode lines (the last k-space axis): a fully sampled block of
``round(W * centre_fraction)`` lines in the middle (the calibration region that coil maps and
the low-resolution image come from) and, outside it,

- ``random``: each line with probability ``(W / R - centre) / (W - centre)``, so the expected
  number of lines is ``W / R`` (fastMRI's ``RandomMaskFunc``);
- ``equispaced``: lines every ``R'`` from a random offset, ``R'`` adjusted for the centre so
  the total is ``W / R`` (fastMRI's ``EquispacedMaskFractionFunc``, as in its public
  multi-coil data).

The random draws follow fastMRI's (a ``numpy.random.RandomState(seed)``), so a seed gives the
mask fastMRI gives for the same seed, width, acceleration and centre fraction. The default centre
fraction is ``0.32 / R``: fastMRI's 0.08 at 4x and 0.04 at 8x.
"""

from __future__ import annotations

import numpy as np

from medlens.errors import MedlensError

__all__ = ["KINDS", "cartesian_mask", "centre_fraction_for", "centre_lines"]

KINDS = ("random", "equispaced")


def centre_fraction_for(acceleration: float) -> float:
    """fastMRI's centre fraction for an acceleration: 0.08 at 4x, 0.04 at 8x."""
    return 0.32 / float(acceleration)


def centre_lines(width: int, acceleration: float, centre_fraction: float | None = None) -> int:
    """How many fully sampled lines the centre holds; refuses a centre that is empty or alone
    takes the whole budget of ``width / acceleration`` lines."""
    if not acceleration > 1:
        raise MedlensError(f"acceleration {acceleration}: needs to be above 1")
    fraction = centre_fraction_for(acceleration) if centre_fraction is None else centre_fraction
    low = round(width * fraction)
    if low < 2:
        raise MedlensError(
            f"acceleration {acceleration:g} with centre fraction {fraction:g} leaves "
            f"{low} centre line(s) of {width}: need at least 2 (a lower acceleration or a "
            "larger centre fraction)"
        )
    if low >= width / acceleration:
        raise MedlensError(
            f"centre fraction {fraction:g} takes {low} of the {width / acceleration:.0f} lines "
            f"that acceleration {acceleration:g} allows: nothing is left outside the centre"
        )
    return low


def cartesian_mask(width: int, acceleration: float, kind: str = "random", *,
                   centre_fraction: float | None = None, seed: int = 0,
                   offset: int | None = None) -> np.ndarray:  # fmt: skip
    """The ``(width,)`` boolean mask of measured phase-encode lines (see the module's notes)."""
    if kind not in KINDS:
        raise MedlensError(f"mask {kind!r}: use {' or '.join(KINDS)}")
    if width < 8:
        raise MedlensError(f"{width} phase-encode lines: need at least 8")
    low = centre_lines(width, acceleration, centre_fraction)
    rng = np.random.RandomState(seed)
    rng.randint(1)  # fastMRI draws the (centre fraction, acceleration) pair first
    mask = np.zeros(width, dtype=bool)
    pad = (width - low + 1) // 2
    mask[pad : pad + low] = True
    if kind == "random":
        prob = (width / acceleration - low) / (width - low)
        mask |= rng.uniform(size=width) < prob
    else:
        adjusted = (acceleration * (low - width)) / (low * acceleration - width)
        start = int(rng.randint(0, high=round(adjusted))) if offset is None else int(offset)
        lines = np.around(np.arange(start, width - 1, adjusted)).astype(np.int64)
        mask[lines] = True
    return mask
