"""Which cases ``medlens evaluate`` scores for a segmentation run, and each case's prediction.

The cases are chosen (the run's validation cases or all of them), predicted on their own grid
against their reference, and ranked by mean foreground Dice to pick the report's examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DatasetError, GeometryError, MedlensError


# ---------------------------------------------------------------------------------- cases
def _select_cases(run, dataset, data: Path, split: str | None):
    """``(index into dataset, fold or None)`` per case, what they are, and notes.

    A fold number means "predict with that fold's model only" (out-of-fold); None means the
    run's whole ensemble.
    """
    own = _is_training_data(run.info.get("data", {}), dataset, data)
    notes: list[str] = []
    if split == "all" or (split is None and not own):
        if own:
            notes.append(
                "All cases of the training dataset were scored, including those the model was "
                "trained on: these figures are optimistic. Use the validation split for an "
                "honest estimate."
            )
        what = "all cases of the dataset" + (" (training cases included)" if own else "")
        cases = [(i, None) for i in range(len(dataset))]
        return cases, {"split": "all", "description": what}, notes
    from medlens.data import load_splits

    splits = load_splits(run.path / "splits.json")
    folds = [splits] if isinstance(splits, dict) else list(splits)
    if len(folds) > 1 and len(folds) != len(run.networks):
        raise MedlensError(
            f"{run.path}: splits.json has {len(folds)} folds but {len(run.networks)} trained "
            "models were found"
        )
    position = {case_id: i for i, case_id in enumerate(dataset.ids())}
    by_index: dict[int, int | None] = {}
    missing: list[str] = []
    for k, fold in enumerate(folds):
        for case_id in fold["val"]:
            if case_id in position:
                by_index[position[case_id]] = k if len(folds) > 1 else None
            else:
                missing.append(str(case_id))
    if missing:  # matched by id: the training split's other cases need not be there
        more = ", ..." if len(missing) > 3 else ""
        raise DatasetError(
            f"{len(missing)} of the run's validation cases are not in this dataset "
            f"({', '.join(missing[:3])}{more}); use --split all to score its own cases",
            data,
        )
    if not by_index:
        raise DatasetError("the run's split has no validation case to score", run.path)
    if len(folds) > 1:
        what = (
            f"out-of-fold: every validation case predicted by the one of the {len(folds)} "
            "cross-validation models that did not train on it"
        )
    else:
        what = "the run's validation cases (held out of training)"
    notes.append(
        "The validation cases also chose the best epoch and the postprocessing, so the figures "
        "may be slightly optimistic; a separate test set gives an unbiased estimate."
    )
    cases = sorted(by_index.items())
    return cases, {"split": "val", "description": what}, notes


def _fold_run(run, fold: int | None):
    """``run`` with the model of ``fold`` only (None: the whole ensemble)."""
    import copy

    if fold is None:
        return run
    names = [p.name for p in sorted(run.path.glob("fold-*"))]  # load_segmentation_run's order
    view = copy.copy(run)
    view.networks = [run.networks[names.index(f"fold-{fold}")]]
    return view


def _is_training_data(recorded: Mapping[str, Any], dataset, data: Path) -> bool:
    """Whether the run was trained on ``data`` (``recorded``: ``run.json``'s ``data``).

    The same folder; or, when the run recorded a relative path (resolved against a working
    folder that may not be this one), a folder of the same name holding a dataset of the same
    name and size. Erring towards "yes" is safe: the validation ids must then all be found.
    """
    source = str(recorded.get("source") or "")
    if not source:
        return False
    try:
        a, b = Path(source), Path(data)
        if a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b)):
            return True
    except OSError:
        pass
    return (
        not a.is_absolute()
        and a.name == b.resolve().name
        and recorded.get("name") == dataset.name
        and recorded.get("cases") == len(dataset)
    )


def _class_names(info: Mapping[str, Any], labels: Sequence[int]) -> dict[int, str]:
    """Names of the foreground labels from the run's class names (by value when they line up)."""
    names = [str(n) for n in info.get("class_names") or []]
    values = [int(v) for v in info.get("label_values") or []]
    out: dict[int, str] = {}
    for label in labels:
        if len(names) == len(values) and label in values:
            out[label] = names[values.index(label)]
        elif 0 <= label < len(names):
            out[label] = names[label]
        else:
            out[label] = str(label)
    if len(set(out.values())) != len(out):  # names must be unique: fall back to the values
        out = {label: f"{name} ({label})" for label, name in out.items()}
    return out


def _predict_case(run, dataset, index: int, mirror: bool) -> dict[str, Any]:
    """The case's prediction and reference on the case's own grid (2D images squeezed)."""
    from medlens.tasks.segmentation.predict import _squeeze_2d, predict_image

    sample = dataset[index]
    plan = run.plan
    where = sample.meta.get("label_path") or sample.id
    if sample.mask is None:
        raise DatasetError("no label map to evaluate against", where)
    image = _squeeze_2d(sample.image, plan.spatial_dims)
    image.meta.setdefault("path", str(sample.meta.get("path") or sample.id))
    pred = predict_image(run, image, mirror=mirror)
    ref = np.asarray(sample.mask.array)
    if ref.ndim == len(pred.array.shape) + 1 and ref.shape[0] == 1:
        ref = ref[0]  # a 2D case stored as one slice
    if ref.shape != pred.array.shape:
        raise GeometryError(f"label map shape {ref.shape} != image shape {pred.array.shape}", where)
    pred_array = np.asarray(pred.array)
    if plan.ignore_label is not None:  # voxels marked "ignore" count for no class
        keep = ref == plan.ignore_label
        if keep.any():
            pred_array = pred_array.astype(np.int32)
            pred_array[keep] = plan.ignore_label
    return {"id": sample.id, "image": image, "pred": pred_array, "ref": ref, "spacing": pred}


def _ranked(cases: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """``(role, case index)`` of the best, median and worst case by mean foreground Dice.

    With fewer than three cases a case takes several roles (``"median and worst"``).
    """
    scores = [_mean_dice(case) for case in cases]
    order = sorted(range(len(cases)), key=lambda i: (-scores[i], i))  # best first, stable
    picks = {"best": order[0], "median": order[(len(order) - 1) // 2], "worst": order[-1]}
    roles: dict[int, list[str]] = {}
    for role, i in picks.items():
        roles.setdefault(i, []).append(role)
    return [(" and ".join(r), i) for i, r in roles.items()]


def _mean_dice(case: Mapping[str, Any]) -> float:
    value = case.get("mean", {}).get("dice")
    return -math.inf if value is None else float(value)
