"""``medlens measure cardiac``: every frame of a cine segmented, the volume curve, ED/ES, EF."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest

from medlens.image import Image


@pytest.fixture(scope="module")
def disk_run(tmp_path_factory):
    """A small 2D segmenter of bright disks in noise (Dice about 0.96 on its validation)."""
    from medlens.tasks.registry import get_task
    from medlens.testing.tiny import disks

    root = tmp_path_factory.mktemp("disks")
    data, settings = disks(root, n=12)
    settings = [s for s in settings if "batches_per_epoch" not in s and "features" not in s]
    task = get_task("segmentation")
    settings = [s for s in settings if not s.startswith("patch_size")]
    settings += ["network.features=[8,16]", "patch_size=40,48", "train.batches_per_epoch=15"]
    plan = task.plan(data, overrides=settings, log=lambda _: None)
    task.train(data, root / "run", plan=plan.save(root / "plan.json"), epochs=5, progress=False,
               log=lambda _: None)  # fmt: skip
    return root / "run"


def beating_disks(t: int = 8, z: int = 3, seed: int = 1):
    """A cine of disks whose radius follows a cosine cycle (largest at phase 0), shrinking
    towards the apex: ``(Image (t, z, 40, 48), true label maps)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:40, :48]
    radii = 6.5 + 2.5 * (1 + np.cos(2 * np.pi * np.arange(t) / t)) / 2  # training disks: 6-9
    array = np.zeros((t, z, 40, 48), np.float32)
    truth = np.zeros(array.shape, np.uint8)
    for i in range(t):
        for k in range(z):
            r = radii[i] * (1 - 0.04 * k)
            disk = (yy - 20) ** 2 + (xx - 24) ** 2 <= r * r
            truth[i, k] = disk
            array[i, k] = np.clip(rng.normal(70, 15, (40, 48)) + 100 * disk, 0, 255)
    meta = {"time_step": 0.05}
    return Image(array, spacing=(1.0, 1.0, 5.0), leading=("time",), meta=meta), truth


def test_cli_measures_a_4d_nifti_cine(disk_run, tmp_path, capsys):
    from medlens.cli.main import main
    from medlens.io import load_image, save_image
    from medlens.io.video import read_video
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    cine, truth = beating_disks()
    save_image(cine, tmp_path / "cine.nii.gz")
    out = tmp_path / "out"
    code = main(["measure", "cardiac", str(disk_run), "--input", str(tmp_path / "cine.nii.gz"),
                 "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with (out / "measurements.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:7] == ["series", "edv_ml", "esv_ml", "sv_ml", "ef_percent",
                                 "ed_phase", "es_phase"]  # fmt: skip
    row = rows[0]
    assert row["series"] == "cine" and float(row["heart_rate_bpm"]) == pytest.approx(150.0)
    expected = cardiac_indices(volume_curve(cavity_areas(truth, (1, 1)), 5.0))
    assert (int(row["ed_phase"]), int(row["es_phase"])) == (0, 4)
    assert float(row["edv_ml"]) == pytest.approx(expected["edv_ml"], rel=0.15)
    assert float(row["ef_percent"]) == pytest.approx(expected["ef_percent"], abs=12)
    truth_curve = volume_curve(cavity_areas(truth, (1, 1)), 5.0)
    # the saved label maps are what was measured
    labels = load_image(out / "cine_lv.nii.gz")
    assert labels.leading == ("time",) and labels.array.shape == truth.shape
    with (out / "volumes.csv").open() as handle:
        curve = list(csv.DictReader(handle))
    again = volume_curve(cavity_areas(labels.array, labels.spacing), labels.spacing[2])
    measured = [float(r["volume_ml"]) for r in curve]
    np.testing.assert_allclose(measured, again, atol=0.01)
    assert np.corrcoef(measured, truth_curve)[0, 1] > 0.95  # the curve follows the beat
    assert [float(r["time_ms"]) for r in curve] == pytest.approx(np.arange(8) * 50.0)
    dice = 2 * (labels.array & truth).sum() / (labels.array.sum() + truth.sum())
    assert dice > 0.85
    assert (out / "cine_curve.png").read_bytes().startswith(b"\x89PNG")
    video = read_video(out / "cine_overlay.mp4")
    assert video.array.shape[:1] == (8,) and video.leading == ("time", "channel")  # one cycle
    assert video.array.shape[2:] == (40, 144)  # three slices side by side


def test_bad_cines_are_refused_in_one_line(disk_run, tmp_path, capsys, data_root):
    from medlens.cli.main import main
    from medlens.io import save_image

    cine, _ = beating_disks()
    save_image(Image(cine.array[0], spacing=(1.0, 1.0, 5.0)), tmp_path / "volume.nii.gz")
    single = Image(cine.array[:, :1], spacing=(1.0, 1.0, 5.0), leading=("time",))
    save_image(single, tmp_path / "one_slice.nii.gz")
    series = data_root / "sunnybrook" / "dicoms" / "SCD0000101"
    gap = tmp_path / "gap"
    gap.mkdir()
    for f in series.iterdir():  # one phase of one slice missing
        if f.name != "48.dcm":
            os.symlink(f, gap / f.name)
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    for f in series.iterdir():  # one frame of another size (a cropped re-export)
        if f.name != "48.dcm":
            os.symlink(f, sizes / f.name)
    import pydicom

    ds = pydicom.dcmread(series / "48.dcm")
    cropped = ds.pixel_array[:128, :128].copy()
    ds.Rows, ds.Columns, ds.PixelData = 128, 128, cropped.tobytes()
    ds.save_as(sizes / "48.dcm")
    cases = [
        (tmp_path / "volume.nii.gz", "not a cine stack"),
        (tmp_path / "one_slice.nii.gz", "single-slice cine"),
        (gap, "incomplete temporal series"),
        (sizes, "images of different sizes in one series: 256x256 (239 images), 128x128 (1"),
    ]
    for path, message in cases:
        code = main(["measure", "cardiac", str(disk_run), "--input", str(path), "--output",
                     str(tmp_path / "o"), "--no-progress"])  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert code != 0 and len(err.splitlines()) == 1 and message in err, err
        assert path.name in err
    code = main(["measure", "cardiac", str(disk_run), "--input", str(tmp_path),
                 "--output", str(tmp_path / "inside"), "--no-progress"])  # fmt: skip
    assert code != 0 and "inside" in capsys.readouterr().err


def test_segmentation_trains_on_the_sunnybrook_layout_as_it_is(tmp_path, data_root, capsys):
    from medlens.cli.main import main

    data = data_root / "sunnybrook"
    if not data.is_dir():
        pytest.skip(f"{data} is missing")
    settings = ["network.features=[4,8]", "network.strides=[[1,1],[2,2]]",
                "network.kernel_sizes=[[3,3],[3,3]]", "patch_size=64,64", "batch_size=2",
                "train.batches_per_epoch=2"]  # fmt: skip
    args = ["train", "--task", "segmentation", "--data", str(data), "--output",
            str(tmp_path / "run"), "--epochs", "1", "--no-progress"]  # fmt: skip
    for s in settings:
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    import json

    split = json.loads((tmp_path / "run" / "splits.json").read_text())["folds"][0]
    subjects = {i.split("_")[0] for i in split["val"]}
    train = {i.split("_")[0] for i in split["train"]}
    assert subjects and not subjects & train  # patients never on both sides
