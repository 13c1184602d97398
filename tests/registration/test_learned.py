"""The learned registration task: training from images or listed pairs, the transform its network
gives on the images' own grids, and the commands around it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.cli.main import main
from medlens.errors import DatasetError
from medlens.image import Image
from medlens.io import save_image
from medlens.tasks.registration.plan import make_plan
from medlens.tasks.registration.predict import RegistrationRun, register_learned
from medlens.tasks.registration.train import train_registration
from medlens.testing.tiny import disk_pairs, disks

QUIET = {"progress": False, "log": lambda line: None}
TINY = ["network.features=[4,8,8]", "train.batches_per_epoch=3", "batch_size=2", "val_pairs=4"]


class Constant(torch.nn.Module):
    """A stand-in network: the same velocity everywhere."""

    def __init__(self, velocity) -> None:
        super().__init__()
        self.velocity = torch.as_tensor(velocity, dtype=torch.float32)

    def forward(self, x):
        n = x.ndim - 2
        return self.velocity.view(1, n, *[1] * n).expand(x.shape[0], n, *x.shape[2:]).clone()


def test_a_uniform_velocity_is_a_translation_on_the_images_own_grids():
    """The network's canonical field reaches the fixed image's grid in its voxels, through other
    spacings and a flipped direction: a velocity of (2, -1) canonical voxels (1.5 mm each) moves
    every fixed point by (3, -1.5) mm after the centres are aligned."""
    rng = np.random.default_rng(0)
    fixed = Image(rng.random((30, 40), dtype=np.float32), spacing=(0.5, 0.7), origin=(3.0, -2.0))
    flip = np.diag([-1.0, 1.0])
    moving = Image(rng.random((36, 28), dtype=np.float32), spacing=(1.0, 0.8), origin=(40.0, 5.0),
                   direction=flip)  # fmt: skip
    plan = make_plan([fixed, moving], labelled=False, label_values=[0], pairs="random")
    plan = plan.with_overrides(["spacing=1.5,1.5", "prealign=center"])
    run = RegistrationRun(Path("."), {}, plan, [Constant([2.0, -1.0])])
    result = register_learned(run, fixed, moving, refine=0)
    centre = [i.index_to_world((np.asarray(i.size) - 1) / 2) for i in (fixed, moving)]
    points = fixed.index_to_world(np.array([[0.0, 0.0], [10.0, 20.0], [29.0, 39.0]])[:, ::-1])
    expected = points - centre[0] + centre[1] + np.array([3.0, -1.5])
    assert np.allclose(result.map_points(points), expected, atol=1e-3)
    assert np.allclose(result.displacement_mm()[0] - result.displacement_mm()[0].mean(), 0,
                       atol=1e-4)  # fmt: skip


def test_the_network_learns_to_align_disks(tmp_path):
    """Trained 375 steps on disks in noise (random pairs, label supervision), the network lifts
    the mean Dice of the validation pairs' disks well above their centred overlap, without
    folding."""
    data, _ = disks(tmp_path, n=12)
    settings = ["network.features=[8,16,16,16]", "train.batches_per_epoch=25", "batch_size=4",
                "val_pairs=12", "prealign=center", "loss.weight=0.5"]  # fmt: skip
    info = train_registration(data, tmp_path / "run", epochs=15, overrides=settings, **QUIET)
    figures = info["evaluation"]
    # 0.704 -> 0.821 when written; the untrained network leaves the disks where they are
    assert figures["dice_mean"] > figures["dice_before"] + 0.08, figures
    assert figures["folding_fraction"] < 0.001


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("learned")
    data, _ = disk_pairs(root)
    train_registration(data, root / "run", epochs=1, overrides=TINY, **QUIET)
    return data, root / "run"


def test_predict_and_register_write_what_medlens_register_writes(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    images = sorted((data / "images").iterdir())
    out = tmp_path / "pair"
    args = ["predict", str(run), "--fixed", str(images[0]), "--moving", str(images[1])]
    assert main([*args, "--output", str(out), "--refine", "2"]) == 0
    assert "1 pair(s) registered" in capsys.readouterr().out
    for name in ("warped.nii.gz", "displacement.nii.gz", "affine.tfm", "metrics.json",
                 "report.html", "summary.csv"):  # fmt: skip
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert any("instance optimisation (2 steps)" in s["name"] for s in metrics["stages"])
    other = tmp_path / "register"
    code = main(["register", str(images[0]), str(images[1]), "--method", f"learned:{run}",
                 "--output", str(other), "--quiet"])  # fmt: skip
    assert code == 0 and (other / "warped.nii.gz").is_file()
    import SimpleITK as sitk

    a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "displacement.nii.gz")))
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(other / "displacement.nii.gz")))
    assert a.shape == b.shape  # the same grid; the refinement makes them differ a little


def test_options_and_missing_inputs_get_one_line_errors(tiny_run, tmp_path, capsys):
    data, run = tiny_run
    assert main(["plan", str(data), "--task", "registration", "-o", str(tmp_path / "p.json")]) == 0
    assert "canonical grid 48x48 at 1x1 mm, affine pre-alignment" in capsys.readouterr().out
    assert main(["predict", str(run), "--output", str(tmp_path / "x")]) == 1
    assert "--input is required (or --fixed and --moving" in capsys.readouterr().err
    assert main(["predict", str(run), "--input", str(data / "images"), "--output",
                 str(tmp_path / "y")]) == 1  # fmt: skip
    assert "need --fixed" in capsys.readouterr().err
    images = sorted((data / "images").iterdir())
    code = main(["register", str(images[0]), str(images[1]), "--refine", "3", "--output",
                 str(tmp_path / "z")])  # fmt: skip
    assert code == 1 and "--refine is for --method learned:RUN" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()


def test_a_pairs_csv_trains_predicts_and_names_its_bad_lines(tmp_path, capsys):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    rows = ["fixed,moving,fixed_labels,moving_labels,subject"]
    for k in range(6):
        for t, (cy, cx) in enumerate(
            [(16, 16), (16 + rng.integers(-4, 5), 16 + rng.integers(-4, 5))]
        ):
            disk = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 49).astype(np.uint8)
            image = (rng.normal(50, 5, (32, 32)) + 100 * disk).astype(np.float32)
            save_image(Image(image, spacing=(1.0, 1.0)), tmp_path / f"s{k}_t{t}.nii.gz")
            save_image(Image(disk, spacing=(1.0, 1.0)), tmp_path / f"s{k}_t{t}_seg.nii.gz")
        rows.append(f"s{k}_t0.nii.gz,s{k}_t1.nii.gz,s{k}_t0_seg.nii.gz,s{k}_t1_seg.nii.gz,p{k}")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n")
    info = train_registration(pairs, tmp_path / "run", epochs=1, overrides=TINY, **QUIET)
    assert info["data"]["pairs"] == 6 and json.loads((tmp_path / "run" / "plan.json").read_text())[
        "prealign"] == "center"  # fmt: skip
    split = json.loads((tmp_path / "run" / "splits.json").read_text())["folds"][0]
    assert len(split["train"]) + len(split["val"]) == 6
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "run"), "--input", str(pairs), "--output",
                 str(out)]) == 0  # fmt: skip
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 7 and "dice" in summary[0].split(",")
    assert (out / "000-s0_t1" / "warped_labels.nii.gz").is_file()
    # a plain folder of images (no labels): random pairs, trained on the similarity alone
    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(4):
        (folder / f"s{k}.nii.gz").write_bytes((tmp_path / f"s{k}_t0.nii.gz").read_bytes())
    info = train_registration(folder, tmp_path / "plain", epochs=1, overrides=TINY, **QUIET)
    assert info["data"]["images"] == 4 and "dice_mean" not in info["evaluation"]
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,moving\ns0_t0.nii.gz,s0_t1.nii.gz\ns1_t0.nii.gz,missing.nii.gz\n")
    with pytest.raises(DatasetError, match=r"line 3: missing.nii.gz does not exist"):
        train_registration(bad, tmp_path / "run2", epochs=1, overrides=TINY, **QUIET)
    assert not (tmp_path / "run2").exists()
