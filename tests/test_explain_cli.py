"""``medlens explain`` end to end: tiny runs trained on real MedMNIST data (skipped when it is
absent), explained through the command line; and a tiny synthetic segmentation run.

The runs are trained once per module for a few epochs: the checks do not depend on how good the
models are, only on the files, grids and figures being right and matching the API.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medlens import Image, load_image, save_image
from medlens.cli.main import main
from medlens.explain import METHOD_NAMES, METHODS, attribute
from medlens.tasks.classification import load_run, train_classification
from medlens.tasks.explaining import explain_run

QUIET = {"progress": False, "n_boot": 50, "log": lambda line: None}
PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err, err
    return err


# ----------------------------------------------------------------------------- 2D, BreastMNIST
@pytest.fixture(scope="module")
def breast(real, tmp_path_factory):
    """A writable copy of BreastMNIST and a classification run trained on it for two epochs."""
    root = tmp_path_factory.mktemp("explain-breast")
    (root / "data").mkdir()
    data = root / "data" / "breastmnist.npz"
    shutil.copyfile(real("medmnist", "breastmnist.npz"), data)
    run = root / "run"
    train_classification(data, run, epochs=2, seed=0, **QUIET)
    return data, run


@pytest.fixture(scope="module")
def explained(breast, tmp_path_factory):
    """``medlens explain --method all`` on two validation images: (output, exit code)."""
    data, run = breast
    out = tmp_path_factory.mktemp("explain-out") / "maps"
    code = main(["explain", str(run), "--input", str(data), "--split", "val", "--method", "all",
                 "--limit", "2", "--output", str(out), "--no-progress"])  # fmt: skip
    return out, code


def _val_inputs_and_predictions(data, run, n):
    from medlens.tasks.classification.bundle import predicted_labels

    bundle = load_run(run)
    images = np.load(data)["val_images"][:n, None]
    probs = bundle.probabilities(images, bundle.networks[:1])  # calibrated, as the threshold
    targets = predicted_labels(probs, bundle.metric_task, bundle.threshold)
    x = torch.from_numpy(images).float() / 255.0
    return bundle.networks[0].eval(), x, torch.as_tensor(targets, dtype=torch.long)


def test_every_method_writes_maps_figures_and_faithfulness(breast, explained):
    data, run = breast
    out, code = explained
    assert code == 0
    ids = ["val-000000", "val-000001"]
    for item in ids:
        assert (out / f"{item}.png").read_bytes().startswith(PNG)  # the methods side by side
        for method in METHODS:
            assert (out / f"{item}.{method}.png").read_bytes().startswith(PNG), method
            amap = np.load(out / f"{item}.{method}.npy")
            assert amap.shape == (28, 28) and amap.dtype == np.float32, method
            assert np.isfinite(amap).all(), method
    assert not list(out.glob("*.nii.gz"))
    assert not list(out.glob("val-000002*"))  # --limit 2
    # the deterministic maps are the API's maps for the predicted class
    network, x, targets = _val_inputs_and_predictions(data, run, 2)
    for method in ("gradcam", "ig", "occlusion"):
        expected = attribute(network, x, method, targets).numpy()
        saved = np.stack([np.load(out / f"{item}.{method}.npy") for item in ids])
        np.testing.assert_allclose(saved, expected, rtol=1e-4, atol=1e-6, err_msg=method)
    for method in ("gradcam", "gradcam++", "smoothgrad"):  # non-negative by construction
        assert all(np.load(out / f"{item}.{method}.npy").min() >= 0 for item in ids), method

    figures = json.loads((out / "faithfulness.json").read_text())
    assert figures["kind"] == "classification" and figures["n_images"] == 2
    assert list(figures["methods"]) == list(METHODS)
    for method, entry in figures["methods"].items():
        assert entry["name"] == METHOD_NAMES[method]
        for key in ("deletion_auc", "insertion_auc"):
            assert 0.0 <= entry[key] <= 1.0, (method, key)
            per_image = entry["per_image"][key]
            assert len(per_image) == 2 and entry[key] == pytest.approx(np.mean(per_image))
        rand = entry["randomisation"]
        assert len(rand["steps"]) == len(rand["spearman"]) >= 2, method
        assert all(-1.0 <= s <= 1.0 for s in rand["spearman"]), method
        assert rand["final"] == rand["spearman"][-1]
        assert rand["flagged"] == (rand["final"] >= 0.5)
    page = (out / "explain.html").read_text()
    for method in METHODS:
        assert METHOD_NAMES[method] in page, method
    assert "Deletion AUC" in page and "val-000001" in page


def test_target_option_and_no_faithfulness(breast, tmp_path):
    data, run = breast
    out = tmp_path / "t"
    code = main(["explain", str(run), "--input", str(data), "--split", "val", "--method",
                 "gradcam,ig", "--target", "0", "--limit", "3", "--no-faithfulness",
                 "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    network, x, _ = _val_inputs_and_predictions(data, run, 3)
    for method in ("gradcam", "ig"):
        saved = np.stack([np.load(out / f"val-{i:06d}.{method}.npy") for i in range(3)])
        expected = attribute(network, x, method, 0).numpy()
        np.testing.assert_allclose(saved, expected, rtol=1e-4, atol=1e-6)
    figures = json.loads((out / "faithfulness.json").read_text())
    assert list(figures["methods"]) == ["gradcam", "ig"]
    assert "deletion_auc" not in figures["methods"]["gradcam"]
    assert "randomisation" not in figures["methods"]["gradcam"]


def test_bad_requests_fail_with_one_line(breast, tmp_path, capsys):
    data, run = breast
    base = ["--input", str(data), "--split", "val", "--limit", "1", "--no-progress"]
    capsys.readouterr()
    assert main(["explain", str(run), *base, "--method", "nope", "--output",
                 str(tmp_path / "a")]) != 0  # fmt: skip
    assert "nope" in _error(capsys)
    assert main(["explain", str(tmp_path / "missing-run"), *base, "--output",
                 str(tmp_path / "b")]) != 0  # fmt: skip
    assert "run.json" in _error(capsys)
    assert main(["explain", str(run), "--input", str(tmp_path / "missing.npz"), "--output",
                 str(tmp_path / "b2"), "--no-progress"]) != 0  # fmt: skip
    assert "does not exist" in _error(capsys)
    inside = run / "maps"  # the run folder is an input, read-only as a whole
    assert main(["explain", str(run), *base, "--output", str(inside)]) != 0
    assert "inside the input folder" in _error(capsys) and not inside.exists()
    assert main(["explain", str(run), *base, "--target", "7", "--output",
                 str(tmp_path / "c")]) != 0  # fmt: skip
    _error(capsys)
    assert main(["explain", str(run), *base, "--output", str(run / "maps")]) != 0
    _error(capsys)
    assert not inside.exists() and not (run / "maps").exists()
    for name in ("a", "b", "b2", "c"):
        assert not (tmp_path / name).exists(), name


# ----------------------------------------------------------------------------- 3D, AdrenalMNIST3D
@pytest.fixture(scope="module")
def adrenal(real, tmp_path_factory):
    """A 3D run trained for one epoch on a small real subset of AdrenalMNIST3D."""
    root = tmp_path_factory.mktemp("explain-adrenal")
    (root / "data").mkdir()
    with np.load(real("medmnist", "adrenalmnist3d.npz")) as full:
        subset = {
            "train_images": full["train_images"][:64],
            "train_labels": full["train_labels"][:64],
            "val_images": full["val_images"][:8],
            "val_labels": full["val_labels"][:8],
        }
    data = root / "data" / "adrenal.npz"
    np.savez(data, **subset)
    run = root / "run"
    train_classification(data, run, epochs=1, seed=0, **QUIET)
    return data, run, subset["val_images"]


def _rotation(degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def nifti_volumes(adrenal, tmp_path_factory):
    """Two real volumes as NIfTI files with their own geometry: ``a`` on the model's 28^3 grid
    (no resizing), ``b`` cropped and padded to 20 x 28 x 36 (resized to 28^3 for the model)."""
    _, _, volumes = adrenal
    folder = tmp_path_factory.mktemp("explain-nifti") / "nifti"
    folder.mkdir()
    a = Image(volumes[0], spacing=(0.8, 0.9, 1.5), origin=(10.0, -20.0, 30.0),
              direction=_rotation(30))  # fmt: skip
    b_array = np.pad(volumes[1][4:24], ((0, 0), (0, 0), (4, 4)))
    b = Image(b_array, spacing=(1.2, 0.7, 2.0), origin=(-5.0, 4.0, 1.0), direction=_rotation(-70))
    save_image(a, folder / "a.nii.gz")
    save_image(b, folder / "b.nii.gz")
    return folder


def _model_map(run, path, method):
    """The API's map for the run's predicted class on ``path`` as the model sees it (28^3)."""
    from medlens.tasks.classification.bundle import predicted_labels
    from medlens.tasks.classification.data import read_inputs

    bundle = load_run(run)
    x = read_inputs(path, bundle.spec).images
    probs = bundle.probabilities(x, bundle.networks[:1])
    target = int(predicted_labels(probs, bundle.metric_task, bundle.threshold)[0])
    tensor = torch.from_numpy(np.asarray(x)).float() / 255.0
    return attribute(bundle.networks[0], tensor, method, target)


def _check_on_source_grid(amap, source):
    assert amap.spatial_shape == source.spatial_shape
    np.testing.assert_allclose(amap.spacing, source.spacing, rtol=1e-5)
    np.testing.assert_allclose(amap.origin, source.origin, atol=1e-4)
    np.testing.assert_allclose(amap.direction, source.direction, atol=1e-5)
    np.testing.assert_allclose(amap.affine, source.affine, atol=1e-4)
    assert amap.array.dtype == np.float32 and np.isfinite(amap.array).all()


def test_3d_maps_of_nifti_inputs_are_on_their_own_grid(adrenal, nifti_volumes, tmp_path):
    data, run, _ = adrenal
    out = tmp_path / "maps"
    code = main(["explain", str(run), "--input", str(nifti_volumes), "--method", "gradcam,ig",
                 "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    for name in ("a.nii.gz", "b.nii.gz"):
        source = load_image(nifti_volumes / name)
        for method in ("gradcam", "ig"):
            path = out / f"{name}.{method}.nii.gz"
            assert path.is_file() and not (out / f"{name}.{method}.npy").exists()
            assert (out / f"{name}.{method}.png").read_bytes().startswith(PNG)
            amap = load_image(path)
            _check_on_source_grid(amap, source)
            # the model grid spans the input's extent (align_corners=False resizing both ways):
            # the map on the input grid is the model-grid map resized back; for ``a`` the identity
            model_map = _model_map(run, nifti_volumes / name, method)
            expected = F.interpolate(model_map[None], size=source.spatial_shape, mode="trilinear",
                                     align_corners=False)[0, 0].numpy()  # fmt: skip
            scale = float(np.abs(expected).max())
            assert scale > 0 or method == "gradcam"  # IG: signed, never empty here
            np.testing.assert_allclose(
                amap.array, expected, atol=1e-4 * max(scale, 1e-6), err_msg=f"{name} {method}"
            )
        assert (out / f"{name}.png").read_bytes().startswith(PNG)
    figures = json.loads((out / "faithfulness.json").read_text())
    assert figures["n_images"] == 2 and list(figures["methods"]) == ["gradcam", "ig"]
    for entry in figures["methods"].values():
        assert "randomisation" in entry and 0 <= entry["deletion_auc"] <= 1

    # from the .npz itself: maps on the model grid, as .npy
    out = tmp_path / "npz"
    code = main(["explain", str(run), "--input", str(data), "--split", "val", "--limit", "1",
                 "--no-faithfulness", "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    assert np.load(out / "val-000000.gradcam.npy").shape == (28, 28, 28)
    assert not list(out.glob("*.nii.gz"))


@pytest.mark.slow
def test_3d_occlusion_of_one_nifti_file(adrenal, nifti_volumes, tmp_path):
    """Occlusion on a volume: ~2,000 forward passes of the 3D network (about 15 s on a CPU)."""
    _, run, _ = adrenal
    out = tmp_path / "maps"
    source_path = nifti_volumes / "b.nii.gz"
    code = main(["explain", str(run), "--input", str(source_path), "--method", "occlusion",
                 "--no-faithfulness", "--output", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    amap = load_image(out / "b.nii.gz.occlusion.nii.gz")
    _check_on_source_grid(amap, load_image(source_path))
    assert np.abs(amap.array).max() > 0  # signed evidence, not an empty map
    assert (out / "b.nii.gz.occlusion.png").read_bytes().startswith(PNG)


# ----------------------------------------------------------------------------- segmentation
TINY_SEG = ["network.features=[8,16,16]", "network.strides=[[1,1],[2,2],[2,2]]",
            "network.kernel_sizes=[[3,3],[3,3],[3,3]]", "patch_size=32,32", "batch_size=4",
            "train.batches_per_epoch=6", "train.lr=0.01"]  # fmt: skip


@pytest.fixture(scope="module")
def segmentation(tmp_path_factory, ellipse_images):
    """A tiny 2D U-Net run on synthetic ellipses (as in the segmentation evaluation tests)."""
    from medlens.tasks.segmentation.train import train_segmentation

    root = tmp_path_factory.mktemp("explain-seg")
    data = ellipse_images(root / "data", 8)
    run = root / "run"
    train_segmentation(data, run, epochs=2, overrides=TINY_SEG, progress=False, log=lambda _: None)
    return data, run


def test_segmentation_run_is_explained_per_predicted_region(segmentation, tmp_path):
    data, run = segmentation
    out = tmp_path / "maps"
    result = explain_run(run, data / "images", out, methods=["gradcam", "ig"], limit=1,
                         progress=False, log=lambda _: None)  # fmt: skip
    assert result["kind"] == "segmentation" and result["n_images"] == 1
    for method in ("gradcam", "ig"):
        amap = np.load(out / f"case00.{method}.npy")
        assert amap.shape == (40, 48) and np.isfinite(amap).all(), method
        assert (out / f"case00.{method}.png").read_bytes().startswith(PNG)
    assert np.load(out / "case00.gradcam.npy").min() >= 0
    figures = json.loads((out / "faithfulness.json").read_text())
    assert figures == {k: v for k, v in result.items() if k != "files"}
    for method in ("gradcam", "ig"):
        entry = figures["methods"][method]
        assert 0 <= entry["deletion_auc"] <= 1 and 0 <= entry["insertion_auc"] <= 1
        assert entry["randomisation"]["steps"][0].startswith("network.")
    assert (out / "explain.html").is_file()


def test_layer_option_picks_the_grad_cam_layer(breast, tmp_path, capsys):
    """``--layer`` hooks Grad-CAM on the named module (same map as the API with that layer); a
    misspelt name fails with one line, before anything is written."""
    data, run = breast
    out = tmp_path / "layer"
    argv = ["explain", str(run), "--input", str(data), "--split", "val", "--limit", "2",
            "--method", "gradcam", "--no-faithfulness", "--no-progress"]  # fmt: skip
    assert main([*argv, "--layer", "blocks.2", "--output", str(out)]) == 0
    network = load_run(run).networks[0]
    from medlens.tasks.classification import read_inputs

    images = read_inputs(data, load_run(run).spec, split="val")
    x = torch.from_numpy(np.array(images.images[:2])).float() / 255.0
    expected = attribute(network, x, "gradcam", layer=network.backbone.blocks[2]).numpy()
    for i, name in enumerate(images.ids[:2]):
        saved = np.load(out / f"{name}.gradcam.npy")
        np.testing.assert_allclose(saved, expected[i], rtol=1e-5, atol=1e-7)
    bad = tmp_path / "bad"
    assert main([*argv, "--layer", "nope", "--output", str(bad)]) != 0
    assert "--layer nope" in _error(capsys) and not bad.exists()
