"""Standardised uptake values (SUV) of PET images, as the QIBA SUV profile computes them.

SUV is activity concentration divided by injected dose per body size: ``SUVbw = C(Bq/ml) *
weight(g) / dose(Bq)``, with the dose decayed from the injection to the scan start when the
images are decay-corrected to the scan start (``DecayCorrection`` START), or used as is when they
are corrected to the administration time (ADMIN). Body size is the weight (``bw``), the lean
body mass (``lbm``, Janmahasatian et al. 2005, from weight, height and sex) or the body surface
area (``bsa``, Du Bois). Philips' private SUV scale factor (7053,1000) converts ``CNTS`` images
and is cross-checked against our factor for ``BQML`` ones.

A missing or inconsistent attribute is refused with one line naming it: never a silent factor
of 1.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from pathlib import Path
from typing import Any

from medlens.errors import ImageReadError
from medlens.io._dicom_values import date_of, datetime_of, time_of_day

__all__ = ["SUV_KINDS", "suv_factor"]

SUV_KINDS = ("bw", "lbm", "bsa")
_PHILIPS = "Philips PET Private Group"
_CROSS_CHECK = 0.05  # relative difference from Philips' factor that earns a warning


class SUVWarning(UserWarning):
    """Our SUV factor and the vendor's disagree."""


def suv_factor(datasets: list[Any], kind: str, path: str | Path) -> tuple[float, dict]:
    """The factor that turns the series' modality values into SUV, and how it was found.

    Args:
        datasets: the headers of every file of one PET series.
        kind: ``"bw"``, ``"lbm"`` or ``"bsa"``.
        path: the file or folder, named in errors.
    """
    path = Path(path)
    if kind not in SUV_KINDS:
        raise ImageReadError(f"unknown SUV kind {kind!r} (bw, lbm or bsa)", path)
    if not datasets:
        raise ImageReadError("no images to compute SUV for", path)
    first = datasets[0]
    modality = str(first.get("Modality", "") or "")
    if modality not in ("PT", "NM"):
        raise ImageReadError(f"SUV needs a PET image, not modality {modality or 'unknown'}", path)
    for keyword in ("Units", "DecayCorrection", "PatientWeight", "SeriesDate", "SeriesTime"):
        _same_everywhere(datasets, keyword, path)
    units = str(first.get("Units", "") or "").strip().upper()
    if not units:
        raise ImageReadError("cannot compute SUV: Units (0054,1001) is missing", path)
    details: dict[str, Any] = {"kind": kind, "units": units}
    if units == "GML":  # already SUVbw (g/ml)
        if kind != "bw":
            raise ImageReadError(f"Units GML holds SUVbw; SUV{kind} needs Bq/ml images", path)
        details["source"] = "values are already SUVbw (Units GML)"
        return 1.0, details
    philips = _philips_factor(first)
    if units == "CNTS":
        if philips is None or kind != "bw":
            raise ImageReadError(
                "cannot compute SUV: Units CNTS without Philips' SUV scale factor (7053,1000)"
                if philips is None
                else f"Units CNTS gives SUVbw only (Philips' factor), not SUV{kind}",
                path,
            )
        details["source"] = "Philips SUV scale factor (7053,1000)"
        return philips, details
    if units != "BQML":
        raise ImageReadError(f"cannot compute SUV from Units {units} (needs BQML)", path)
    dose, start, half_life = _radiopharmaceutical(first, path)
    weight_kg = _positive(first, "PatientWeight", path)
    decay = str(first.get("DecayCorrection", "") or "").strip().upper()
    corrected = [str(v).upper() for v in _as_list(first.get("CorrectedImage"))]
    if decay not in ("START", "ADMIN"):
        raise ImageReadError(
            f"cannot compute SUV: DecayCorrection is {decay or 'missing'} (START or ADMIN needed)",
            path,
        )
    if corrected and "DECY" not in corrected:
        raise ImageReadError("cannot compute SUV: CorrectedImage lacks DECY (not decay-corrected)",
                             path)  # fmt: skip
    if decay == "START":
        scan = _scan_time(datasets, path)
        if start is None:
            raise ImageReadError(
                "cannot compute SUV: no RadiopharmaceuticalStartDateTime or StartTime", path
            )
        seconds = (scan - start).total_seconds()
        if seconds < 0 and _has_start_time_only(first):
            seconds += 86400.0  # injected before midnight, scanned after
        if not 0 <= seconds <= 7 * 86400:
            raise ImageReadError(
                f"cannot compute SUV: the scan starts {seconds / 60:.0f} min after the injection",
                path,
            )
        decayed = dose * 2.0 ** (-seconds / half_life)
        details.update(scan_time=scan.isoformat(), decay_seconds=round(seconds, 3))
    else:
        decayed = dose
    size = _body_size(first, kind, weight_kg, path)
    factor = size / decayed
    details.update(
        source="computed (QIBA)",
        decay_correction=decay,
        injected_dose_bq=dose,
        decayed_dose_bq=decayed,
        half_life_s=half_life,
        weight_kg=weight_kg,
        injection_time=None if start is None else start.isoformat(),
    )
    if kind == "bw" and philips is not None:
        details["philips_factor"] = philips
        if abs(philips - factor) > _CROSS_CHECK * factor:
            warnings.warn(
                f"{path}: SUV factor {factor:.6g} differs from Philips' SUV scale factor "
                f"{philips:.6g} by {100 * abs(philips - factor) / factor:.1f}%; using ours",
                SUVWarning,
                stacklevel=2,
            )
    return factor, details


# ------------------------------------------------------------------------------ the pieces
def _same_everywhere(datasets: list[Any], keyword: str, path: Path) -> None:
    values = {str(ds.get(keyword, "") or "").strip() for ds in datasets}
    if len(values) > 1:
        shown = ", ".join(sorted(v or "missing" for v in values))
        raise ImageReadError(f"the series' files disagree on {keyword} ({shown})", path)


def _radiopharmaceutical(ds, path: Path) -> tuple[float, dt.datetime | None, float]:
    sequence = ds.get("RadiopharmaceuticalInformationSequence")
    if not sequence:
        raise ImageReadError(
            "cannot compute SUV: RadiopharmaceuticalInformationSequence is missing", path
        )
    item = sequence[0]
    dose = _positive(item, "RadionuclideTotalDose", path)
    half_life = _positive(item, "RadionuclideHalfLife", path)
    start = datetime_of(item.get("RadiopharmaceuticalStartDateTime"))
    if start is None and item.get("RadiopharmaceuticalStartTime"):
        day = date_of(ds.get("SeriesDate")) or date_of(ds.get("StudyDate"))
        clock = time_of_day(item.get("RadiopharmaceuticalStartTime"))
        if day is None or clock is None:
            raise ImageReadError(
                "cannot compute SUV: RadiopharmaceuticalStartTime without a readable date", path
            )
        start = dt.datetime.combine(day, clock)
    return dose, start, half_life


def _has_start_time_only(ds) -> bool:
    item = ds.RadiopharmaceuticalInformationSequence[0]
    return not item.get("RadiopharmaceuticalStartDateTime")


def _scan_time(datasets: list[Any], path: Path) -> dt.datetime:
    """Series date and time, or the earliest acquisition when the series time is later (a
    series re-saved after processing), as the QIBA profile prescribes."""
    first = datasets[0]
    day, clock = date_of(first.get("SeriesDate")), time_of_day(first.get("SeriesTime"))
    if day is None or clock is None:
        raise ImageReadError("cannot compute SUV: SeriesDate or SeriesTime is missing", path)
    series = dt.datetime.combine(day, clock)
    acquired = []
    for ds in datasets:
        a_day = date_of(ds.get("AcquisitionDate")) or day
        a_clock = time_of_day(ds.get("AcquisitionTime"))
        if a_clock is not None:
            acquired.append(dt.datetime.combine(a_day, a_clock))
    earliest = min(acquired, default=None)
    return earliest if earliest is not None and earliest < series else series


def _body_size(ds, kind: str, weight_kg: float, path: Path) -> float:
    """Grams (bw, lbm) or square centimetres (bsa) for ``SUV = C * size / dose``."""
    if kind == "bw":
        return weight_kg * 1000.0
    height_m = _positive(ds, "PatientSize", path)
    if not 0.3 <= height_m <= 2.8:
        raise ImageReadError(f"PatientSize {height_m} m is not a height in metres", path)
    if kind == "bsa":
        return 0.007184 * weight_kg**0.425 * (100 * height_m) ** 0.725 * 1e4
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    if sex not in ("M", "F"):
        raise ImageReadError("cannot compute SUVlbm: PatientSex is not M or F", path)
    bmi = weight_kg / height_m**2
    lbm = 9270 * weight_kg / ((6680 + 216 * bmi) if sex == "M" else (8780 + 244 * bmi))
    return lbm * 1000.0


def _philips_factor(ds) -> float | None:
    try:
        block = ds.private_block(0x7053, _PHILIPS)
        value = float(block[0x00].value)
    except (KeyError, ValueError, TypeError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _positive(ds, keyword: str, path: Path) -> float:
    value = ds.get(keyword)
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        shown = "missing" if value in (None, "") else f"{value!r}"
        raise ImageReadError(f"cannot compute SUV: {keyword} is {shown}", path)
    return number


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
