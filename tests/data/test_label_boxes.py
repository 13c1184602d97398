"""Boxes from label maps: the Decathlon hippocampus and TotalSegmentator's organs for real
(cross-checked with SimpleITK's label shape statistics), tiny folders for pieces and negatives,
and detection trained on a segmentation dataset."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from medlens.data import (
    LabelBoxDataset,
    PairedFolderDataset,
    boxes_index_to_world,
    open_dataset,
    open_detection,
)
from medlens.errors import DatasetError

from .conftest import write_png


def _sitk_boxes(label_path: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per label value: SimpleITK's bounding box as continuous index corners (voxels a..b span
    a - 0.5 .. b + 0.5) and those corners in world (LPS) millimetres."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(label_path))
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(image)
    out = {}
    for value in stats.GetLabels():
        box = stats.GetBoundingBox(value)  # start..., size...
        n = len(box) // 2
        low = np.array(box[:n], float) - 0.5
        high = np.array(box[:n], float) + np.array(box[n:], float) - 0.5
        world = [image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in (low, high)]
        w = np.array(world)
        out[int(value)] = (np.concatenate([low, high]), np.concatenate([w.min(0), w.max(0)]))
    return out


def test_hippocampus_structures_get_one_box_each_as_simpleitk_bounds_them(real):
    root = real("msd_hippocampus")
    dataset = open_detection(root)
    assert isinstance(dataset, LabelBoxDataset) and dataset.task == "detection"
    assert dataset.class_names == ["Anterior", "Posterior"] and dataset.ndim == 3
    assert len(dataset) == 200 and dataset.meta["boxes_from_labels"] == "class"
    counts = dataset.class_counts()
    assert counts == {"Anterior": 200, "Posterior": 200}  # every case has both structures
    for index in (0, 77, 199):
        sample = dataset[index]
        entry = open_dataset(root).entries[index]
        reference = _sitk_boxes(entry.mask_path)
        assert sorted(reference) == [1, 2]
        for box, world, label in zip(
            sample.fields["boxes"], sample.meta["boxes_world"], sample.label, strict=True
        ):
            want_index, want_world = reference[int(label) + 1]
            np.testing.assert_allclose(box, want_index, atol=1e-4)
            np.testing.assert_allclose(world, want_world, atol=1e-4)
        assert sample.image.array.shape == open_dataset(root)[index].image.array.shape


def test_totalsegmentator_organs_in_a_decathlon_folder(real, tmp_path):
    """A user's layout: the CT and its TotalSegmentator label map linked into a Decathlon
    folder whose dataset.json names the 117 labels; 41 present -> 41 organ boxes."""
    ct = real("totalsegmentator", "ct_small")
    names = {}
    with (ct / "labels_total.csv").open() as handle:
        for row in csv.reader(handle):
            if row and row[0].strip().isdigit():
                names[int(row[0])] = row[1].strip()
    root = tmp_path / "organs"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "imagesTr" / "ct_0000.nii.gz").symlink_to(ct / "example_ct_sm.nii.gz")
    (root / "labelsTr" / "ct.nii.gz").symlink_to(ct / "example_seg.nii.gz")
    labels = {"0": "background", **{str(v): n for v, n in sorted(names.items()) if v > 0}}
    case = {"image": "./imagesTr/ct.nii.gz", "label": "./labelsTr/ct.nii.gz"}
    spec = {"name": "organs", "modality": {"0": "CT"}, "labels": labels, "training": [case]}
    (root / "dataset.json").write_text(json.dumps(spec))
    dataset = open_detection(root)
    sample = dataset[0]
    reference = _sitk_boxes(ct / "example_seg.nii.gz")
    assert len(reference) == 41 and len(sample.label) == 41
    for box, world, label in zip(
        sample.fields["boxes"], sample.meta["boxes_world"], sample.label, strict=True
    ):
        value = int(label) + 1  # the labels are 1..117 in order: class k is value k + 1
        assert dataset.class_names[int(label)] == names[value]
        np.testing.assert_allclose(box, reference[value][0], atol=1e-4)
        np.testing.assert_allclose(world, reference[value][1], atol=1e-3)


def _pieces(tmp_path: Path) -> Path:
    """Two 2D cases: case a holds two label-1 blobs, one label-2 blob and a 2-pixel speck of
    label 1; case b's mask is empty (a negative)."""
    root = tmp_path / "pieces"
    mask = np.zeros((32, 40), np.uint8)
    mask[2:8, 3:9] = 1
    mask[20:30, 25:37] = 1
    mask[12:16, 10:20] = 2
    mask[30, 2:4] = 1  # a speck
    image = np.full((32, 40), 50, np.uint8) + 100 * (mask > 0).astype(np.uint8)
    write_png(root / "images" / "a.png", image)
    write_png(root / "masks" / "a_mask.png", mask)
    write_png(root / "images" / "b.png", np.full((32, 40), 50, np.uint8))
    write_png(root / "masks" / "b_mask.png", np.zeros((32, 40), np.uint8))
    return root


def test_pieces_speck_threshold_and_negatives(tmp_path):
    root = _pieces(tmp_path)
    source = PairedFolderDataset(root, class_names=["background", "lesion", "cyst"])
    per_class = LabelBoxDataset(source, per="class")
    a, b = per_class[0], per_class[1]
    assert per_class.class_names == ["lesion", "cyst"] and per_class.ndim == 2
    # one box of every label-1 pixel (x 2..36, y 2..30), one of label 2
    np.testing.assert_array_equal(
        a.fields["boxes"], [[1.5, 1.5, 36.5, 30.5], [9.5, 11.5, 19.5, 15.5]]
    )
    assert a.label.tolist() == [0, 1]
    assert b.fields["boxes"].shape == (0, 4) and b.label.shape == (0,)  # a valid negative
    pieces = LabelBoxDataset(source, per="component")
    assert pieces[0].label.tolist() == [0, 0, 0, 1]
    big = LabelBoxDataset(source, per="component", min_voxels=3)
    boxes = big[0].fields["boxes"]
    np.testing.assert_array_equal(
        boxes, [[2.5, 1.5, 8.5, 7.5], [24.5, 19.5, 36.5, 29.5], [9.5, 11.5, 19.5, 15.5]]
    )
    assert big[0].meta["box_sources"] == ["label 1 piece 1", "label 1 piece 2", "label 2 piece 4"]
    world = boxes_index_to_world(big[0].image, boxes)
    np.testing.assert_allclose(big[0].meta["boxes_world"], world)
    with pytest.raises(DatasetError, match="boxes per 'organ'"):
        LabelBoxDataset(source, per="organ")


def test_a_classification_dataset_is_refused_by_name(tmp_path):
    from medlens.testing.tiny import blobs

    data, _ = blobs(tmp_path)
    with pytest.raises(DatasetError, match="classification dataset: detection needs boxes") as info:
        open_detection(data)
    assert str(data) in str(info.value)


def test_detection_trains_on_label_maps_and_records_how(tmp_path):
    """The tiny disks (a segmentation dataset): the plan records boxes per class, a run trains,
    and evaluation reads the same boxes back through the run's plan; a bad setting is refused."""
    from medlens.tasks.registry import get_task
    from medlens.testing.tiny import disks

    data, _ = disks(tmp_path)
    task = get_task("detection")
    quiet = {"log": lambda line: None}
    settings = [
        "network.backbone=resnet10",
        "network.width=8",
        "network.fpn_channels=16",
        "batch_size=2",
        "train.batches_per_epoch=2",
        "train.val_every=1",
    ]
    plan = task.plan(data, overrides=settings, **quiet)
    assert plan.boxes_from_labels == "class" and plan.class_names == ["foreground"]
    assert plan.network["dense_weight"] == 0.0  # one box per organ: its boxes suffice
    pieces = task.plan(data, overrides=[*settings, "boxes_from_labels=component"], **quiet)
    assert pieces.boxes_from_labels == "component"
    with pytest.raises(DatasetError, match="boxes_from_labels=organ"):
        task.plan(data, overrides=["boxes_from_labels=organ"], **quiet)
    run = tmp_path / "run"
    saved_plan = plan.save(tmp_path / "plan.json")
    info = task.train(data, run, plan=saved_plan, epochs=1, progress=False, **quiet)
    assert 0.0 <= info["evaluation"]["map50"] <= 1.0
    metrics = json.loads((run / "metrics.json").read_text())  # the best epoch chosen by IoU
    assert metrics["score"] == metrics["localisation"]["all"]["iou"]
    saved = json.loads((run / "plan.json").read_text())
    assert saved["boxes_from_labels"] == "class"
    import medlens

    loaded = medlens.load_predictor(run).run
    result = task.evaluate(
        loaded, data, split="all", n_boot=0, progress=False, output=tmp_path / "eval"
    )
    assert result.metrics["n_cases"] == 6
    # scored against one box per disk, as the masks bound them, with localisation distances
    assert sum(sum(row["true"]) for row in result.metrics["per_image"]) == 6
    localisation = result.metrics["localisation"]
    assert localisation["all"]["n"] == 6 and 0.0 <= localisation["all"]["detected"] <= 1.0
    assert any(line.startswith("localisation (6 structures)") for line in result.lines)
    assert 'id="localisation"' in (tmp_path / "eval" / "report.html").read_text()
