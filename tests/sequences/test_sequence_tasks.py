"""The three sequence tasks from the command line: plan, train, predict, evaluate, explain and
export on a cine folder; that they learn; their splits and scaling; bad input in one line."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from medlens.cli.main import main
from medlens.errors import DatasetError
from medlens.testing.tiny import cines

FAST = ["network.features=[8,16]", "network.hidden=8", "batch_size=4", "frames=8",
        "size=16,16", "batches_per_epoch=8", "lr=0.01"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return cines(tmp_path_factory.mktemp("cines"))


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_regression_from_the_command_line_learns_and_reports(data, tmp_path, capsys):
    run = tmp_path / "ef"
    args = ["train", "--task", "sequence-regression", "--data", str(data), "--output", str(run),
            "--epochs", "30", "--no-progress", *_sets(FAST)]  # fmt: skip
    assert main(args) == 0
    spec = json.loads((run / "sequence.json").read_text())
    split = json.loads((run / "splits.json").read_text())["folds"][0]
    values = {r["case"]: float(r["ef_percent"]) for r in _rows(data / "cases.csv")}
    train = [values[i] for i in split["train"]]
    # standardised by the training cases only
    assert spec["offset"] == pytest.approx(np.mean(train)) and spec["column"] == "ef_percent"
    assert not set(split["train"]) & set(split["val"])
    capsys.readouterr()
    metrics = tmp_path / "m.json"
    assert main(["evaluate", str(run), "--data", str(data), "--json", str(metrics),
                 "--no-progress", "--bootstrap", "200"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "SIMULATED" in out and "mae (ef_percent)" in out
    result = json.loads(metrics.read_text())
    spread = np.std(list(values.values()))
    # learnt: well under the spread of the values (about 28 points), agreeing in rank
    assert result["metrics"]["mae"]["value"] < spread / 3 and result["metrics"]["r"]["value"] > 0.9
    report = (run / "evaluation" / "report.html").read_text()
    assert "Bland-Altman" in report and "SIMULATED" in report
    cases = _rows(run / "evaluation" / "cases.csv")
    assert len(cases) == 12 and {"id", "truth", "predicted", "error"} <= set(cases[0])
    # --split val: the run's own validation cases only
    assert main(["evaluate", str(run), "--data", str(data), "--split", "val", "--json",
                 str(metrics), "--no-progress", "--bootstrap", "50"]) == 0  # fmt: skip
    assert json.loads(metrics.read_text())["cases"] == len(split["val"])
    assert main(["predict", str(run), "--input", str(data / "cines" / "c00.nii.gz"), "--output",
                 str(tmp_path / "pred")]) == 0  # fmt: skip
    (row,) = _rows(tmp_path / "pred" / "predictions.csv")
    assert row["id"] == "c00" and abs(float(row["ef_percent"]) - values["c00"]) < spread
    assert main(["explain", str(run), "--input", str(data), "--output", str(tmp_path / "x"),
                 "--limit", "2", "--no-progress"]) == 0  # fmt: skip
    assert (tmp_path / "x" / "explain.html").is_file()


def test_classification_and_segmentation_learn_what_moves(data, tmp_path):
    from medlens.tasks.registry import get_task
    from medlens.tasks.run_folder import RunFolder

    quiet = {"progress": False, "log": lambda _: None}
    task = get_task("sequence-classification")
    task.train(data, tmp_path / "cls", epochs=25, overrides=FAST, model="cnn-lstm", **quiet)
    split = json.loads((tmp_path / "cls" / "splits.json").read_text())["folds"][0]
    labels = {r["case"]: r["label"] for r in _rows(data / "cases.csv")}
    assert {labels[i] for i in split["val"]} == {"strong", "weak"}  # stratified
    assert json.loads((tmp_path / "cls" / "sequence.json").read_text())["network"] == "cnn-lstm"
    ev = task.evaluate(RunFolder(tmp_path / "cls"), data, n_boot=50, progress=False,
                       output=tmp_path / "ce")  # fmt: skip
    assert ev.metrics["metrics"]["accuracy"]["value"] >= 0.9
    seg = get_task("sequence-segmentation")
    seg.train(data, tmp_path / "seg", epochs=12, overrides=["network.features=[8,16]",
              "batch_size=2", "batches_per_epoch=8", "lr=0.003"], **quiet)  # fmt: skip
    ev = seg.evaluate(RunFolder(tmp_path / "seg"), data, n_boot=50, progress=False,
                      output=tmp_path / "se")  # fmt: skip
    assert ev.metrics["metrics"]["dice"]["mean"] > 0.9
    assert ev.metrics["metrics"]["ef"]["mae"]["value"] < 8
    predicted = seg.load_predictor(RunFolder(tmp_path / "seg"))
    predicted.predict_path(data, tmp_path / "masks")
    maps = tmp_path / "masks" / "c00.nii.gz"
    import medlens

    assert medlens.load_image(maps).array.shape == (8, 2, 16, 16)
    row = _rows(tmp_path / "masks" / "predictions.csv")[0]
    assert {"edv_ml", "esv_ml", "sv_ml", "ef_percent", "ed_phase", "es_phase"} <= set(row)


def test_bad_input_is_one_line_and_writes_nothing(data, tmp_path, capsys):
    from medlens.io.video import write_video
    from medlens.tasks.sequences.data import CineSet

    def fails(args, text):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1, err

    train = ["train", "--data", str(data), "--no-progress"]
    fails([*train, "--task", "sequence-regression", "--output", str(tmp_path / "a"),
           "--column", "nope"], "no value column 'nope' to learn")  # fmt: skip
    fails([*train, "--task", "sequence-regression", "--output", str(tmp_path / "a"),
           "--column", "label"], "holds values that are not numbers")  # fmt: skip
    fails([*train, "--task", "sequence-segmentation", "--output", str(tmp_path / "a"),
           "--set", "network.name=cnn-gru"], "a segmentation run uses temporal-unet")  # fmt: skip
    fails([*train, "--task", "sequence-classification", "--output", str(tmp_path / "a"),
           "--positive-class", "strong"], "--positive-class is not an option")  # fmt: skip
    assert not (tmp_path / "a").exists()
    # a label map of another shape than its cine
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    import medlens
    from medlens.io import save_image

    label = medlens.load_image(broken / "labels" / "c03.nii.gz")
    save_image(label.with_array(label.array[:, :, :8]), broken / "labels" / "c03.nii.gz")
    with pytest.raises(DatasetError, match="label maps of shape"):
        CineSet(broken).load(3)
    # prediction: a sequence shorter than the window, a video that cannot be decoded, a still
    run = tmp_path / "run"
    get = ["train", "--task", "sequence-classification", "--data", str(data), "--output",
           str(run), "--epochs", "1", "--no-progress", *_sets(FAST)]  # fmt: skip
    assert main(get) == 0
    cine = medlens.load_image(data / "cines" / "c01.nii.gz")
    save_image(cine.with_array(cine.array[:3]), tmp_path / "short.nii.gz")
    predict = ["predict", str(run), "--output", str(tmp_path / "p"), "--input"]
    fails([*predict, str(tmp_path / "short.nii.gz")],
          "3 frames, shorter than the model's window of 4")  # fmt: skip
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video at all")
    fails([*predict, str(tmp_path / "bad.mp4")], "bad.mp4")
    frames = np.zeros((1, 16, 16), np.uint8)
    write_video(frames, tmp_path / "one.mp4", fps=25)
    fails([*predict, str(tmp_path / "one.mp4")], "a sequence of one frame")
    save_image(medlens.Image(np.zeros((16, 16), np.float32)), tmp_path / "still.nii.gz")
    fails([*predict, str(tmp_path / "still.nii.gz")], "not a sequence")
    fails(["evaluate", str(run), "--data", str(data), "--split", "test"],
          "a sequence run's splits are train and val")  # fmt: skip


def test_a_cine_folder_given_to_segmentation_names_the_sequence_tasks(data, tmp_path, capsys):
    from medlens.data import detect_format

    assert detect_format(data) == "cine"
    plan = ["plan", str(data), "--output", str(tmp_path / "plan.json")]
    assert main(plan) == 1
    assert "--task sequence-segmentation" in capsys.readouterr().err
    assert main([*plan, "--task", "sequence-classification"]) == 0
    assert "2 classes of 'label' (strong, weak)" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--task", "sequence-classification", "--data", str(data), "--output",
                 str(run), "--plan", str(tmp_path / "plan.json"), "--epochs", "1",
                 "--no-progress", *_sets(FAST)]) == 0  # fmt: skip
    assert json.loads((run / "plan.json").read_text())["frames"] == 8
    assert main(["train", "--task", "segmentation", "--data", str(data), "--output",
                 str(tmp_path / "seg")]) == 1  # fmt: skip
    assert "sequence-segmentation (per-frame, with a time axis)" in capsys.readouterr().err
