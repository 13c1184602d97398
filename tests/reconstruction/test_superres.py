"""Super-resolution: the degradation model and its grid, training beyond cubic interpolation
in-plane and through-plane (SMORE), geometry of the outputs, evaluation and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medlens.errors import MedlensError
from medlens.reconstruction.degrade import degrade, upsample

TINY = ["patch_size=48", "train.batches_per_epoch=12", "network.width=16", "network.blocks=2",
        "val_slices=6"]  # fmt: skip


def test_degrade_averages_blocks_and_upsample_keeps_the_grid():
    x = torch.arange(32.0).reshape(1, 1, 1, 32).repeat(1, 1, 8, 1)
    low = degrade(x, (1, 4))
    assert low.shape == (1, 1, 8, 8) and torch.allclose(low[0, 0, 0], torch.arange(8) * 4 + 1.5)
    up = upsample(low, (1, 4))
    assert up.shape == x.shape
    assert torch.allclose(up[0, 0, 0, 12:-12], x[0, 0, 0, 12:-12], atol=0.05)  # linear: exact
    assert torch.equal(upsample(low, (1, 4), "nearest")[0, 0, 0, :4], torch.full((4,), 1.5))
    volume = torch.rand(1, 1, 13, 6, 5)
    assert degrade(volume, (3, 1, 1)).shape == (1, 1, 4, 6, 5)  # the partial block dropped
    assert torch.allclose(degrade(volume, (3, 1, 1))[0, 0, 1], volume[0, 0, 3:6].mean(dim=0))
    with pytest.raises(ValueError, match="factors"):
        degrade(volume, (3, 1))


def _images(folder: Path, n: int = 6, size=(96, 120)) -> Path:
    from medlens.image import Image
    from medlens.io import save_image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for i in range(n):
        image = np.zeros(size, np.float32)
        for _ in range(8):
            cy, cx, r = rng.uniform(0, size[0]), rng.uniform(0, size[1]), rng.uniform(4, 16)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += rng.uniform(50, 100)
        save_image(Image(image, (0.5, 0.5), (3.0, -2.0)), folder / f"im{i}.nii.gz")
    return folder


def test_in_plane_training_beats_cubic_and_keeps_the_world_grid(tmp_path):
    import medlens
    from medlens.io import load_image
    from medlens.tasks.reconstruction.train import train_reconstruction

    data = _images(tmp_path / "images")
    info = train_reconstruction(data, tmp_path / "run", epochs=4, progress=False,
                                overrides=[*TINY, "train.lr=3e-3"], log=lambda _: None)  # fmt: skip
    assert info["evaluation"]["psnr"] > info["evaluation"]["cubic_psnr"] + 0.05  # 48 steps
    predictor = medlens.load_predictor(tmp_path / "run")
    predictor.predict_path(data, tmp_path / "out")
    source, fine = load_image(data / "im0.nii.gz"), load_image(tmp_path / "out" / "im0.nii.gz")
    assert fine.array.shape == (384, 480) and np.allclose(fine.spacing, (0.125, 0.125))
    # the coarse pixel (0, 0) is the mean of fine pixels 0..3 along each axis, in the world too
    coarse_centre = source.index_to_world(np.array([[0.0, 0.0]]))
    fine_centres = fine.index_to_world(np.array([[1.5, 1.5]]))
    assert np.allclose(coarse_centre, fine_centres)


def test_through_plane_smore_learns_from_in_plane_slices(tmp_path):
    """Thick-slice volumes only (3 mm slices, 1 mm pixels): trained on their in-plane slices,
    evaluated on the thin originals (degraded by the plan's factors and predicted back)."""
    import medlens
    from medlens.image import Image
    from medlens.io import save_image
    from medlens.tasks.reconstruction.superres import superres_lr
    from medlens.tasks.registry import get_task

    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:36, :48, :48]
    thin, thick = tmp_path / "thin", tmp_path / "thick"
    thin.mkdir()
    thick.mkdir()
    for i in range(4):
        volume = np.zeros((36, 48, 48), np.float32)
        for _ in range(10):
            c, r = rng.uniform(0, 48, 3), rng.uniform(3, 10)
            volume[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] += 80
        image = Image(volume, (1.0, 1.0, 1.0))
        save_image(image, thin / f"v{i}.nii.gz")
        save_image(superres_lr(image, [3, 1, 1]), thick / f"v{i}.nii.gz")
    task = get_task("reconstruction")
    plan = task.plan(thick, log=lambda _: None)
    assert plan.kind == "superres" and plan.factors == [3, 1, 1] and plan.through_plane
    settings = ["patch_size=48", "train.batches_per_epoch=12", "network.width=16",
                "network.blocks=2", "train.lr=3e-3"]  # fmt: skip
    info = task.train(thick, tmp_path / "run", epochs=4, progress=False, log=lambda _: None,
                      overrides=settings)  # fmt: skip
    assert info["evaluation"]["psnr"] > info["evaluation"]["cubic_psnr"]
    run = medlens.load_predictor(tmp_path / "run").run
    result = task.evaluate(run, thin, n_boot=50, progress=False, output=tmp_path / "eval")
    metrics = result.metrics
    assert metrics["factors"] == [3, 1, 1] and metrics["n_files"] == 4
    assert metrics["metrics"]["cubic_psnr"]["mean"] > metrics["metrics"]["nearest_psnr"]["mean"]
    assert metrics["psnr_gain_vs_cubic"]["mean"] > 0
    assert metrics["baselines"] == ["nearest", "cubic"]
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "<img" in page and "<th>nearest</th><th>cubic</th>" in page


def test_superres_refuses_what_it_cannot_do(tmp_path):
    from medlens.image import Image
    from medlens.tasks.plan import PlanError
    from medlens.tasks.reconstruction.plan import make_superres_plan
    from medlens.tasks.reconstruction.superres import planes

    plan = make_superres_plan({"spatial_dims": 2})
    assert plan.factors == [4, 4] and not plan.through_plane
    with pytest.raises(MedlensError, match="give factors"):
        planes(Image(np.ones((4, 16, 16), np.float32), (1, 1, 1)), plan)
    with pytest.raises(PlanError, match="multiple of the factors"):
        plan.with_overrides(["patch_size=50"])
    with pytest.raises(PlanError, match="one >= 2"):
        plan.with_overrides(["factors=[1,1]"])
    thick = make_superres_plan({"spatial_dims": 3, "slice_ratio": 4.4})
    assert thick.factors == [4, 1, 1] and thick.through_plane


def test_one_thick_volume_trains_on_its_own_slices(tmp_path):
    """SMORE's setting: a single thick-slice volume, split by its in-plane slices."""
    from medlens.image import Image
    from medlens.io import save_image
    from medlens.tasks.reconstruction.train import train_reconstruction

    rng = np.random.default_rng(2)
    (tmp_path / "one").mkdir()
    save_image(Image(rng.random((6, 40, 40)).astype(np.float32), (1.0, 1.0, 3.0)),
               tmp_path / "one" / "thick.nii.gz")  # fmt: skip
    info = train_reconstruction(tmp_path / "one", tmp_path / "run", epochs=1, progress=False,
                                overrides=["patch_size=30", "train.batches_per_epoch=2",
                                           "network.width=8", "network.blocks=1"],
                                log=lambda _: None)  # fmt: skip
    assert info["status"] == "complete" and info["data"]["planes"] == 6
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert plan["factors"] == [3, 1, 1]
