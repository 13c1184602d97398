"""``medlens evaluate`` on a segmentation run: metrics per case, the CSV, the report with overlays.

One tiny 2D run (15 synthetic ellipse images, a small U-Net, 2 epochs) is trained once per module;
the values checked do not depend on how good it is, only on being computed right.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image as PILImage

from medlens.cli.main import main
from medlens.tasks.segmentation.evaluate import evaluate_segmentation
from medlens.tasks.segmentation.overlays import overlay_figure
from medlens.tasks.segmentation.train import train_segmentation

TINY = ["network.features=[8,16,16]", "network.strides=[[1,1],[2,2],[2,2]]",
        "network.kernel_sizes=[[3,3],[3,3],[3,3]]", "patch_size=32,32", "batch_size=4",
        "train.batches_per_epoch=6", "train.lr=0.01"]  # fmt: skip
N_CASES = 15


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ellipses(tmp_path_factory, ellipse_images):
    """Paired ``images/`` + ``masks/`` PNGs: a bright ellipse on noise per image."""
    return ellipse_images(tmp_path_factory.mktemp("segeval") / "data", N_CASES)


@pytest.fixture(scope="module")
def run(ellipses, tmp_path_factory):
    out = tmp_path_factory.mktemp("segeval-run") / "run"
    train_segmentation(ellipses, out, epochs=2, overrides=TINY, progress=False, log=lambda _: None)
    return out


def _val_ids(run):
    return json.loads((run / "splits.json").read_text())["folds"][0]["val"]


def _read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _dice(pred, ref):
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else 2.0 * (pred & ref).sum() / total


def test_api_scores_the_validation_cases_by_default(run, ellipses, tmp_path, capsys):
    result = evaluate_segmentation(run, ellipses, n_boot=200, progress=False)
    out = run / "evaluation"
    assert result["files"] == {"metrics": str(out / "metrics.json"),
                               "per_case": str(out / "per_case.csv"),
                               "report": str(out / "report.html")}  # fmt: skip
    val = _val_ids(run)
    assert result["split"] == "val" and result["n_cases"] == len(val) == 3
    assert sorted(result["case_ids"]) == sorted(val)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == str(ellipses) and metrics["case_ids"] == result["case_ids"]
    dice = metrics["aggregate"]["per_class"]["foreground"]["dice"]
    assert dice["low"] is not None and dice["low"] <= dice["mean"] <= dice["high"]

    # per-case Dice equals a recomputation from the masks `medlens predict` writes
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    for case in val:
        shutil.copy(ellipses / "images" / f"{case}.png", images)
    assert main(["predict", str(run), "--input", str(images), "--output", str(masks)]) == 0
    rows = _read_csv(out / "per_case.csv")
    assert [r["case_id"] for r in rows] == result["case_ids"]
    assert set(rows[0]) == {"case_id", "foreground_dice", "foreground_iou",
                            "foreground_hd95_mm", "foreground_assd_mm", "foreground_nsd",
                            "foreground_empty", "mean_dice"}  # fmt: skip
    for row, case in zip(rows, metrics["cases"], strict=True):
        pred = np.asarray(PILImage.open(masks / f"{row['case_id']}.png")) > 0
        ref = np.asarray(PILImage.open(ellipses / "masks" / f"{row['case_id']}_mask.png")) > 0
        expected = _dice(pred, ref)
        assert float(row["foreground_dice"]) == pytest.approx(expected, abs=1e-12)
        assert case["per_class"]["foreground"]["dice"] == pytest.approx(expected, abs=1e-12)
        union = (pred | ref).sum()
        iou = 1.0 if union == 0 else (pred & ref).sum() / union
        assert float(row["foreground_iou"]) == pytest.approx(iou, abs=1e-12)

    # the report: three overlays (best, median, worst) as data URIs, naming those cases
    page = (out / "report.html").read_text()
    overlays = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="Overlay of the '
                          r'(best|median|worst) case ([^"]+)"', page)  # fmt: skip
    assert [role for _, role, _ in overlays] == ["best", "median", "worst"]
    scores = {r["case_id"]: float(r["mean_dice"]) for r in rows}
    ranked = sorted(scores, key=lambda c: (-scores[c], result["case_ids"].index(c)))
    assert [case for _, _, case in overlays] == ranked
    assert result["examples"] == dict(zip(("best", "median", "worst"), ranked, strict=True))
    for data, _, _ in overlays:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    assert 'alt="Learning curves"' in page and "<script" not in page
    # explained examples: a Grad-CAM figure of each example case's predicted region
    explained = re.findall(
        r'alt="(best|median|worst) case [^"]*: label 1 in its predicted region"', page
    )
    assert explained == ["best", "median", "worst"], explained
    assert all(case in page for case in result["case_ids"])


@pytest.fixture(scope="module")
def all_cases(run, ellipses, tmp_path_factory):
    """``medlens evaluate --split all`` of the run: (output folder, stdout, stderr, exit code)."""
    out = tmp_path_factory.mktemp("segeval-all")
    args = ["evaluate", str(run), "--data", str(ellipses), "--split", "all", "--output",
            str(out / "eval"), "--json", str(out / "m.json"), "--bootstrap", "100",
            "--no-progress", "--tolerance-mm", "2"]  # fmt: skip
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(args)
    return out, stdout.getvalue(), stderr.getvalue(), code


def test_cli_all_cases_and_another_copy(run, ellipses, all_cases, tmp_path):
    out, printed, err, code = all_cases
    assert code == 0, err
    assert "Dice" in printed and "HD95 (mm)" in printed and "NSD (2 mm)" in printed
    assert re.search(r"foreground\s+\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", printed)
    assert str(out / "eval" / "report.html") in printed
    assert str(out / "eval" / "per_case.csv") in printed
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["split"] == "all" and metrics["n_cases"] == N_CASES
    assert metrics["tolerance_mm"] == 2.0 and metrics["settings"]["tolerance_mm"] == 2.0
    assert any("optimistic" in note for note in metrics["notes"])  # training cases included
    assert len(_read_csv(out / "eval" / "per_case.csv")) == N_CASES
    assert json.loads((out / "eval" / "metrics.json").read_text())["n_cases"] == N_CASES

    # other data (the validation cases and one more): all of its cases by default, the run's
    # validation ids on request
    other, val = tmp_path / "other", _val_ids(run)
    for folder in ("images", "masks"):
        (other / folder).mkdir(parents=True)
    extra = next(f"case{i:02d}" for i in range(N_CASES) if f"case{i:02d}" not in val)
    for case in (*val, extra):
        shutil.copy(ellipses / "images" / f"{case}.png", other / "images")
        shutil.copy(ellipses / "masks" / f"{case}_mask.png", other / "masks")
    result = evaluate_segmentation(run, other, output=tmp_path / "c1", n_boot=0, progress=False)
    assert result["split"] == "all" and sorted(result["case_ids"]) == sorted([*val, extra])
    assert result["bootstrap"] is None
    result = evaluate_segmentation(run, other, split="val", output=tmp_path / "c2", n_boot=0,
                                   progress=False)  # fmt: skip
    assert sorted(result["case_ids"]) == sorted(val)


def test_training_data_recorded_as_a_relative_path_is_recognised(run, ellipses, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("evaluation"))
    info = json.loads((moved / "run.json").read_text())
    info["data"]["source"] = "somewhere/else/" + ellipses.name  # relative to another folder
    (moved / "run.json").write_text(json.dumps(info))
    result = evaluate_segmentation(moved, ellipses, n_boot=0, progress=False)
    assert result["split"] == "val" and sorted(result["case_ids"]) == sorted(_val_ids(run))


def test_kfold_run_is_scored_out_of_fold(run, ellipses, all_cases, tmp_path):
    """Each validation case by its own fold's model: fold 1 here predicts nothing at all."""
    import torch

    from medlens.data import kfold_splits, open_dataset, save_splits

    cv = tmp_path / "cv"
    shutil.copytree(run, cv, ignore=shutil.ignore_patterns("evaluation"))
    shutil.copytree(cv / "fold-0", cv / "fold-1")
    for name in ("best.pt", "last.pt"):
        state = torch.load(cv / "fold-1" / name, weights_only=True)
        state["model"] = {k: torch.zeros_like(v) for k, v in state["model"].items()}
        torch.save(state, cv / "fold-1" / name)  # zero logits: all background
    folds = kfold_splits(open_dataset(ellipses), 2, stratify=False, seed=0)
    save_splits(cv / "splits.json", folds)
    info = json.loads((cv / "run.json").read_text())
    (cv / "run.json").write_text(json.dumps({**info, "folds": 2}))  # as a 2-fold run records it
    result = evaluate_segmentation(cv, ellipses, n_boot=0, progress=False)
    assert result["split"] == "val" and result["n_cases"] == N_CASES
    fold_of = dict(zip(result["case_ids"], result["folds"], strict=True))
    assert {case: fold_of[case] for case in folds[1]["val"]} == dict.fromkeys(folds[1]["val"], 1)
    single = {
        case["case_id"]: case["per_class"]["foreground"]
        for case in json.loads((all_cases[0] / "eval" / "metrics.json").read_text())["cases"]
    }
    for case in result["cases"]:
        scores = case["per_class"]["foreground"]
        if fold_of[case["case_id"]] == 1:
            assert scores["dice"] == 0.0 and scores["empty"] == "prediction"
            assert scores["hd95"] is None
        else:  # fold 0's model alone: what the run itself predicts
            assert scores["dice"] == single[case["case_id"]]["dice"]
    rows = {r["case_id"]: r for r in _read_csv(cv / "evaluation" / "per_case.csv")}
    worst = rows[result["examples"]["worst"]]
    assert worst["foreground_dice"] == "0.0" and worst["foreground_hd95_mm"] == ""
    assert worst["foreground_empty"] == "prediction"
    assert "out-of-fold" in (cv / "evaluation" / "report.html").read_text()


def test_cli_errors_are_one_line(run, ellipses, tmp_path, capsys):
    def fails(*extra):
        capsys.readouterr()
        assert main(["evaluate", str(run), "--no-progress", "--output", str(tmp_path / "o"),
                     *extra]) == 1  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
        return err

    val = _val_ids(run)
    missing = tmp_path / "nowhere"
    assert str(missing) in fails("--data", str(missing))
    assert "'val'" in fails("--data", str(ellipses), "--split", "test")
    # the run's validation cases, asked of data that lacks them
    lacking = tmp_path / "lacking"
    for folder in ("images", "masks"):
        (lacking / folder).mkdir(parents=True)
    train_case = next(f"case{i:02d}" for i in range(N_CASES) if f"case{i:02d}" not in val)
    shutil.copy(ellipses / "images" / f"{train_case}.png", lacking / "images")
    shutil.copy(ellipses / "masks" / f"{train_case}_mask.png", lacking / "masks")
    assert "validation cases are not in this dataset" in fails(
        "--data", str(lacking), "--split", "val"
    )
    # a mask on another grid than its image: the mask file is named
    bad = tmp_path / "bad"
    shutil.copytree(ellipses, bad)
    mask = bad / "masks" / f"{val[0]}_mask.png"
    PILImage.fromarray(np.zeros((30, 30), np.uint8)).save(mask)
    err = fails("--data", str(bad), "--split", "val")
    assert str(mask) in err and "grid" in err
    # never writes into the data folder
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(ellipses), "--no-progress",
                 "--output", str(ellipses / "eval")]) == 1  # fmt: skip
    assert not (ellipses / "eval").exists()


def test_overlay_figure_2d_rgb_and_3d():
    import matplotlib.pyplot as plt

    zz, yy, xx = np.mgrid[:12, :20, :24]
    ref = ((zz - 6) ** 2 / 16 + (yy - 10) ** 2 / 36 + (xx - 12) ** 2 / 49 <= 1).astype(np.uint8)
    pred = np.roll(ref, 2, axis=2)
    pred[ref == 0] *= 2  # a second label only in the prediction
    volume = np.random.default_rng(0).normal(size=ref.shape) + ref
    png = overlay_figure(volume, ref, pred, spacing=(3.0, 1.0, 1.0), title="3D case")
    assert png.startswith(b"\x89PNG")
    rgb = np.stack([volume[6]] * 3)
    assert overlay_figure(rgb, ref[6], pred[6], channels=True).startswith(b"\x89PNG")
    empty = np.zeros((20, 24), np.uint8)
    assert overlay_figure(volume[6], empty, empty, labels=[1]).startswith(b"\x89PNG")
    assert plt.get_fignums() == []  # no figure left open in pyplot's registry
    with pytest.raises(ValueError, match="differ in shape"):
        overlay_figure(volume, ref[0], pred)
