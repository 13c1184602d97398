"""Registry-driven checks of every task on the platform, and run folders of older releases.

Each registered task is taken through the whole life of a run with one parametrised suite:
plan from a tiny dataset, train one epoch, reload, predict (through the files and through
``predict(list[Image])``), evaluate, explain. A task registered without a tiny dataset here, or
without a run folder of its first format from ``tests/fixtures/make_old_runs.py``, fails the
suite.
"""

from __future__ import annotations

import ast
import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

import medlens
from medlens.cli.main import main
from medlens.errors import MedlensError
from medlens.tasks.registry import get_task, task_names
from medlens.testing.tiny import TINY

QUIET = {"progress": False, "log": lambda line: None}
#: The tasks that existed at make_old_runs.py's commit: each has a run folder of its first format.
#: A task registered later has no older format to stay compatible with (yet).
OLD_TASKS = ("classification", "segmentation")


def test_every_registered_task_has_a_tiny_dataset_and_an_old_run(old_runs):
    assert task_names() == sorted(TINY)
    for name in OLD_TASKS:
        assert (old_runs / name / "run.json").is_file(), f"make_old_runs.py writes no {name} run"


@pytest.fixture(scope="module", params=sorted(TINY))
def trained(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(name)
    data, settings = TINY[name](root)
    task = get_task(name)
    plan = task.plan(data, overrides=settings, log=lambda line: None)
    lines = plan.describe()  # what medlens plan prints
    assert lines and all(isinstance(line, str) for line in lines)
    plan_path = plan.save(root / "plan.json")
    assert type(task.plan_type.load(plan_path)) is task.plan_type
    info = task.train(data, root / "run", plan=plan_path, epochs=1, **QUIET)
    assert info["status"] == "complete"
    return name, task, data, root


def test_train_reload_predict_evaluate_explain(trained, tmp_path):
    from medlens.tasks.explaining import explain_run

    name, task, data, root = trained
    run = root / "run"
    predictor = medlens.load_predictor(run)
    assert predictor.task == name
    from medlens.preprocessing import Preprocessor

    if name != "reconstruction":  # k-space goes to the network as measured
        assert Preprocessor.load(run / "preprocessing.json").steps  # one normalisation step
    source = {"classification": data, "detection": data.parent / "images",
              "reconstruction": data}.get(name, data / "images")  # fmt: skip
    if name.startswith("sequence-"):  # a cine folder predicts case by case
        source = data
    options = {"split": "val"} if name == "classification" else {}
    # a registration registers the images to one of them (--fixed)
    given = {"fixed": sorted(source.iterdir())[0]} if name == "registration" else options
    summary = predictor.predict_path(source, tmp_path / "pred", **given)
    assert str(tmp_path / "pred") in summary
    extra = {"output": tmp_path / "eval"} if name != "classification" else options
    evaluation = task.evaluate(predictor.run, data, n_boot=20, progress=False, **extra)
    assert evaluation.lines and json.dumps(evaluation.metrics)
    out = explain_run(
        run,
        source,
        tmp_path / "explain",
        limit=1,
        faithfulness=False,
        split=options.get("split"),
        **QUIET,
    )
    assert (tmp_path / "explain" / "explain.html").is_file() and out["n_images"] >= 1


@pytest.mark.parametrize("name", OLD_TASKS)
def test_old_run_folders_load_and_predict_as_when_written(name, tmp_path, old_runs):
    """Run folders written by the code before the platform (tests/fixtures/make_old_runs.py)
    predict exactly what that code predicted."""
    run = old_runs / name
    predictor = medlens.load_predictor(run)
    if name == "classification":
        out = tmp_path / "p.csv"
        predictor.predict_path(old_runs / "inputs" / "blobs.npz", out, split="val")
        assert out.read_text() == (old_runs / "classification-predictions.csv").read_text()
    else:
        predictor.predict_path(old_runs / "inputs" / "seg", tmp_path / "masks")
        for expected in sorted((old_runs / "segmentation-predictions").iterdir()):
            got = np.asarray(PILImage.open(tmp_path / "masks" / expected.name))
            assert np.array_equal(got, np.asarray(PILImage.open(expected)))


@pytest.mark.parametrize("name", OLD_TASKS)
def test_predict_images_matches_predict_path(name, tmp_path, old_runs):
    """``predict(list[Image])`` gives the file path's results (same rows, same masks)."""
    predictor = medlens.load_predictor(old_runs / name)
    if name == "segmentation":
        files = sorted((old_runs / "inputs" / "seg").iterdir())
        predictions = predictor.predict([medlens.load_image(p) for p in files])
        for prediction, file in zip(predictions, files, strict=True):
            expected = np.asarray(PILImage.open(old_runs / "segmentation-predictions" / file.name))
            assert np.array_equal(np.asarray(prediction.labels.array), expected)
            written = prediction.save(tmp_path)
            assert written[0].name == file.name
        return
    folder = tmp_path / "pngs"
    folder.mkdir()
    arrays = np.load(old_runs / "inputs" / "blobs.npz")["val_images"][:4]
    for i, array in enumerate(arrays):
        PILImage.fromarray(array).save(folder / f"img{i}.png")
    predictor.predict_path(folder, tmp_path / "folder.csv")
    rows = list(csv.DictReader((tmp_path / "folder.csv").open()))
    images = [medlens.load_image(p) for p in sorted(folder.iterdir())]
    predictions = predictor.predict(images)
    for row, prediction in zip(rows, predictions, strict=True):
        mine = prediction.row()
        assert {k: str(v) for k, v in mine.items() if k != "id"} == {
            k: v for k, v in row.items() if k != "id"
        }


def test_commands_never_branch_on_a_task_name():
    """The CLI looks tasks up; no command module names a task (but in help texts)."""
    cli = Path(medlens.__file__).parent / "cli"
    for module in ("learn.py", "plan.py", "explain.py", "serve.py"):
        tree = ast.parse((cli / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                assert not set(names) & set(task_names()), f"{module} compares with a task name"


def test_options_a_task_does_not_take_are_refused(tmp_path, capsys):
    data, _ = TINY["segmentation"](tmp_path)
    code = main(
        [
            "train",
            "--task",
            "segmentation",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "r"),
            "--positive-class",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "--positive-class is not an option of segmentation" in err
    assert (
        main(
            ["train", "--task", "segmentaton", "--data", str(data), "--output", str(tmp_path / "r")]
        )
        == 1
    )
    assert "did you mean 'segmentation'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _predict_seg(run, old_runs, output) -> list[str]:
    """``medlens predict`` of ``run`` on the old runs' segmentation inputs."""
    return [
        "predict",
        str(run),
        "--input",
        str(old_runs / "inputs" / "seg"),
        "--output",
        str(output),
    ]


def test_a_run_of_a_newer_format_is_refused_by_name(tmp_path, capsys, old_runs):
    run = tmp_path / "run"
    shutil.copytree(old_runs / "segmentation", run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "format": "medlens.segmentation/9"}))
    assert main(_predict_seg(run, old_runs, tmp_path / "m")) == 1
    assert "written by a newer medlens" in capsys.readouterr().err


def test_every_task_exports_to_onnx_and_predicts_the_same_on_onnx_runtime(trained, tmp_path, real):
    """``medlens export`` for each registered task: parity measured at export, then the same
    predictions (probabilities within 1e-4, identical classes and masks) on real images through
    ONNX Runtime as through torch, and ``--backend auto`` choosing by a measurement."""
    pytest.importorskip("onnxruntime")
    name, _, _, root = trained
    run = root / "run"
    assert main(["export", str(run), "--format", "onnx"]) == 0
    record = json.loads((run / "onnx" / "export.json").read_text())
    assert record["task"] == name and record["format"] == "medlens-onnx-export/1"
    parity = record["folds"][0]["parity"]
    assert len(record["folds"]) == 1
    # probabilities and boxes: absolute; images in the measurements' units: relative
    assert parity["max_abs_diff"] < 1e-4 or (
        name == "reconstruction" and parity["max_rel_diff"] < 1e-5
    )
    assert record["outside_the_graph"] and record["input"]["shape"][0] == "batch"
    on_torch = medlens.load_predictor(run)
    on_onnx = medlens.load_predictor(run, backend="onnx")
    assert on_torch.backend == "torch" and on_onnx.backend == "onnx"
    assert type(on_onnx.networks[0]).__name__ == "OnnxNetwork"
    if name == "classification":  # real BreastMNIST images through the tiny classifier
        images = np.load(real("medmnist", "breastmnist.npz"))["val_images"][:40]
        folder = tmp_path / "real"
        folder.mkdir()
        for i, array in enumerate(images):
            PILImage.fromarray(array).save(folder / f"b{i:02d}.png")
        loaded = [medlens.load_image(p) for p in sorted(folder.iterdir())]
        a, b = on_torch.predict(loaded), on_onnx.predict(loaded)
        assert all(x.label == y.label for x, y in zip(a, b, strict=True))
        diff = max(
            np.abs(x.probabilities - y.probabilities).max() for x, y in zip(a, b, strict=True)
        )
        assert diff < 1e-4
    elif name == "detection":  # real BCCD blood smears through the tiny detector
        loaded = [
            medlens.load_image(real("bccd", "JPEGImages", f"BloodImage_0000{i}.jpg"))
            for i in (0, 1)
        ]
        loaded = [image.with_array(image.array[..., :96, :128]) for image in loaded]
        a, b = on_torch.predict(loaded), on_onnx.predict(loaded)
        for x, y in zip(a, b, strict=True):  # the same boxes (near-ties may swap places)
            keep_x, keep_y = x.scores >= 0.1, y.scores >= 0.1
            assert keep_x.sum() == keep_y.sum()
            labels_y = np.asarray(y.labels)[keep_y]
            for box, score, label in zip(
                x.boxes[keep_x], x.scores[keep_x], np.asarray(x.labels)[keep_x], strict=True
            ):
                gap = np.abs(y.boxes[keep_y] - box).max(axis=1) + (labels_y != label) * 1e9
                assert gap.min() < 1e-2 and abs(y.scores[keep_y][gap.argmin()] - score) < 1e-4
    elif name == "registration":  # two real HC18 ultrasound crops registered by the tiny net
        loaded = [medlens.load_image(real("hc18", "images", f"{i:03d}_HC.png")) for i in (0, 7)]
        loaded = [image.with_array(image.array[200:272, 300:400]) for image in loaded]
        a, b = on_torch.predict(loaded), on_onnx.predict(loaded)
        for x, y in zip(a, b, strict=True):
            assert float((x.result.field - y.result.field).abs().max()) < 1e-4
    elif name == "reconstruction":  # k-space SIMULATED from two slices of the real T1 series
        from medlens.reconstruction.simulate import simulate_kspace_dataset

        simulate_kspace_dataset(real("dicom", "mr_t1_brain"), tmp_path / "k", max_slices=2,
                                progress=False)  # fmt: skip
        a, b = (p.predict(p.read(tmp_path / "k")) for p in (on_torch, on_onnx))
        x, y = a[0].image.array, b[0].image.array
        assert x.shape == (2, 256, 256) and np.abs(x - y).max() < 1e-4 * np.abs(x).max()
    elif name.startswith("sequence-"):  # a real Sunnybrook cine (a crop of two slices)
        from medlens.tasks.sequences.predict import read_sequences

        cine = read_sequences(real("sunnybrook", "dicoms", "SCD0000101"))[0]
        frames = json.loads((run / "onnx" / "export.json").read_text())["example_shape"][2]
        crop = cine.with_array(cine.array[:frames, 4:6, 96:136, 100:140])
        a, b = on_torch.predict([crop]), on_onnx.predict([crop])
        if name == "sequence-segmentation":
            assert a[0].labels.array.shape == (frames, 2, 40, 40)
            # the logits agree; the tiny network's near-ties may flip a few voxels
            x = torch.rand(1, 1, frames, 40, 40)
            with torch.no_grad():
                gap = (on_torch.networks[0](x) - on_onnx.networks[0](x)).abs().max()
            assert float(gap) < 1e-4
            assert (a[0].labels.array != b[0].labels.array).mean() < 0.005
            with pytest.raises(MedlensError, match=f"this run's ONNX export takes {frames}"):
                on_onnx.predict([cine.with_array(cine.array[: frames - 1, 4:6, 96:136, 100:140])])
        elif name == "sequence-classification":
            assert a[0].label == b[0].label
            assert (
                max(abs(a[0].probabilities[k] - b[0].probabilities[k]) for k in a[0].probabilities)
                < 1e-4
            )
        else:
            assert abs(a[0].value - b[0].value) < 1e-4 * max(1.0, abs(a[0].value))
    else:  # real HC18 ultrasound through the tiny U-Net (a 72x100 crop: a dozen windows)
        warnings.simplefilter("ignore")  # the heads are far larger than the tiny disks
        loaded = [medlens.load_image(real("hc18", "images", f"{i:03d}_HC.png")) for i in (0, 7)]
        loaded = [image.with_array(image.array[200:272, 300:400]) for image in loaded]
        a, b = on_torch.predict(loaded), on_onnx.predict(loaded)
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x.labels.array, y.labels.array)
    auto = medlens.load_predictor(run, backend="auto")
    assert auto.backend in ("torch", "onnx") and set(auto.backend_timing) == {"torch_s", "onnx_s"}


def test_onnx_backend_needs_the_runs_own_export(old_runs, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(old_runs / "segmentation", run)
    assert medlens.load_predictor(run, backend="auto").backend == "torch"  # no export: torch
    with pytest.raises(MedlensError, match="no ONNX export"):
        medlens.load_predictor(run, backend="onnx")
    assert main(["export", str(run), "--format", "tflite"]) == 1
    assert "--format tflite: medlens exports onnx" in capsys.readouterr().err
    (run / "onnx").mkdir()
    (run / "onnx" / "export.json").write_text(
        json.dumps({"format": "medlens-onnx-export/1", "folds": [{"checkpoint_sha256": "0"}]})
    )
    with pytest.raises(MedlensError, match="not an export of this run's checkpoints"):
        medlens.load_predictor(run, backend="onnx")
    args = [*_predict_seg(run, old_runs, tmp_path / "m"), "--backend", "tensorrt"]
    assert (
        main(args) == 1
        and "--backend tensorrt: choose torch, onnx, auto" in capsys.readouterr().err
    )
