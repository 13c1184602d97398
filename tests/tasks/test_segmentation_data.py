"""Segmentation data: preprocessing onto the plan's grid and patch sampling."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.data.dataset import Sample
from medlens.image import Image, Role
from medlens.tasks.segmentation import make_plan
from medlens.tasks.segmentation.data import PatchBatches, normalise, preprocess_case


def _plan(dims=2, modality="US", size=64):
    fp = {
        "name": "toy", "task": "segmentation", "spatial_dims": dims, "channels": 1,
        "modality": modality, "size": {"median": [size] * dims},
        "spacing": {"median": [0.5] * dims}, "anisotropic": False, "label_values": [0, 1, 2],
        "intensity": [{"n_voxels": 10, "mean": 5.0, "std": 2.0, "p00_5": 0.0, "p99_5": 9.0}],
    }  # fmt: skip
    return make_plan(fp)


def _sample(shape=(40, 50), spacing=(0.25, 0.25)):
    rng = np.random.default_rng(0)
    array = rng.normal(100, 10, shape).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[10:20, 10:30] = 1
    labels[30:34, 40:44] = 2
    image = Image(array, spacing=spacing)
    return Sample(image=image, mask=image.with_array(labels, role=Role.LABEL), id="case0")


def test_preprocess_resamples_both_onto_one_grid_and_normalises():
    plan = _plan()
    case = preprocess_case(_sample(), plan)
    factor = 0.25 / plan.target_spacing[0]
    assert case.image.shape == (1, round(40 * factor), round(50 * factor))
    assert case.label.shape == case.image.shape[1:]
    assert set(np.unique(case.label)) <= {0, 1, 2}  # nearest: no blended labels
    assert abs(case.image.mean()) < 1e-4 and abs(case.image.std() - 1) < 1e-3  # z-score
    assert set(case.foreground) == {1, 2} and case.meta["shape"] == [40, 50]
    ct = _plan(modality="CT")
    assert np.allclose(normalise(np.array([[-5.0, 5.0, 20.0]]), ct), [[-2.5, 0.0, 2.0]])


def test_patches_are_seeded_padded_and_oversample_foreground():
    plan = _plan()
    case = preprocess_case(_sample(), plan)
    batches = PatchBatches([case], (32, 32), 6, batches_per_epoch=20, seed=3,
                           foreground_oversampling=0.5)  # fmt: skip
    first = [y.clone() for _, y in batches]
    again = [y for _, y in batches]
    assert all((a == b).all() for a, b in zip(first, again, strict=True))  # same epoch, same
    batches.set_epoch(1)
    assert any((a != b).any() for a, b in zip(first, list(y for _, y in batches), strict=True))
    x, y = next(iter(batches))
    assert x.shape == (6, 1, 32, 32) and y.shape == (6, 1, 32, 32)
    forced = [float((y[i] > 0).any()) for _, y in batches for i in range(3, 6)]
    assert np.mean(forced) == 1.0  # the forced half always holds foreground
    with pytest.raises(Exception, match="no training cases"):
        PatchBatches([], (8, 8), 2)


def test_augmentation_moves_labels_with_images_and_keeps_their_values():
    import torch

    from medlens.tasks.segmentation.augment import segmentation_augment

    images = torch.zeros(8, 1, 32, 32)
    images[:, :, 8:20, 6:18] = 5.0
    labels = (images > 0).long()
    out_x, out_y = segmentation_augment(2)(images, labels, torch.Generator().manual_seed(0))
    assert out_y.dtype == labels.dtype and set(out_y.unique().tolist()) <= {0, 1}
    moved = out_y.sum(dim=(1, 2, 3)) > 0
    # where the image's square went, the label went: compare with the brightest region
    agree = ((out_x > out_x.mean(dim=(2, 3), keepdim=True)).long() == out_y).float().mean()
    assert moved.all() and agree > 0.9


def test_the_plans_augmentation_sets_the_scale_range_and_is_checked():
    import torch

    from medlens.tasks.plan import PlanError
    from medlens.tasks.segmentation import apply_plan_overrides
    from medlens.tasks.segmentation.augment import segmentation_augment

    plan = _plan()
    assert plan.augmentation == {"scale": 0.15, "rotate": 15.0, "p": 0.3}
    wide = apply_plan_overrides(plan, ["augmentation.scale=0.4", "augmentation.p=1"])
    assert wide.augmentation == {"scale": 0.4, "rotate": 15.0, "p": 1.0}
    for bad in ("augmentation.scale=1.2", "augmentation.p=2", "augmentation.shear=3"):
        with pytest.raises(PlanError, match="augmentation"):
            apply_plan_overrides(plan, [bad])
    images = torch.zeros(16, 1, 48, 48)
    images[:, :, 14:34, 14:34] = 5.0
    labels = (images > 0).long()
    areas = {}
    for scale in (0.0, 0.4):  # flips keep the area; only scaling changes it
        augment = segmentation_augment(2, scale=scale, rotate=0.0, p=1.0)
        _, out = augment(images, labels, torch.Generator().manual_seed(0))
        areas[scale] = out.sum(dim=(1, 2, 3)).float() / 400
    assert torch.allclose(areas[0.0], torch.ones(16))
    spread = areas[0.4]
    assert spread.min() < 0.8 and spread.max() > 1.2 and (spread > 0.3).all()


def test_zoomed_plan_scales_each_image_and_predicts_back_onto_its_grid():
    import torch

    from medlens.tasks.segmentation import apply_plan_overrides
    from medlens.tasks.segmentation.predict import SegmentationRun, mirror_default, predict_image

    # TTA: on in 2D and for 3D volumes of about a patch, off for larger ones (8 passes a window)
    assert mirror_default(_plan()) and mirror_default(_plan(dims=3))
    assert not mirror_default(_plan(dims=3, size=400))

    plan = apply_plan_overrides(_plan(), ["target_scale=2,2", "patch_size=32,32"])
    yy, xx = np.mgrid[:40, :50]
    disk = (yy - 20) ** 2 + (xx - 24) ** 2 <= 100
    shapes, grids = [], []
    for spacing in ((0.1, 0.1), (0.3, 0.3)):  # a zoomed and a wide view of the same picture
        image = Image(np.where(disk, 200.0, 50.0).astype(np.float32), spacing=spacing)
        sample = Sample(image=image, mask=image.with_array(disk.astype(np.uint8)), id="c")
        case = preprocess_case(sample, plan)
        shapes.append(case.image.shape)
        grids.append(case.meta["grid_spacing"])
        assert case.label.sum() == pytest.approx(disk.sum() / 4, rel=0.1)  # same pixel share

        class Bright(torch.nn.Module):  # "foreground where the normalised image is positive"
            def forward(self, x):
                return torch.cat([-x, x], dim=1) * 10

        run = SegmentationRun(None, {}, plan, [Bright()])
        predicted = predict_image(run, image, postprocess=False)
        assert predicted.spatial_shape == (40, 50) and predicted.spacing == spacing
        mask = predicted.array.astype(bool)  # half the pixels and back: the edge blurs a pixel
        assert 2 * (mask & disk).sum() / (mask.sum() + disk.sum()) > 0.92
    assert shapes == [(1, 20, 25), (1, 20, 25)]  # both halved, whatever their spacing
    np.testing.assert_allclose(grids, [[0.2, 0.2], [0.6, 0.6]])
    from medlens.tasks.segmentation import PlanError

    with pytest.raises(PlanError, match="target_scale"):
        apply_plan_overrides(plan, ["target_scale=0,2"])
