"""The segmentation job end to end on small synthetic images (a tiny U-Net, a few epochs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from scipy import ndimage

from medlens.cli.main import main
from medlens.data import load_splits
from medlens.io import load_image
from medlens.tasks.segmentation.predict import load_segmentation_run, predict_image

TINY = ["network.features=[8,16,16]", "network.strides=[[1,1],[2,2],[2,2]]",
        "network.kernel_sizes=[[3,3],[3,3],[3,3]]", "patch_size=32,32", "batch_size=4",
        "train.batches_per_epoch=8", "train.lr=0.01"]  # fmt: skip


@pytest.fixture(scope="module")
def disks(tmp_path_factory):
    from medlens.testing.tiny import disks

    return disks(tmp_path_factory.mktemp("seg"), n=10)[0]


def test_cli_trains_a_unet_and_validates_it(disks, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--task", "segmentation", "--data", str(disks), "--output", str(run),
            "--epochs", "3", "--no-progress"]  # fmt: skip
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["task"] == "segmentation"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_cases"] == 2 and metrics["aggregate"]["mean"]["dice"]["mean"] > 0.6
    history = (run / "fold-0" / "history.jsonl").read_text().splitlines()
    assert len(history) == 3 and "val_dice" in json.loads(history[-1])
    state = torch.load(run / "fold-0" / "best.pt", weights_only=True)
    assert "model" in state
    plan = json.loads((run / "plan.json").read_text())
    assert plan["patch_size"] == [32, 32] and plan["train"]["epochs"] == 3
    # resume of a finished run trains nothing more and gives the same metrics
    assert main([*args, "--resume"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert (
        again["aggregate"]["mean"]["dice"]["mean"] == metrics["aggregate"]["mean"]["dice"]["mean"]
    )


def test_refuses_classification_data_and_missing_plan(disks, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    np.savez(tmp_path / "in" / "x.npz", train_images=np.zeros((4, 8, 8), np.uint8),
             train_labels=np.zeros((4, 1)))  # fmt: skip
    for args in (
        ["train", "--task", "segmentation", "--data", str(tmp_path / "in" / "x.npz"),
         "--output", str(tmp_path / "a")],
        ["train", "--task", "segmentation", "--data", str(disks), "--output", str(tmp_path / "b"),
         "--plan", str(tmp_path / "missing.json")],
    ):  # fmt: skip
        capsys.readouterr()
        assert main(args) == 1
        assert capsys.readouterr().err.startswith("error:")


def test_predict_writes_one_mask_per_image_on_its_grid(disks, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--task", "segmentation", "--data", str(disks), "--output", str(run),
            "--epochs", "3", "--no-progress"]  # fmt: skip
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0
    out = tmp_path / "masks"
    assert main(["predict", str(run), "--input", str(disks / "images"), "--output", str(out),
                 "--mirror"]) == 0  # fmt: skip
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"case{i:02d}.png" for i in range(10)]
    scores = []
    for i in range(10):
        pred = np.asarray(PILImage.open(out / f"case{i:02d}.png"))
        truth = np.asarray(PILImage.open(disks / "masks" / f"case{i:02d}_mask.png")) > 0
        assert pred.shape == (40, 48) and set(np.unique(pred)) <= {0, 1}  # training's values
        scores.append(2 * ((pred > 0) & truth).sum() / ((pred > 0).sum() + truth.sum()))
    assert np.mean(scores) > 0.6
    assert main(["predict", str(run), "--input", str(disks), "--output",
                 str(disks / "images" / "out")]) == 1  # never into the input folder  # fmt: skip


def test_cross_validation_folds_ensemble_and_postprocessing(disks, tmp_path, capsys):
    run = tmp_path / "cv"
    args = ["train", "--task", "segmentation", "--data", str(disks), "--output", str(run),
            "--epochs", "2", "--folds", "2", "--model", "resunet", "--no-progress"]  # fmt: skip
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err
    folds = load_splits(run / "splits.json")
    assert len(folds) == 2 and sorted(folds[0]["val"] + folds[1]["val"]) == [
        f"case{i:02d}" for i in range(10)
    ]
    assert (run / "fold-0" / "best.pt").is_file() and (run / "fold-1" / "best.pt").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_cases"] == 10  # every case predicted once, by the fold that did not see it
    rules = json.loads((run / "postprocessing.json").read_text())
    assert rules["n_cases"] == 10 and set(rules["classes"]) == {"1"}
    assert metrics["postprocessing"] == rules
    plan = json.loads((run / "plan.json").read_text())
    assert plan["network"]["encoder"] == "residual"
    trained = load_segmentation_run(run)
    assert len(trained.networks) == 2 and trained.postprocessing == rules
    # the ensemble's prediction, and with both postprocessing steps forced: one component
    labels = predict_image(trained, load_image(disks / "images" / "case00.png")).array
    rules["classes"]["1"].update(largest_component=True, fill_holes=True)
    forced = predict_image(trained, load_image(disks / "images" / "case00.png")).array
    assert ndimage.label(forced == 1)[1] <= 1
    assert forced.shape == labels.shape


def test_small_volumes_are_predicted_whole_in_one_window_and_bf16_agrees():
    from medlens.tasks.segmentation.network import build_network, predict_case
    from medlens.tasks.segmentation.plan import SegmentationPlan, _native_bf16

    def plan(**inference):
        return SegmentationPlan(
            dataset="toy", spatial_dims=3, in_channels=1, num_classes=3, label_values=[0, 1, 2],
            target_spacing=[1.0] * 3, median_shape=[20, 18, 22], patch_size=[16, 16, 16],
            batch_size=2, normalisation={"scheme": "zscore"},
            network={"name": "unet", "features": [4, 8, 8], "encoder": "plain",
                     "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                     "kernel_sizes": [[3, 3, 3]] * 3, "deep_supervision": True},
            inference=inference or None,
        )  # fmt: skip

    torch.manual_seed(0)
    network = build_network(plan())
    shapes = []
    network.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape[2:])))
    image = np.random.default_rng(0).normal(size=(1, 20, 18, 22)).astype(np.float32)
    patched = predict_case([network], image, plan())
    assert shapes and set(shapes) == {(16, 16, 16)} and sum(1 for _ in shapes) >= 2
    shapes.clear()
    whole = predict_case([network], image, plan(window="image"), mirror=True)
    assert shapes == [(20, 20, 24)] * 8  # one window (to the divisor 4), 8 mirrored passes
    for probs in (patched, whole):
        assert probs.shape == (3, 20, 18, 22) and np.allclose(probs.sum(0), 1, atol=1e-5)
    if _native_bf16():  # bf16 where the CPU computes it natively: the same labels, nearly
        low = predict_case([network], image, plan(window="image", precision="bf16"), mirror=True)
        assert np.abs(low - whole).max() < 0.05
        assert (low.argmax(0) == whole.argmax(0)).mean() > 0.98


def test_one_fold_of_a_cross_validation_is_a_single_split_run(disks, tmp_path, capsys):
    from medlens.errors import MedlensError
    from medlens.tasks.segmentation.train import train_segmentation

    run = tmp_path / "fold1"
    info = train_segmentation(disks, run, folds=2, fold=1, epochs=1, overrides=TINY,
                              progress=False, log=lambda _: None)  # fmt: skip
    assert info["cv_fold"] == [1, 2] and info["folds"] == 1
    split = load_splits(run / "splits.json")
    assert isinstance(split, dict) and split["fold"] == 1 and len(split["val"]) == 5
    assert json.loads((run / "metrics.json").read_text())["n_cases"] == 5
    for bad in ({"folds": 2, "fold": 2}, {"folds": None, "fold": 0}):
        with pytest.raises(MedlensError, match="fold"):
            train_segmentation(disks, tmp_path / "bad", overrides=TINY, progress=False, **bad)
    assert not (tmp_path / "bad").exists()
    # the command line: --fold with --folds; a task without folds of its own refuses the flag
    args = [
        "train",
        "--task",
        "segmentation",
        "--data",
        str(disks),
        "--output",
        str(tmp_path / "cli"),
        "--epochs",
        "1",
        "--folds",
        "2",
        "--fold",
        "0",
        "--no-progress",
    ]
    for item in TINY:
        args += ["--set", item]
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "cli" / "run.json").read_text())["cv_fold"] == [0, 2]
    assert main(["train", "--task", "classification", "--data", str(disks), "--output",
                 str(tmp_path / "c"), "--folds", "2", "--fold", "0"]) == 1  # fmt: skip
    assert "--fold is not an option of classification" in capsys.readouterr().err
