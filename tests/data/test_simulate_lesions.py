"""Simulated 3D lesions in crops of real volumes: geometry, layout, determinism and refusals.

Small crops (``size`` 40-48) of the TotalSegmentator CT/MR volumes and a Decathlon hippocampus
MRI keep every run to a second or two. The checks compare the written files with the sources
themselves: each annotation's centre lies in its mask, the world box holds the mask's voxels, and
the image equals the same crop of the source except near the lesions.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medlens.data.lesion_render import CNR, CT_HU, insert_lesions, otsu_threshold, resolvable_mm
from medlens.data.simulate_lesions import (
    ANNOTATION_COLUMNS,
    SERIES_COLUMNS,
    parse_range,
    simulate_lesion_dataset,
)
from medlens.errors import MedlensError
from medlens.io import load_image

HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm,x1,y1,z1,x2,y2,z2,label"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _source_crop(image, source_path: Path) -> np.ndarray:
    """The same crop of the source volume, found from the output's origin."""
    source = load_image(source_path)
    np.testing.assert_allclose(image.spacing, source.spacing, atol=1e-4)
    np.testing.assert_allclose(image.direction, source.direction, atol=1e-6)
    start = source.world_to_index(np.asarray(image.origin))
    np.testing.assert_allclose(start, np.round(start), atol=1e-3)
    start = np.round(start).astype(int)[::-1]
    block = tuple(slice(a, a + n) for a, n in zip(start, image.spatial_shape, strict=True))
    return source.array[block]


@pytest.fixture(scope="module")
def ct_set(real, tmp_path_factory) -> tuple[Path, Path]:
    """Three volumes from the TotalSegmentator CT: one lesion-free, two with 1-3 lesions."""
    src = real("totalsegmentator", "ct_small")
    out = tmp_path_factory.mktemp("sim") / "ct"
    simulate_lesion_dataset(src, out, count=3, seed=7, size=48, negative_fraction=1 / 3)
    return src, out


def test_layout_columns_and_provenance(ct_set):
    src, out = ct_set
    assert (out / "annotations.csv").read_text().splitlines()[0] == HEADER
    assert ",".join(ANNOTATION_COLUMNS) == HEADER
    series = _rows(out / "series.csv")
    assert list(series[0]) == list(SERIES_COLUMNS)
    assert [r["seriesuid"] for r in series] == ["sim-0000", "sim-0001", "sim-0002"]
    for row in series:  # the image is a source, its label map is not
        assert row["source"] == "example_ct_sm.nii.gz" and row["subject"] == "example_ct_sm"
        image = load_image(out / "images" / f"{row['seriesuid']}.nii.gz")
        assert image.array.dtype == np.int16
        assert max(image.spatial_shape) <= 48
        assert row["shape"] == " ".join(map(str, image.spatial_shape))
        assert [float(s) for s in row["spacing"].split()] == pytest.approx(image.spacing)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["simulated"] is True and meta["task"] == "detection"
    assert meta["name"] == "ct_small-simulated-lesions"
    assert meta["description"].startswith("SIMULATED lesions inserted into real images")
    assert (meta["seed"], meta["count"], meta["source"]) == (7, 3, str(src))
    assert "SIMULATED" in (out / "README.txt").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_annotations_match_the_masks(ct_set):
    from scipy import ndimage

    _, out = ct_set
    series = _rows(out / "series.csv")
    rows = _rows(out / "annotations.csv")
    assert [int(r["lesions"]) for r in series].count(0) == 1  # one lesion-free volume
    assert sum(int(r["lesions"]) for r in series) == len(rows) >= 2
    for entry in series:
        uid = entry["seriesuid"]
        mask = load_image(out / "masks" / f"{uid}.nii.gz")
        mine = [r for r in rows if r["seriesuid"] == uid]
        assert int(mask.array.max()) == len(mine) == int(entry["lesions"])
        for k, row in enumerate(mine, start=1):
            assert row["label"] == "lesion"
            diameter = float(row["diameter_mm"])
            assert 3.0 <= diameter <= 30.0
            centre = np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")])
            index = np.round(mask.world_to_index(centre)).astype(int)
            np.testing.assert_allclose(mask.world_to_index(centre), index, atol=1e-3)
            assert mask.array[tuple(index[::-1])] == k  # the centre is in its lesion
            voxels = np.argwhere(mask.array == k)
            components, n = ndimage.label(mask.array == k, structure=np.ones((3, 3, 3)))
            assert n >= 1 and components[tuple(index[::-1])] > 0
            world = mask.index_to_world(voxels[:, ::-1].astype(float))
            low = np.array([float(row[c]) for c in ("x1", "y1", "z1")])
            high = np.array([float(row[c]) for c in ("x2", "y2", "z2")])
            assert np.all(world >= low - 1e-3) and np.all(world <= high + 1e-3)
            assert np.all(low <= centre) and np.all(centre <= high)
            # the ellipsoid's box is no wider than its longest axis allows (ratios <= ~2:1)
            assert np.all(high - low <= 2.2 * diameter)
            volume = len(voxels) * np.prod(mask.spacing)
            if diameter >= 4 * max(mask.spacing):  # well sampled: the volume fits the diameter
                assert volume == pytest.approx(np.pi / 6 * diameter**3, rel=0.4)


def test_images_change_only_near_lesions(ct_set, real):
    from scipy import ndimage

    src, out = ct_set
    details = _rows(out / "lesions.csv")
    for entry in _rows(out / "series.csv"):
        uid = entry["seriesuid"]
        image = load_image(out / "images" / f"{uid}.nii.gz")
        mask = load_image(out / "masks" / f"{uid}.nii.gz").array
        crop = _source_crop(image, src / entry["source"])
        change = image.array.astype(np.float64) - crop
        if entry["lesions"] == "0":
            assert not mask.any() and np.array_equal(image.array, crop)
            continue
        edge = max(float(r["edge_mm"]) for r in details if r["seriesuid"] == uid)
        spacing = np.asarray(image.spacing)[::-1]
        distance = ndimage.distance_transform_edt(mask == 0, sampling=spacing)
        far = distance > 6 * edge + np.linalg.norm(spacing)
        assert far.any() and not np.any(change[far])  # untouched away from the lesions
        for k in range(1, int(mask.max()) + 1):
            assert np.abs(change[mask == k]).mean() >= 10  # a real change, in HU


def test_same_seed_same_dataset(ct_set, real, tmp_path):
    src, out = ct_set
    again = tmp_path / "again"
    simulate_lesion_dataset(src, again, count=3, seed=7, size=48, negative_fraction=1 / 3)
    for name in ("annotations.csv", "series.csv", "lesions.csv", "dataset.json"):
        assert (again / name).read_text() == (out / name).read_text()
    for uid in ("sim-0000", "sim-0001", "sim-0002"):
        for kind in ("images", "masks"):
            a = load_image(out / kind / f"{uid}.nii.gz")
            b = load_image(again / kind / f"{uid}.nii.gz")
            assert np.array_equal(a.array, b.array) and a.same_grid(b)
    other = tmp_path / "other"
    simulate_lesion_dataset(src, other, count=3, seed=8, size=48, negative_fraction=1 / 3)
    assert (other / "annotations.csv").read_text() != (out / "annotations.csv").read_text()


def test_hippocampus_mri_from_a_decathlon_folder(real, tmp_path):
    src = real("msd_hippocampus")
    out = tmp_path / "mr"
    summary = simulate_lesion_dataset(
        src, out, count=1, seed=2, size=48, lesions_per_volume="1-2", boundary_fraction=1.0
    )
    (entry,) = _rows(out / "series.csv")
    assert entry["source"].startswith("imagesTr/") and entry["subject"].startswith("imagesTr/")
    assert summary["lesions"] == int(entry["lesions"]) >= 1
    image = load_image(out / "images" / "sim-0000.nii.gz")
    crop = _source_crop(image, src / entry["source"])
    assert image.array.dtype == crop.dtype
    mask = load_image(out / "masks" / "sim-0000.nii.gz").array
    change = np.abs(image.array.astype(float) - crop)
    low, high = np.percentile(crop, [1, 99])
    assert change[mask > 0].mean() >= 0.1 * (high - low)  # relative to the local intensity
    # every lesion sits on the edge of the hippocampus (its label map, from labelsTr)
    organs = {int(r["organ"]) for r in _rows(out / "lesions.csv")}
    assert organs and organs <= {1, 2}


def test_the_whole_totalsegmentator_folder_uses_its_label_maps(real, tmp_path):
    """CT and MR NIfTI plus the CT DICOM series; the series' map (stored flipped) is found."""
    out = tmp_path / "all"
    simulate_lesion_dataset(
        real("totalsegmentator"),
        out,
        count=3,
        seed=0,
        size=40,
        lesions_per_volume="1",
        boundary_fraction=1.0,
    )
    series = _rows(out / "series.csv")
    assert {r["source"] for r in series} == {
        "ct_dicom_series/dicom",
        "ct_small/example_ct_sm.nii.gz",
        "mr_small/example_mr_sm.nii.gz",
    }
    details = _rows(out / "lesions.csv")
    assert len(details) == 3 and all(int(r["organ"]) > 0 for r in details)


def test_insert_lesions_keeps_the_input_and_places_lesions_in_the_body(real):
    image = load_image(real("totalsegmentator", "ct_small", "example_ct_sm.nii.gz"))
    before = image.array.copy()
    made, mask, lesions = insert_lesions(image, 3, seed=5, min_mm=6, max_mm=20)
    assert np.array_equal(image.array, before) and made.same_grid(image)
    assert len(lesions) == 3 and mask.array.max() == 3
    body = image.array > otsu_threshold(image.array)
    for k, lesion in enumerate(lesions, start=1):
        assert body[lesion.centre[::-1]]
        assert 6 <= lesion.diameter <= 20
        if before[mask.array == k].mean() > -400:  # outside the lung: contrast by design
            assert CT_HU[0] <= abs(lesion.delta) <= CT_HU[1]
            at_bound = np.isclose(abs(lesion.delta), CT_HU).any()
            assert at_bound or CNR[0] - 1e-6 <= lesion.cnr <= CNR[1] + 1e-6
    for a in lesions:  # never overlapping
        for b in lesions:
            if a is not b:
                gap = np.linalg.norm(np.subtract(a.world, b.world))
                assert gap >= a.radius + b.radius


def test_lesions_are_resolved_and_stand_out_of_their_surroundings(real):
    """Every lesion is at least two voxels wide (6 mm on this 3 mm CT, though 3 mm was asked),
    and its mean differs from the tissue around it by more than that tissue's spread, measured
    on the written image: a lesion a reader could see."""
    from scipy import ndimage

    image = load_image(real("totalsegmentator", "ct_small", "example_ct_sm.nii.gz"))
    made, mask, lesions = insert_lesions(image, 8, seed=3, min_mm=3, max_mm=20)
    assert resolvable_mm(image.spacing) == pytest.approx(6.0)
    assert len(lesions) >= 6 and all(lesion.diameter >= 6 - 1e-6 for lesion in lesions)
    values, labels = made.array.astype(float), mask.array
    spacing = np.asarray(image.spacing)[::-1]
    contrast = []
    for k, lesion in enumerate(lesions, start=1):
        inside = labels == k
        away = ndimage.distance_transform_edt(~inside, sampling=spacing)
        shell = (away > 1.5) & (away < max(lesion.radius, 6.0)) & (labels == 0)
        spread = values[shell].std()
        contrast.append(abs(values[inside].mean() - values[shell].mean()) / spread)
    assert np.median(contrast) > 1.0 and np.mean(np.asarray(contrast) > 0.5) >= 0.75


def test_parse_range():
    assert parse_range("0-3") == (0, 3) and parse_range("2") == (2, 2)
    for bad in ("3-1", "a", "-1"):
        with pytest.raises(MedlensError):
            parse_range(bad)


def test_refusals_write_nothing(real, tmp_path, capsys):
    from medlens.cli.main import main

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real("totalsegmentator", "ct_small", "example_ct_sm.nii.gz"), src)
    inside = src / "out"
    code = main(["datasets", "simulate-lesions", str(src), "-o", str(inside), "--count", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and str(inside) in err
    assert not inside.exists() and sorted(p.name for p in src.iterdir()) == ["example_ct_sm.nii.gz"]
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "nothing" / "out"
    code = main(["datasets", "simulate-lesions", str(empty), "-o", str(out), "--count", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and str(empty) in err
    assert not out.exists() and not out.parent.exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(MedlensError, match="not an empty folder"):
        simulate_lesion_dataset(src, full, count=1)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    labels_only = tmp_path / "labels_only"
    labels_only.mkdir()
    shutil.copy(real("totalsegmentator", "ct_small", "example_seg.nii.gz"), labels_only)
    with pytest.raises(MedlensError, match="no 3D volumes"):
        simulate_lesion_dataset(labels_only, tmp_path / "x", count=1)
    assert not (tmp_path / "x").exists()


def test_command_line(real, tmp_path):
    from typer.testing import CliRunner

    from medlens.cli.main import app

    src = real("totalsegmentator", "mr_small")
    out = tmp_path / "cli"
    args = [
        "datasets",
        "simulate-lesions",
        str(src),
        "-o",
        str(out),
        "--count",
        "2",
        "--seed",
        "3",
        "--size",
        "40",
        "--lesions-per-volume",
        "1-2",
        "--min-mm",
        "6",
        "--max-mm",
        "12",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["count"] == 2 and summary["negatives"] == 0
    rows = _rows(out / "annotations.csv")
    assert len(rows) == summary["lesions"] >= 2
    assert all(6 <= float(r["diameter_mm"]) <= 12 for r in rows)
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "sim-0000.nii.gz",
        "sim-0001.nii.gz",
    ]
    again = CliRunner().invoke(app, args)  # the folder is no longer empty
    assert again.exit_code != 0 and "not an empty folder" in str(again.exception)
    import typer

    command = typer.main.get_command(app).commands["datasets"].commands["simulate-lesions"]
    texts = [command.help or "", *(p.help or "" for p in command.params)]
    assert not [t for t in texts if "[" in t]  # Rich would read square brackets as markup
