"""Detection readers: BCCD (Pascal VOC) for real, tiny COCO/CSV/LUNA16 folders, bad inputs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from medlens.data import (
    BoxCSVDataset,
    COCODataset,
    LUNA16Dataset,
    VOCDataset,
    boxes_index_to_world,
    boxes_world_to_index,
    detect_format,
    open_dataset,
    train_val_split,
    voc_splits,
)
from medlens.errors import DatasetError, ImageReadError, MedlensError


def _one_line(info, path: Path) -> str:
    """The error's message, checked to be one line naming ``path``."""
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


def _refused(named: Path, match: str, make=open_dataset, target=None, **kwargs) -> str:
    """Opening ``target`` (default ``named``) and reading every sample fails with a one-line
    error naming ``named`` (some problems show only with the image)."""
    with pytest.raises(MedlensError, match=match) as info:
        list(make(target or named, **kwargs))
    return _one_line(info, named)


# ----------------------------------------------------------------------------- real BCCD data
@pytest.fixture(scope="module")
def bccd(real) -> Path:
    return real("bccd")


def _xml_counts(paths) -> Counter:
    counts: Counter = Counter()
    for path in paths:
        counts.update(o.findtext("name").strip() for o in ET.parse(path).getroot().iter("object"))
    return counts


def test_bccd_voc_splits_and_class_counts(bccd):
    assert detect_format(bccd) == "voc" and voc_splits(bccd) == ["train", "val", "trainval"]
    everything = open_dataset(bccd)
    assert isinstance(everything, VOCDataset) and everything.task == "detection"
    assert len(everything) == 292 and everything.class_names == ["Platelets", "RBC", "WBC"]
    assert everything.labels() is None and not everything.has_subjects()
    assert everything.class_counts() == dict(_xml_counts((bccd / "Annotations").glob("*.xml")))
    train, val = open_dataset(bccd, split="train"), open_dataset(bccd, split="val")
    assert (len(train), len(val)) == (205, 87)
    assert train.class_names == val.class_names == everything.class_names
    assert set(train.ids()).isdisjoint(val.ids())
    assert set(train.ids()) | set(val.ids()) == set(everything.ids())
    for split in (train, val):
        xmls = [bccd / "Annotations" / f"{i}.xml" for i in split.ids()]
        assert split.class_counts() == dict(_xml_counts(xmls))
    split = train_val_split(everything, 0.3, seed=1)  # splitting needs no per-sample label
    assert len(split["train"]) + len(split["val"]) == 292
    with pytest.raises(DatasetError, match=r"no split 'test'.*\['train', 'trainval', 'val'\]"):
        open_dataset(bccd, split="test")


def test_bccd_boxes_inside_images_and_round_trip(bccd):
    dataset = open_dataset(bccd, split="val")
    total = Counter()
    for sample in dataset:
        boxes, labels = sample.fields["boxes"], sample.label
        assert boxes.dtype == np.float32 and labels.dtype == np.int64
        assert boxes.shape == (len(labels), 4) and sample.kinds["boxes"] == "boxes"
        assert sample.image.leading == ("channel",) and sample.image.num_channels == 3
        width, height = sample.image.size
        assert np.all(boxes[:, :2] >= -0.5) and np.all(boxes[:, 2] <= width - 0.5)
        assert np.all(boxes[:, 3] <= height - 0.5) and np.all(boxes[:, 2:] > boxes[:, :2])
        assert not sample.meta["clipped"].any() and sample.meta["ignore"].shape == labels.shape
        world = sample.meta["boxes_world"]
        np.testing.assert_allclose(world, boxes, atol=1e-4)  # a photo: world = pixels
        np.testing.assert_allclose(boxes_world_to_index(sample.image, world), boxes, atol=1e-4)
        moved = sample.image.replace(spacing=(0.5, 0.25), origin=(3.0, -7.0))
        there = boxes_index_to_world(moved, boxes)
        np.testing.assert_allclose(boxes_world_to_index(moved, there), boxes, atol=1e-4)
        total.update(dataset.class_names[i] for i in labels)
    xmls = [bccd / "Annotations" / f"{i}.xml" for i in dataset.ids()]
    assert total == _xml_counts(xmls)
    # the VOC convention: 1-based inclusive pixels xmin..xmax -> [xmin - 1.5, xmax - 0.5]
    first = ET.parse(xmls[0]).getroot().find("object/bndbox")
    corners = [float(first.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
    expected = [corners[0] - 1.5, corners[1] - 1.5, corners[2] - 0.5, corners[3] - 0.5]
    np.testing.assert_allclose(dataset[0].fields["boxes"][0], expected)


# ------------------------------------------------------------------------------ Pascal VOC
def _voc(root: Path, files, objects: dict[str, list[tuple]], size=(20, 16)) -> Path:
    """A VOC folder: ``{stem: [(name, xmin, ymin, xmax, ymax, difficult), ...]}``."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for stem, boxes in objects.items():
        files.png(root / "JPEGImages" / f"{stem}.png", np.zeros(size[::-1], np.uint8))
        width, height = size
        parts = [
            f"<annotation><filename>{stem}.png</filename><size><width>{width}</width>"
            f"<height>{height}</height><depth>1</depth></size>"
        ]
        for name, *box, difficult in boxes:
            keys = ("xmin", "ymin", "xmax", "ymax")
            corners = "".join(f"<{k}>{v}</{k}>" for k, v in zip(keys, box, strict=True))
            parts.append(
                f"<object><name>{name}</name><difficult>{difficult}</difficult>"
                f"<bndbox>{corners}</bndbox></object>"
            )
        (root / "Annotations" / f"{stem}.xml").write_text("".join(parts) + "</annotation>")
    return root


def test_voc_difficult_negatives_and_bad_input(tmp_path, files):
    root = _voc(tmp_path / "voc", files, {"a": [("cell", 3, 4, 3, 9, 1)], "b": []})
    dataset = open_dataset(root)
    a, b = dataset[0], dataset[1]
    np.testing.assert_allclose(a.fields["boxes"], [[1.5, 2.5, 2.5, 8.5]])  # one pixel wide
    assert a.meta["ignore"].tolist() == [True] and b.meta["ignore"].shape == (0,)
    assert b.fields["boxes"].shape == (0, 4) and b.label.shape == (0,)
    assert dataset.class_names == ["cell"]
    _refused(root, r"object 1: class 'cell' is not among the classes \['rbc'\]", classes=["rbc"])
    (root / "JPEGImages" / "b.png").unlink()
    _refused(root, "1 of 2 images are missing", VOCDataset)
    files.png(root / "JPEGImages" / "b.png", np.zeros((5, 5), np.uint8))
    xml = root / "Annotations" / "b.xml"
    _refused(xml, "states image size 20x16, but b.png is 5x5", VOCDataset, root)
    (root / "Annotations" / "b.xml").write_text("")
    with pytest.raises(ImageReadError) as info:
        open_dataset(root)
    _one_line(info, root / "Annotations" / "b.xml")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nzzz\n")
    listing = root / "ImageSets" / "Main" / "train.txt"
    _refused(listing, "line 2: no Annotations/zzz.xml", VOCDataset, root, split="train")


# -------------------------------------------------------------------------------------- COCO
def _coco(root: Path, files, **changes) -> Path:
    files.png(root / "images" / "x.png", np.zeros((10, 12), np.uint8))
    files.png(root / "images" / "y.png", np.zeros((10, 12), np.uint8))
    spec = {
        "images": [
            {"id": 7, "file_name": "x.png", "width": 12, "height": 10},
            {"id": 8, "file_name": "y.png"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [2, 1, 4, 5]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 12, 10], "iscrowd": 1},
        ],
        "categories": [{"id": 3, "name": "b"}, {"id": 1, "name": "z"}],
    }
    spec.update(changes)
    path = root / "annotations" / "instances.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


def test_coco_boxes_category_order_and_crowds(tmp_path, files):
    path = _coco(tmp_path / "coco", files)
    assert detect_format(path) == "coco" and detect_format(path.parent) == "coco"
    dataset = open_dataset(path)
    assert isinstance(dataset, COCODataset) and dataset.class_names == ["z", "b"]
    x, y = dataset[0], dataset[1]
    np.testing.assert_allclose(x.fields["boxes"], [[1.5, 0.5, 5.5, 5.5], [-0.5, -0.5, 11.5, 9.5]])
    assert x.label.tolist() == [1, 0] and x.meta["ignore"].tolist() == [False, True]
    assert not x.meta["clipped"].any() and y.fields["boxes"].shape == (0, 4)
    assert dataset.ids() == ["x.png", "y.png"]


def _annotation(**values) -> dict:
    """A COCO change: one annotation (id 5) on image 7 in category 3, with ``values``."""
    return {"annotations": [{"id": 5, "image_id": 7, "category_id": 3, **values}]}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (_annotation(bbox=[1, 1, 0, 2]), "annotation 5: box .* has zero or negative size"),
        (_annotation(bbox=[1, 1, -2, 2]), "annotation 5: box .* zero or negative size"),
        (_annotation(bbox=[1, "NaN", 3, 2]), r"annotation 5: bbox .* is not \[x, y, w, h\]"),
        (_annotation(bbox=[1, 1, 2, 2], image_id=9), "annotation 5: image_id 9 is not listed"),
        (_annotation(bbox=[1, 1, 2, 2], category_id=4), "annotation 5: category_id 4 unknown"),
        (_annotation(bbox=[40, 1, 2, 2]), "annotation 5: box .* lies outside the 12x10 image"),
        ({"images": []}, "'images' is empty"),
        ({"images": [{"id": 7, "file_name": "gone.png"}]}, r"images are missing \(image 7"),
    ],
)
def test_coco_bad_input(tmp_path, files, change, match):
    path = _coco(tmp_path / "coco", files, **change)
    _refused(path, match)


def test_coco_non_finite_and_empty_files(tmp_path, files):
    path = _coco(tmp_path / "coco", files)
    path.write_text(path.read_text().replace("[2, 1, 4, 5]", "[2, NaN, 4, 5]"))
    _refused(path, "annotation 1: box .* non-finite")
    path.write_text("")
    _refused(path, "annotation file is empty")
    path.write_text("[1, 2]")
    _refused(path, "expected a JSON object")


# ------------------------------------------------------------------------------ CSV of boxes
def _box_csv(root: Path, files, rows: str, header="image,x1,y1,x2,y2,label") -> Path:
    for name in ("a.png", "b.png"):
        files.png(root / name, np.zeros((10, 20), np.uint8))
    path = root / "boxes.csv"
    path.write_text(header + "\n" + rows)
    return path


def test_box_csv_2d_pixels_negatives_and_clipping(tmp_path, files):
    path = _box_csv(tmp_path / "t", files, "a.png,2,3,6,8,wbc\na.png,15,1,25,4,rbc\nb.png,,,,,\n")
    assert detect_format(path) == "boxes" and detect_format(path.parent) == "boxes"
    dataset = open_dataset(path.parent)
    assert isinstance(dataset, BoxCSVDataset) and dataset.ndim == 2
    assert dataset.class_names == ["rbc", "wbc"] and dataset.ids() == ["a.png", "b.png"]
    a, b = dataset[0], dataset[1]
    np.testing.assert_allclose(a.fields["boxes"], [[1.5, 2.5, 5.5, 7.5], [14.5, 0.5, 19.5, 3.5]])
    assert a.label.tolist() == [1, 0] and a.meta["clipped"].tolist() == [False, True]
    assert a.meta["notes"] == ["clipped to the image: line 3"] and "ignore" not in a.meta
    np.testing.assert_allclose(a.meta["boxes_world"][1], [14.5, 0.5, 19.5, 3.5])
    assert b.fields["boxes"].shape == (0, 4) and b.label.shape == (0,)
    assert BoxCSVDataset(path, classes=["wbc", "rbc", "plt"])[0].label.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ("a.png,2,3,2,8,x\n", "line 2: box .* has zero or negative size"),
        ("a.png,6,3,2,8,x\n", "line 2: box .* has zero or negative size"),
        ("a.png,2,3,nan,8,x\n", "line 2: x2 is 'nan', not a finite number"),
        ("a.png,2,3,inf,8,x\n", "line 2: x2 is 'inf', not a finite number"),
        ("a.png,2,3,six,8,x\n", "line 2: x2 is 'six', not a number"),
        ("a.png,2,,6,8,x\n", "line 2: box cells y1 are empty"),
        ("a.png,30,3,40,8,x\n", "line 2: box .* lies outside the 20x10 image a.png"),
        ("a.png,2,-9,6,-1,x\n", "line 2: box .* lies outside"),
        ("b.png,2,3,6,8,x\nc.png,2,3,6,8,x\n", r"1 of 2 images are missing \(line 3: c.png\)"),
        ("a.png,2,3,6,8,x\n", r"line 2: class 'x' is not among the classes \['y'\]"),
        ("", "CSV has a header but no rows"),
    ],
)
def test_box_csv_bad_input(tmp_path, files, rows, match):
    path = _box_csv(tmp_path / "t", files, rows)
    _refused(path, match, classes=["y"] if "classes" in match else None)


def test_box_csv_empty_file_and_units(tmp_path, files):
    path = _box_csv(tmp_path / "t", files, "a.png,2,3,6,8,x\n")
    _refused(path, "unknown units 'inch'", BoxCSVDataset, units="inch")
    path.write_text("image,x1,y1,x2,y2,units\na.png,2,3,6,8,cm\n")
    _refused(path, "line 2: units 'cm' is neither")
    path.write_text("")
    _refused(path, "CSV has no header row", BoxCSVDataset)


def _oblique_nifti(path: Path) -> Path:
    """A (z, y, x) = (6, 8, 10) NIfTI whose axes are permuted and flipped, with spacing and
    origin: index i runs posterior at 0.7 mm, j to the left at 0.9 mm, k up at 2.5 mm (RAS)."""
    import nibabel as nib

    affine = np.array(
        [[0.0, -0.9, 0.0, 10.0], [-0.7, 0.0, 0.0, -20.0], [0.0, 0.0, 2.5, 30.0], [0, 0, 0, 1]]
    )
    array = np.random.default_rng(0).normal(size=(10, 8, 6)).astype(np.float32)  # (x, y, z)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _world_box(path: Path, index_box) -> list[float]:
    """SimpleITK's world (LPS) box of an index box: the oracle for medlens's geometry."""
    import itertools

    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    low, high = index_box[:3], index_box[3:]
    corners = [
        [float(high[d] if pick[d] else low[d]) for d in range(3)]
        for pick in itertools.product((0, 1), repeat=3)
    ]
    points = np.array([image.TransformContinuousIndexToPhysicalPoint(c) for c in corners])
    return [*points.min(axis=0), *points.max(axis=0)]


def test_box_csv_3d_mm_on_a_permuted_flipped_volume(tmp_path):
    volume = _oblique_nifti(tmp_path / "t" / "vol.nii.gz")
    index_box = [1.5, 2.0, 0.5, 6.5, 5.0, 3.5]
    world = _world_box(volume, index_box)
    pixels = "vol.nii.gz,2,2.5,1,3,4.5,2,pixels,b"  # edges (2, 2.5, 1) .. (3, 4.5, 2)
    in_mm = "vol.nii.gz," + ",".join(map(str, world)) + ",,a"
    rows = ["image,x1,y1,z1,x2,y2,z2,units,label", in_mm, pixels]
    (tmp_path / "t" / "boxes.csv").write_text("\n".join(rows) + "\n")
    dataset = open_dataset(tmp_path / "t" / "boxes.csv", units="mm")
    assert dataset.ndim == 3 and dataset.class_names == ["a", "b"]
    sample = dataset[0]
    assert sample.image.spacing == pytest.approx((0.7, 0.9, 2.5))
    np.testing.assert_allclose(sample.fields["boxes"][0], index_box, atol=1e-4)
    np.testing.assert_allclose(sample.fields["boxes"][1], [1.5, 2, 0.5, 2.5, 4, 1.5], atol=1e-5)
    np.testing.assert_allclose(sample.meta["boxes_world"][0], world, atol=1e-4)
    np.testing.assert_allclose(
        sample.meta["boxes_world"][1], _world_box(volume, [1.5, 2, 0.5, 2.5, 4, 1.5]), atol=1e-4
    )
    flipped = sample.image.reorient("RAS")  # the world boxes stay right on another grid
    back = boxes_index_to_world(flipped, boxes_world_to_index(flipped, sample.meta["boxes_world"]))
    np.testing.assert_allclose(back, sample.meta["boxes_world"], atol=1e-4)


def test_box_csv_3d_boxes_on_a_2d_image_are_refused(tmp_path, files):
    files.png(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    path = tmp_path / "boxes.csv"
    path.write_text("image,x1,y1,z1,x2,y2,z2,label\na.png,1,1,1,2,2,2,a\n")
    _refused(path, "3D boxes, but image a.png is 2D")


# ------------------------------------------------------------------------------------ LUNA16
def _luna(root: Path, files, rows: list[str], *, simulated: bool = True) -> Path:
    spacing = (0.8, 0.8, 2.0)
    for uid in ("s1", "s2", "s3"):
        files.nifti(root / "images" / f"{uid}.nii.gz", np.zeros((10, 20, 20), np.int16), spacing)
    header = "seriesuid,coordX,coordY,coordZ,diameter_mm,x1,y1,z1,x2,y2,z2,label"
    (root / "annotations.csv").write_text("\n".join([header, *rows]) + "\n")
    (root / "series.csv").write_text(
        "seriesuid,source,subject,lesions,shape,spacing\ns1,a.nii,p1,1,,\ns2,a.nii,p1,1,,\n"
        "s3,b.nii,p2,0,,\n"
    )
    if simulated:
        info = {"name": "sim", "simulated": True, "annotations": "annotations.csv"}
        files.json(root / "dataset.json", info)
    files.png(root / "masks" / "s1.png", np.zeros((2, 2), np.uint8))  # the simulator has masks/
    return root


def test_luna16_cubes_corners_negatives_and_subjects(tmp_path, files):
    # the NIfTI is RAS-diagonal: LPS x = -0.8 * i, y = -0.8 * j, z = 2 * k
    rows = ["s1,-8,-8,10,3.2,,,,,,,", "s2,-8,-8,10,3.2,-9.6,-9.6,8,-6.4,-6.4,12,nodule"]
    root = _luna(tmp_path / "sim", files, rows)
    assert detect_format(root) == "luna" and detect_format(root / "annotations.csv") == "luna"
    for path in (root, root / "annotations.csv", root / "dataset.json"):
        dataset = open_dataset(path)
        assert isinstance(dataset, LUNA16Dataset) and dataset.ndim == 3
    assert dataset.meta["simulated"] is True and dataset.simulated and dataset.modality is None
    assert dataset.class_names == ["lesion", "nodule"] and dataset.ids() == ["s1", "s2", "s3"]
    assert dataset.subjects() == ["p1", "p1", "p2"] and dataset.has_subjects()
    s1, s2, s3 = dataset[0], dataset[1], dataset[2]
    np.testing.assert_allclose(s1.fields["boxes"], [[8, 8, 4.2, 12, 12, 5.8]], atol=1e-5)
    assert s1.meta["diameter_mm"] == pytest.approx([3.2])
    np.testing.assert_allclose(s1.meta["boxes_world"], [[-9.6, -9.6, 8.4, -6.4, -6.4, 11.6]])
    np.testing.assert_allclose(s2.fields["boxes"], [[8, 8, 4, 12, 12, 6]], atol=1e-5)
    assert s2.label.tolist() == [1] and s2.meta["series"]["source"] == "a.nii"
    assert s3.fields["boxes"].shape == (0, 6) and s3.label.shape == (0,)
    assert s3.image.spatial_shape == (10, 20, 20)
    split = train_val_split(dataset, 0.5, seed=0)
    assert {"s1", "s2"} <= set(split["train"]) or {"s1", "s2"} <= set(split["val"])


def test_luna16_real_layout_mhd_volumes(tmp_path, files):
    import SimpleITK as sitk

    root = tmp_path / "luna"
    volume = sitk.GetImageFromArray(np.zeros((8, 16, 16), np.int16))
    volume.SetSpacing((0.5, 0.5, 1.0))
    volume.SetOrigin((-4.0, -4.0, 0.0))
    (root / "subset0").mkdir(parents=True)
    sitk.WriteImage(volume, str(root / "subset0" / "1.2.3.mhd"))
    (root / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,0,0,4,2\n"
    )
    dataset = open_dataset(root)
    assert dataset.modality == "CT" and dataset.meta == {"format": "luna"}
    assert not dataset.has_subjects() and dataset.ids() == ["1.2.3"]
    sample = dataset[0]
    np.testing.assert_allclose(sample.fields["boxes"], [[6, 6, 3, 10, 10, 5]], atol=1e-5)


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        (["s9,1,1,1,2,,,,,,,"], r"1 rows name a series without a volume \(line 2: s9\)"),
        (["s1,-8,-8,10,0,,,,,,,"], "line 2: diameter_mm 0 is not positive"),
        (["s1,-8,-8,10,,,,,,,,"], "line 2: needs coordX/Y/Z and diameter_mm, or x1..z2"),
        (["s1,-8,-8,nan,3,,,,,,,"], "line 2: coordz is 'nan', not a finite number"),
        (["s1,,,,,-1,-1,1,-1,-2,2,"], "line 2: box .* has zero or negative size"),
        (["s1,900,900,10,3,,,,,,,"], "line 2: box .* lies outside the 20x20x10 image"),
        (["s1,-8,-8,10,3,,,,,,,x"], r"line 2: class 'x' is not among the classes \['y'\]"),
        ([], "CSV has a header but no rows"),
    ],
)
def test_luna16_bad_input(tmp_path, files, rows, match):
    root = _luna(tmp_path / "sim", files, rows)
    _refused(root / "annotations.csv", match, classes=["y"] if "classes" in match else None)


def test_luna16_partly_outside_is_clipped(tmp_path, files):
    root = _luna(tmp_path / "sim", files, ["s1,-1,-8,10,4,,,,,,,"], simulated=False)
    sample = open_dataset(root)[0]
    assert sample.meta["clipped"].tolist() == [True] and "line 2" in sample.meta["notes"][0]
    np.testing.assert_allclose(sample.fields["boxes"][0, [0, 3]], [-0.5, 3.75], atol=1e-5)
    np.testing.assert_allclose(sample.meta["boxes_world"][0, [0, 3]], [-3.0, 0.4], atol=1e-5)
