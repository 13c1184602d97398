"""The classical baselines of an MRI reconstruction run, and their weights chosen on the run's
validation files.

Compressed sensing has one free weight (``lamda``), and so has CG-SENSE on multi-coil data (its
Tikhonov penalty: without one, CG run to convergence amplifies the noise by the g-factor and falls
below zero-filled at 4x with random masks, 20.8 against 31.0 dB on a T1 slice with 8 coils); a
fair comparison gives each the tuning budget a network gets from its validation set. Training
ends by choosing, for each of the plan's accelerations, the ``lamda`` of
:func:`~medlens.reconstruction.baselines.tune_lambda`'s grid with the best mean PSNR over up to
:data:`TUNE_SLICES` middle slices of the validation files (masks of that acceleration drawn with
seed 0), and writes them to ``baselines.json`` in the run. Evaluation and the benchmark read them
back; a file is reconstructed with the weight of the tuned acceleration nearest its own (measured
lines over all). A run without the file (made before it existed) falls back to
:data:`DEFAULT_LAMBDAS` and says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import atomic_write_json

__all__ = ["DEFAULT_LAMBDAS", "FILE", "baseline_params", "mri_baselines", "tune_baselines"]

FILE = "baselines.json"
TUNE_SLICES = 6
TUNED = ("sense", "cs_wavelet", "cs_tv")
# the choices at 4x of the benchmark's runs (images scaled to a maximum near 1)
DEFAULT_LAMBDAS = {"sense": 1e-2, "cs_wavelet": 1e-3, "cs_tv": 1e-2}


def mri_baselines(coils: int) -> list[str]:
    """The baselines shown beside a network on data with ``coils`` coils."""
    return ["zero_filled", *(["sense"] if coils > 1 else []), "cs_wavelet", "cs_tv"]


def _tuning_slices(source, files: list[int], plan) -> list[tuple[Any, int, np.ndarray]]:
    from medlens.tasks.reconstruction.data import slice_maps

    picked = []
    for i in files:
        data = source.load(int(i))
        if data.mask is not None and not data.mask.all() and data.target is None:
            continue  # truly undersampled: no reference to tune against
        s = data.kspace.shape[0] // 2
        picked.append((data, s, slice_maps(data, s, plan)))
        if len(picked) >= TUNE_SLICES:
            break
    return picked


def tune_baselines(source, files: list[int], plan, output: Path, log=print) -> dict[str, Any]:
    """Choose the baselines' weights on ``files`` and write ``output/baselines.json``."""
    from medlens.reconstruction.baselines import tune_lambda
    from medlens.reconstruction.masks import cartesian_mask
    from medlens.tasks.reconstruction.data import reference

    picked = _tuning_slices(source, files, plan)
    record: dict[str, Any] = {"chosen_on": f"{len(picked)} middle slices of validation files",
                              "files": sorted({d.path.name for d, _, _ in picked}),
                              "lamda": {}, "psnr_by_lamda": {}}  # fmt: skip
    if not picked:
        record["chosen_on"] = "nothing (no validation file with a reference): defaults"
    coils = int(picked[0][0].kspace.shape[1]) if picked else 1
    for method in [m for m in mri_baselines(coils) if m in TUNED] if picked else ():
        for accel in plan.accelerations:
            table: dict[float, float] = {}
            for data, s, maps in picked:
                mask = cartesian_mask(data.kspace.shape[-1], accel, plan.mask,
                                      centre_fraction=plan.centre_fraction, seed=0)  # fmt: skip
                _, scores = tune_lambda(method, data.kspace[s : s + 1],
                                        reference(data, s, maps)[None], mask, maps)  # fmt: skip
                for lamda, value in scores.items():
                    table[lamda] = table.get(lamda, 0.0) + value / len(picked)
            best = max(table, key=lambda v: (table[v], -v))
            record["lamda"].setdefault(method, {})[f"{accel:g}"] = best
            record["psnr_by_lamda"].setdefault(method, {})[f"{accel:g}"] = {
                f"{k:g}": round(v, 3) for k, v in table.items()}  # fmt: skip
            log(f"{method} at {accel:g}x: lamda {best:g} (validation PSNR {table[best]:.2f} dB)")
    atomic_write_json(Path(output) / FILE, record)
    return record


def baseline_params(run_path: Path, method: str, mask: np.ndarray) -> dict[str, float]:
    """The keyword arguments of ``method`` for data sampled with ``mask``: the run's tuned
    ``lamda`` at the nearest acceleration, the default without one, none for the others."""
    if method not in TUNED:
        return {}
    path = Path(run_path) / FILE
    tuned = json.loads(path.read_text()).get("lamda", {}) if path.exists() else {}
    if not tuned.get(method):
        return {"lamda": DEFAULT_LAMBDAS[method]}
    accel = mask.size / max(float(np.count_nonzero(mask)), 1.0)
    nearest = min(tuned[method], key=lambda a: abs(float(a) - accel))
    return {"lamda": float(tuned[method][nearest])}
