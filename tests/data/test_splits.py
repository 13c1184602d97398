"""Splits: grouped (no subject on both sides), stratified, seeded, saved with ids."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlens.data import (
    HC18Dataset,
    MedMNISTDataset,
    kfold_splits,
    load_splits,
    save_splits,
    split_indices,
    train_val_split,
)
from medlens.errors import DatasetError


def _no_shared_groups(split, groups_by_id):
    train = {groups_by_id[i] for i in split["train"]}
    val = {groups_by_id[i] for i in split["val"]}
    return not (train & val)


@pytest.mark.realdata
def test_hc18_folds_keep_subjects_together(hc18_root):
    ds = HC18Dataset(hc18_root)  # ids and subjects only: no image is read
    group_of = dict(zip(ds.ids(), ds.subjects(), strict=True))
    folds = kfold_splits(ds, 5, seed=3)
    assert len(folds) == 5 and folds[0]["method"] == "GroupKFold"  # segmentation: no strata
    seen = []
    for fold in folds:
        assert _no_shared_groups(fold, group_of)
        assert len(fold["train"]) + len(fold["val"]) == 503
        seen += fold["val"]
    assert sorted(seen) == sorted(ds.ids())  # every image validated exactly once
    split = train_val_split(ds, 0.2, seed=1)
    assert _no_shared_groups(split, group_of) and split["method"] == "GroupShuffleSplit"
    assert 0.1 < len(split["val"]) / 503 < 0.3


def test_stratified_group_folds():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(60), 3)
    labels = np.repeat(rng.integers(0, 2, 60), 3)
    folds = kfold_splits(labels, 4, groups=groups, seed=0)
    assert folds[0]["method"] == "StratifiedGroupKFold"
    group_of = {str(i): g for i, g in enumerate(groups)}
    for fold in folds:
        assert _no_shared_groups(fold, group_of)
        assert abs(labels[fold["val_indices"]].mean() - labels.mean()) < 0.12
    split = train_val_split(labels, 0.25, groups=groups, seed=0)
    assert split["method"].startswith("StratifiedGroupKFold(n_splits=4)")
    assert _no_shared_groups(split, group_of)


def test_seeds_reproduce_and_differ():
    labels = np.arange(100) % 3
    a = kfold_splits(labels, 5, seed=7)
    assert a == kfold_splits(labels, 5, seed=7)
    assert a != kfold_splits(labels, 5, seed=8)
    assert train_val_split(labels, seed=1) == train_val_split(labels, seed=1)
    assert train_val_split(labels, seed=1)["val"] != train_val_split(labels, seed=2)["val"]
    groups = np.arange(100) // 4
    assert kfold_splits(labels, 5, groups=groups, stratify=False, seed=1) != kfold_splits(
        labels, 5, groups=groups, stratify=False, seed=2
    )


@pytest.mark.realdata
def test_stratification_keeps_class_ratio(medmnist_dir):
    ds = MedMNISTDataset(medmnist_dir / "breastmnist.npz")
    labels = ds.labels()
    folds = kfold_splits(ds, 5, seed=0)
    assert folds[0]["method"] == "StratifiedKFold"  # MedMNIST has no subjects
    for fold in folds:
        assert abs(labels[fold["val_indices"]].mean() - labels.mean()) < 0.01
    split = train_val_split(ds, 0.2, seed=0)
    assert split["method"] == "StratifiedShuffleSplit"
    assert abs(labels[split["val_indices"]].mean() - labels.mean()) < 0.01
    unstratified = kfold_splits(ds, 5, stratify=False, seed=0)
    assert unstratified[0]["method"] == "KFold"


def test_multilabel_falls_back_to_plain_kfold():
    labels = np.random.default_rng(0).integers(0, 2, (30, 4)).astype(np.float32)
    assert kfold_splits(labels, 3)[0]["method"] == "KFold"


def test_save_load_roundtrip(tmp_path):
    labels = np.arange(20) % 2
    ids = [f"case{i:02d}" for i in range(20)]
    folds = kfold_splits(labels, 4, ids=ids, seed=5)
    path = save_splits(tmp_path / "splits" / "folds.json", folds)
    payload = json.loads(path.read_text())
    assert payload["method"] == "StratifiedKFold" and payload["seed"] == 5
    assert payload["folds"][0]["val"][0].startswith("case")
    assert load_splits(path) == folds
    single = train_val_split(labels, 0.3, ids=ids, seed=2)
    save_splits(tmp_path / "one.json", single)
    assert load_splits(tmp_path / "one.json") == single


def test_split_indices_follow_ids(tmp_path):
    class Fake:
        source = tmp_path

        def ids(self):
            return ["c", "a", "b", "d"]

    train, val = split_indices(Fake(), {"train": ["a", "b"], "val": ["d"]})
    assert train.tolist() == [1, 2] and val.tolist() == [3]
    with pytest.raises(DatasetError, match="not in the dataset"):
        split_indices(Fake(), {"train": ["a", "zz"], "val": []})


def test_bad_requests_and_files(tmp_path):
    with pytest.raises(DatasetError, match="at least 2"):
        kfold_splits(np.zeros(10, int), 1)
    with pytest.raises(DatasetError, match="from 3 groups"):
        kfold_splits(np.zeros(9, int), 5, groups=np.arange(9) // 3)
    with pytest.raises(DatasetError, match="between 0 and 1"):
        train_val_split(np.zeros(10, int), 1.5)
    bad = tmp_path / "bad.json"
    bad.write_text('{"folds": []}')
    with pytest.raises(DatasetError, match="not a medlens split file"):
        load_splits(bad)
    bad.write_text("{")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_splits(bad)
    leaky = {"train": ["a"], "val": ["a"], "method": "x", "seed": 0}
    save_splits(bad, [leaky])
    with pytest.raises(DatasetError, match="both sides"):
        load_splits(bad)
