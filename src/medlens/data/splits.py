"""Cross-validation folds and train/validation splits that never split a subject.

Images of one patient are correlated; a patient on both sides of a split inflates validation
scores. Splits are therefore grouped by subject whenever subjects are known, stratified by class
when the labels allow it, seeded, and saved with sample ids, method and seed so a later run (or a
reader of a paper) can reproduce them exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens._atomic import atomic_write_text
from medlens.data.dataset import Dataset
from medlens.errors import DatasetError

__all__ = ["kfold_splits", "load_splits", "save_splits", "split_indices", "train_val_split"]

FORMAT = "medlens-splits"
VERSION = 1


def _inputs(
    data: Dataset | Sequence[Any] | np.ndarray,
    groups: Sequence[Any] | np.ndarray | None,
    ids: Sequence[str] | None,
) -> tuple[list[str], np.ndarray | None, np.ndarray | None]:
    """Ids, labels (or None) and groups (or None) from a dataset or a label array."""
    if isinstance(data, Dataset):
        labels = data.labels()
        sample_ids = data.ids() if ids is None else list(ids)
        if groups is None and data.has_subjects():
            groups = data.subjects()
    else:
        labels = np.asarray(data)
        sample_ids = [str(i) for i in range(len(labels))] if ids is None else list(ids)
    n = len(sample_ids)
    if labels is not None and len(labels) != n:
        raise DatasetError(f"{len(labels)} labels for {n} samples")
    group_array = None
    if groups is not None:
        group_array = np.asarray([str(g) for g in groups])
        if len(group_array) != n:
            raise DatasetError(f"{len(group_array)} groups for {n} samples")
    if len(set(sample_ids)) != n:
        raise DatasetError("sample ids are not unique")
    return [str(i) for i in sample_ids], labels, group_array


def _strata(labels: np.ndarray | None, stratify: bool) -> np.ndarray | None:
    """Class per sample when stratifying makes sense (single-label, integer classes)."""
    if not stratify or labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or labels.dtype.kind not in "iub":
        return None  # multi-label or continuous targets: no class to stratify by
    return labels


def _fold_record(
    ids: list[str], train: np.ndarray, val: np.ndarray, method: str, seed: int, **extra: Any
) -> dict[str, Any]:
    train, val = np.sort(train), np.sort(val)
    return {
        **extra,
        "method": method,
        "seed": int(seed),
        "train": [ids[i] for i in train],
        "val": [ids[i] for i in val],
        "train_indices": train.tolist(),
        "val_indices": val.tolist(),
    }


def kfold_splits(
    data: Dataset | Sequence[Any] | np.ndarray,
    k: int = 5,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    stratify: bool = True,
    seed: int = 0,
    ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """``k`` folds; each sample is in exactly one validation fold, no group on both sides.

    Args:
        data: a :class:`Dataset` (labels, ids and subjects taken from it) or a label array.
        k: number of folds.
        groups: group (subject) per sample; default the dataset's subjects when it has them.
        stratify: keep class ratios per fold (single-label classification only).
        seed: shuffling seed.
        ids: sample ids when ``data`` is a label array (default ``"0"``, ``"1"``, ...).

    Returns:
        One dict per fold: ``fold``, ``k``, ``method``, ``seed``, ``train``/``val`` (ids) and
        ``train_indices``/``val_indices``.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    sample_ids, labels, group_array = _inputs(data, groups, ids)
    n = len(sample_ids)
    if k < 2:
        raise DatasetError(f"k must be at least 2, got {k}")
    units = n if group_array is None else len(np.unique(group_array))
    if k > units:
        what = "samples" if group_array is None else "groups"
        raise DatasetError(f"cannot make {k} folds from {units} {what}")
    strata = _strata(labels, stratify)
    x = np.zeros((n, 1))
    if group_array is not None and strata is not None:
        splitter: Any = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(x, strata, group_array)
    elif group_array is not None:
        try:
            splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        except TypeError:  # scikit-learn < 1.6 cannot shuffle GroupKFold: shuffle via strata
            splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(x, np.zeros(n, dtype=int), group_array)
    elif strata is not None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(x, strata)
    else:
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(x)
    method = type(splitter).__name__
    return [
        _fold_record(sample_ids, train, val, method, seed, fold=i, k=k)
        for i, (train, val) in enumerate(folds)
    ]


def train_val_split(
    data: Dataset | Sequence[Any] | np.ndarray,
    val_fraction: float = 0.2,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    stratify: bool = True,
    seed: int = 0,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """One train/validation split with about ``val_fraction`` of the samples in validation.

    Grouped and stratified at once, the split is fold 0 of ``round(1 / val_fraction)``
    stratified group folds, so the fraction is rounded to ``1/n`` (0.2 -> 5 folds).
    """
    from sklearn.model_selection import (
        GroupShuffleSplit,
        ShuffleSplit,
        StratifiedGroupKFold,
        StratifiedShuffleSplit,
    )

    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    sample_ids, labels, group_array = _inputs(data, groups, ids)
    n = len(sample_ids)
    strata = _strata(labels, stratify)
    x = np.zeros((n, 1))
    if group_array is not None and strata is not None:
        folds = max(2, round(1.0 / val_fraction))
        splitter: Any = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        method = f"StratifiedGroupKFold(n_splits={folds}) fold 0"
        train, val = next(splitter.split(x, strata, group_array))
    elif group_array is not None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        method = "GroupShuffleSplit"
        train, val = next(splitter.split(x, groups=group_array))
    elif strata is not None:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        method = "StratifiedShuffleSplit"
        try:
            train, val = next(splitter.split(x, strata))
        except ValueError as exc:  # a class too small to appear on both sides
            raise DatasetError(f"cannot stratify this split: {exc}") from None
    else:
        splitter = ShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        method = "ShuffleSplit"
        train, val = next(splitter.split(x))
    return _fold_record(sample_ids, train, val, method, seed, val_fraction=float(val_fraction))


def save_splits(path: str | Path, splits: dict[str, Any] | list[dict[str, Any]]) -> Path:
    """Write one split or a list of folds as JSON, atomically."""
    path = Path(path)
    folds = [splits] if isinstance(splits, dict) else list(splits)
    if not folds or any("train" not in f or "val" not in f for f in folds):
        raise DatasetError("splits must have 'train' and 'val' id lists", path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "split" if isinstance(splits, dict) else "kfold",
        "method": folds[0].get("method"),
        "seed": folds[0].get("seed"),
        "folds": folds,
    }
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    return path


def load_splits(path: str | Path) -> dict[str, Any] | list[dict[str, Any]]:
    """Read what :func:`save_splits` wrote: one split dict or the list of folds."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError("split file does not exist", path)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"not valid JSON ({exc})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DatasetError(f'not a medlens split file (no "format": "{FORMAT}")', path)
    if payload.get("version") != VERSION:
        raise DatasetError(f"unsupported split file version {payload.get('version')!r}", path)
    folds = payload.get("folds")
    if not isinstance(folds, list) or not folds:
        raise DatasetError("split file has no folds", path)
    for i, fold in enumerate(folds):
        if not isinstance(fold, dict) or not all(
            isinstance(fold.get(key), list) for key in ("train", "val")
        ):
            raise DatasetError(f"fold {i} lacks 'train'/'val' id lists", path)
        if set(fold["train"]) & set(fold["val"]):
            raise DatasetError(f"fold {i} has samples on both sides", path)
    return folds[0] if payload.get("kind") == "split" else folds


def split_indices(dataset: Dataset, split: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices of ``dataset`` for a split, matched by sample id.

    Ids, not stored indices, decide: a split still applies when the dataset lists its files in
    another order, and an id the dataset lacks is an error rather than a silent shift.
    """
    position = {sample_id: i for i, sample_id in enumerate(dataset.ids())}
    out = []
    for side in ("train", "val"):
        unknown = [i for i in split[side] if i not in position]
        if unknown:
            more = ", ..." if len(unknown) > 3 else ""
            raise DatasetError(
                f"{len(unknown)} {side} ids of the split are not in the dataset "
                f"({', '.join(map(str, unknown[:3]))}{more})",
                dataset.source,
            )
        out.append(np.asarray([position[i] for i in split[side]], dtype=np.int64))
    return out[0], out[1]
