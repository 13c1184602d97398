"""SIMULATED beating hearts over real cine backgrounds, and the sequence models trained on them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medlens.errors import DatasetError, MedlensError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory, data_root):
    from medlens.cli.main import main

    src = data_root / "sunnybrook"
    if not src.is_dir():
        pytest.skip(f"{src} is missing")
    out = tmp_path_factory.mktemp("phantoms") / "cines"
    code = main(["datasets", "simulate-cine", str(src), "-o", str(out), "--count", "4",
                 "--seed", "3", "--size", "64", "--subject", "SC-HF-I-1",
                 "--subject", "SC-HF-I-5"])  # fmt: skip
    assert code == 0
    return src, out


def test_phantoms_say_simulated_and_their_truth_is_their_labels(phantoms):
    from medlens.io import load_image
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    _, out = phantoms
    assert json.loads((out / "dataset.json").read_text())["simulated"] is True
    assert "SIMULATED" in (out / "README.txt").read_text()
    with (out / "cases.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {r["background"] for r in rows} == {"SC-HF-I-1", "SC-HF-I-5"}
    for row in rows:
        assert row["simulated"] == "true" and row["subject"] == row["case"]
        cine = load_image(out / "cines" / f"{row['case']}.nii.gz")
        labels = load_image(out / "labels" / f"{row['case']}.nii.gz")
        assert cine.leading == labels.leading == ("time",)
        assert cine.array.shape == labels.array.shape and cine.array.shape[2:] == (64, 64)
        assert int(row["phases"]) == 20 and int(row["slices"]) == cine.array.shape[1]
        volumes = volume_curve(cavity_areas(labels.array, labels.spacing), labels.spacing[2])
        got = cardiac_indices(volumes)
        assert float(row["ef_percent"]) == pytest.approx(got["ef_percent"], abs=1e-2)
        assert int(row["ed_phase"]) == got["ed_phase"] and int(row["es_phase"]) == got["es_phase"]
        assert 20 <= float(row["ef_analytic"]) <= 70
        assert float(row["ef_percent"]) == pytest.approx(float(row["ef_analytic"]), abs=4)
        # end-systole a third of the cycle after end-diastole (systole is 35% of it)
        assert (got["es_phase"] - got["ed_phase"]) % 20 in (6, 7, 8)
        ed = labels.array[got["ed_phase"]]
        blood = cine.array[got["ed_phase"]][ed == 1].mean()
        wall = cine.array[got["ed_phase"]][ed == 2].mean()
        assert blood > 2 * wall  # bright cavity, dark myocardium


def test_outside_the_heart_is_the_real_cine(phantoms):
    from medlens.data.sunnybrook import SunnybrookDataset
    from medlens.io import load_image

    src, out = phantoms
    with (out / "cases.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["background"] == "SC-HF-I-1")
    cine = load_image(out / "cines" / f"{row['case']}.nii.gz").array
    labels = load_image(out / "labels" / f"{row['case']}.nii.gz").array
    real = load_image(src / "dicoms" / "SCD0000101").array
    assert SunnybrookDataset(src, subjects=["SC-HF-I-1"])  # the background patient exists
    best = 0.0  # the crop is somewhere in the real frame: find it by correlation
    far = labels[0, 0] == 0
    for top in range(0, 256 - 64, 4):
        for left in range(0, 256 - 64, 4):
            patch = real[0, 0, top : top + 64, left : left + 64][far]
            if patch.std() > 0:  # the air around the chest is flat
                best = max(best, np.corrcoef(patch, cine[0, 0][far])[0, 1])
    assert best > 0.95


def test_simulation_refuses_bad_requests(tmp_path, phantoms):
    from medlens.data.cine_phantom import simulate_cine_dataset

    src, out = phantoms
    with pytest.raises(MedlensError, match="not an empty folder"):
        simulate_cine_dataset(src, out, count=1)
    with pytest.raises(MedlensError, match="0 < low < high < 100"):
        simulate_cine_dataset(src, tmp_path / "a", count=1, ef_range=(60, 40))


def test_sequence_models_train_resume_and_measure(tmp_path, phantoms):
    from medlens.tasks.sequences.data import CineSet
    from medlens.tasks.sequences.train import (
        load_sequence_run,
        measure_ef,
        train_cine_regression,
        train_temporal_segmentation,
    )

    _, out = phantoms
    info = train_temporal_segmentation(out, tmp_path / "seg", temporal="gru", features=(4, 8),
                                       epochs=1, batches=2, progress=False,
                                       log=lambda _: None)  # fmt: skip
    assert info["status"] == "complete" and info["data"]["simulated"] is True
    (network,), spec = load_sequence_run(tmp_path / "seg")
    cines = CineSet(out)
    cine, labels, spacing = cines.load(0)
    ef, masks = measure_ef(network, spec, cine, spacing)
    assert masks.shape == labels.shape and 0 <= ef <= 100
    reg = train_cine_regression(out, tmp_path / "reg", features=(4,), hidden=4, epochs=1,
                                batches=2, progress=False, log=lambda _: None)  # fmt: skip
    assert reg["spec"]["slices"] == max(cines.load(i)[0].shape[1] for i in range(len(cines)))
    (net,), spec = load_sequence_run(tmp_path / "reg")
    assert np.isfinite(measure_ef(net, spec, cine, spacing)[0])
    with pytest.raises(MedlensError, match="holds a run already"):
        train_cine_regression(out, tmp_path / "reg", epochs=1, batches=1, progress=False)
    with pytest.raises(MedlensError, match="not a sequence run"):
        load_sequence_run(tmp_path)


def test_echo_loops_as_videos_train_a_regression(tmp_path, phantoms):
    """A folder of MP4 loops with a CSV of values (the EchoNet-Dynamic layout, here the
    phantoms' middle slices written as video) reads and trains as cines of one plane."""
    from medlens.io import load_image
    from medlens.io.video import write_video
    from medlens.tasks.sequences.data import CineSet
    from medlens.tasks.sequences.train import train_cine_regression

    _, out = phantoms
    videos = tmp_path / "echo"
    (videos / "cines").mkdir(parents=True)
    with (out / "cases.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    lines = ["case,subject,ef_percent"]
    for row in rows:
        cine = load_image(out / "cines" / f"{row['case']}.nii.gz").array
        frames = cine[:, cine.shape[1] // 2]
        u8 = np.clip(frames / np.percentile(frames, 99.5) * 255, 0, 255).astype(np.uint8)
        write_video(u8, videos / "cines" / f"{row['case']}.mp4", fps=25)
        lines.append(f"{row['case']},{row['case']},{row['ef_percent']}")
    (videos / "cases.csv").write_text("\n".join(lines) + "\n")
    data = CineSet(videos)
    cine, labels, spacing = data.load(0)
    assert cine.shape == (20, 1, 64, 64) and labels is None and spacing == (1.0, 1.0, 1.0)
    info = train_cine_regression(videos, tmp_path / "run", features=(4,), hidden=4, epochs=1,
                                 batches=2, progress=False, log=lambda _: None)  # fmt: skip
    assert info["spec"]["slices"] == 1 and np.isfinite(info["evaluation"]["val_ef_mae"])
    (videos / "cines" / f"{rows[0]['case']}.mp4").unlink()
    with pytest.raises(DatasetError, match=r"1 cine\(s\) named are missing"):
        CineSet(videos)
