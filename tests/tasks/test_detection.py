"""Detection: FCOS targets, planning from the boxes, geometry of predictions, learning."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import medlens
from medlens.errors import MedlensError
from medlens.image import Image
from medlens.models.fcos import FCOS, fcos_locations
from medlens.tasks.detection.loss import FCOSLoss, assign_targets, box_ellipsoids, centreness
from medlens.tasks.detection.predict import _unflip, _windows
from medlens.tasks.registry import get_task
from medlens.testing.tiny import squares
from medlens.transforms import boxes_from_mask

QUIET = {"progress": False, "log": lambda line: None}


def test_locations_follow_the_networks_outputs():
    net = FCOS(
        2,
        1,
        2,
        backbone="resnet10",
        levels=(1, 2, 3),
        fpn_channels=8,
        backbone_options={"width": 4},
    )
    out = net(torch.zeros(1, 1, 64, 96))
    points, strides = net.locations((64, 96))
    assert out.shape == (1, points.shape[0], 2 + 4 + 1)
    assert net.strides == [4, 8, 16] and strides.unique().tolist() == [4.0, 8.0, 16.0]
    assert points.shape[0] == 16 * 24 + 8 * 12 + 4 * 6
    # the first location of each level sits at the centre of the pixels it covers
    assert points[0].tolist() == [1.5, 1.5] and points[1].tolist() == [5.5, 1.5]  # x varies fastest
    same, _ = fcos_locations([4, 8, 16], (64, 96))
    assert torch.equal(points, same)


def test_every_box_gets_a_location_and_overlaps_learn_the_smaller_box():
    points, strides = fcos_locations([4, 8], (64, 64))
    ranges = torch.tensor([[0.0, 32.0], [32.0, 1e8]])[(strides == 8).long()]
    boxes = torch.tensor(
        [[8.0, 8.0, 40.0, 40.0], [12.0, 12.0, 20.0, 20.0], [50.0, 50.0, 51.0, 51.0]]
    )
    which, distances = assign_targets(points, strides, ranges, boxes)
    assert set(which[which >= 0].tolist()) == {0, 1, 2}  # even the 1-pixel box
    inside_small = ((points >= 12) & (points <= 20)).all(1) & (strides == 4)
    assert (which[inside_small & (which >= 0)] == 1).all()
    pos = which >= 0
    assert (distances[pos & (which != 2)] > 0).all()  # the 1-pixel box: its nearest location
    c = centreness(torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 3.0, 3.0, 1.0]]))
    assert c.tolist() == pytest.approx([1.0, 1 / 3])


def test_the_loss_falls_when_fitting_one_batch():
    torch.manual_seed(0)
    net = FCOS(
        2, 1, 1, backbone="resnet10", levels=(1, 2), fpn_channels=16, backbone_options={"width": 8}
    )
    x = torch.randn(2, 1, 64, 64)
    x[0, :, 10:30, 10:30] += 3
    x[1, :, 30:50, 20:44] += 3
    boxes = [torch.tensor([[9.5, 9.5, 29.5, 29.5]]), torch.tensor([[19.5, 29.5, 43.5, 49.5]])]
    labels = [torch.tensor([0]), torch.tensor([0])]
    loss_fn = FCOSLoss(1, 2, net.locations, [[0, 32], [32, 1e8]])
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = loss_fn(net(x), ((64, 64), boxes, labels))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    empty = loss_fn(net(x), ((64, 64), [torch.zeros(0, 4)] * 2, [torch.zeros(0)] * 2))
    assert torch.isfinite(empty)  # images without boxes are valid negatives


def test_box_ellipsoids_match_a_brute_force_oracle():
    shape = (20, 24, 28)  # z, y, x
    boxes = torch.tensor(
        [
            [6.0, 9.0, 6.0, 14.0, 15.0, 10.0],  # x 6-14, y 9-15, z 6-10
            [20.2, 3.1, 15.0, 20.4, 3.3, 15.2],  # smaller than a voxel: its nearest voxel
            [40.0, 40.0, 40.0, 50.0, 50.0, 50.0],  # outside the array
            [-3.0, 18.0, 12.0, 5.0, 26.0, 22.0],  # cut by the array's edges
        ]
    )
    labels = torch.tensor([1, 0, 0, 1])
    masks = box_ellipsoids(shape, boxes, labels, 2)
    z, y, x = np.indices(shape)
    oracle = np.zeros((2, *shape))
    for (x1, y1, z1, x2, y2, z2), k in zip(boxes.tolist(), labels.tolist(), strict=True):
        c, r = (
            [(x1 + x2) / 2, (y1 + y2) / 2, (z1 + z2) / 2],
            [(x2 - x1) / 2, (y2 - y1) / 2, (z2 - z1) / 2],
        )
        d = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
        oracle[k] = np.maximum(oracle[k], d <= 1)
    oracle[0, 15, 3, 20] = 1  # the tiny box's nearest voxel (z, y, x)
    assert np.array_equal(masks.numpy(), oracle)
    # the ellipsoid's volume, 4/3 pi a b c, within the discretisation's error
    first = box_ellipsoids(shape, boxes[:1], labels[:1], 2)[1].sum()
    assert float(first) == pytest.approx(4 / 3 * np.pi * 4 * 3 * 2, rel=0.15)


def test_the_dense_head_trains_beside_the_boxes_and_is_absent_at_inference():
    torch.manual_seed(0)
    net = FCOS(
        3,
        1,
        1,
        backbone="resnet10",
        levels=(1,),
        fpn_channels=8,
        backbone_options={"width": 4},
        dense_head=True,
    )
    x = torch.randn(2, 1, 16, 32, 32)
    x[0, :, 4:10, 8:14, 8:14] += 3
    boxes = [torch.tensor([[7.5, 7.5, 3.5, 13.5, 13.5, 9.5]]), torch.zeros(0, 6)]
    labels = [torch.tensor([0]), torch.zeros(0, dtype=torch.long)]
    targets = ((16, 32, 32), boxes, labels)
    detections, dense = net(x)
    assert dense.shape == (2, 1, 4, 8, 8)  # the finest level, stride 4
    with_dense = FCOSLoss(1, 3, net.locations, [[0, 1e8]], dense_weight=1.0)
    without = FCOSLoss(1, 3, net.locations, [[0, 1e8]])
    assert float(with_dense((detections, dense), targets)) > float(without(detections, targets))
    with_dense((detections, dense), targets).backward()
    assert net.dense_out.weight.grad.abs().sum() > 0
    net.eval()
    assert isinstance(net(x), torch.Tensor)  # prediction and export see one tensor


@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1), (2,), (0, 2)])
def test_unflip_returns_boxes_to_the_unflipped_frame(axes):
    shape = (20, 24, 28) if max(axes) == 2 else (24, 28)
    mask = torch.zeros(shape)
    region = (slice(3, 9), slice(5, 17), slice(2, 11))[: len(shape)]
    mask[region] = 1
    flipped = boxes_from_mask(mask.flip(list(axes))).numpy()
    assert np.allclose(_unflip(flipped, axes, shape), boxes_from_mask(mask).numpy())


def test_windows_cover_the_image():
    assert _windows((100, 120), (96, 96), 0.5) == [([0, 0], [100, 120])]  # within 1.5x
    windows = _windows((300, 96), (96, 96), 0.5)
    starts = sorted(w[0][0] for w in windows)
    assert starts[0] == 0 and starts[-1] == 300 - 96 and all(w[1] == [96, 96] for w in windows)


def test_predictions_are_in_the_input_images_pixels(tmp_path, monkeypatch):
    """A box found on the plan's grid lands on the same anatomy in the input's own pixels,
    whatever the resampling and the origin."""
    import medlens.tasks.detection.predict as predicting

    data, settings = squares(tmp_path)
    task = get_task("detection")
    plan = task.plan(data, overrides=[*settings, "target_spacing=1.0,1.0"], log=lambda s: None)
    run = predicting.DetectionRun(tmp_path, {}, plan, [])
    image = Image(np.zeros((40, 60), np.float32), spacing=(0.5, 0.5), origin=(10.0, -4.0))

    def found(networks, array, the_plan, mirror=None):
        assert array.shape[1:] == (20, 30)  # the grid: half the pixels
        return np.array([[4.5, 2.5, 9.5, 7.5]]), np.array([0.9]), np.array([1])

    monkeypatch.setattr(predicting, "detect_array", found)
    pixels, world, _scores, _labels = predicting.detect_image(run, image)
    # grid x 4.5..9.5 is world 14.5..19.5 mm: input index (14.5 - 10) / 0.5 = 9 .. 19
    assert pixels[0].tolist() == pytest.approx([9.0, 5.0, 19.0, 15.0])
    assert world[0].tolist() == pytest.approx([14.5, -1.5, 19.5, 3.5])


def test_a_tiny_detector_learns_and_writes_the_contracted_csv(tmp_path):
    data, settings = squares(tmp_path, n=12)
    task = get_task("detection")
    overrides = [s for s in settings if not s.startswith(("train.batches", "train.val"))]
    overrides += [
        "train.batches_per_epoch=12",
        "train.val_every=20",
        "batch_size=4",
        "train.lr=0.003",
        "network.width=16",
        "network.fpn_channels=32",
    ]
    plan = task.plan(data, overrides=overrides, log=lambda s: None)
    assert plan.class_names == ["disk", "square"]
    info = task.train(
        data, tmp_path / "run", plan=plan.save(tmp_path / "plan.json"), epochs=20, **QUIET
    )
    assert info["status"] == "complete"
    evaluation = task.evaluate(
        medlens.load_predictor(tmp_path / "run").run,
        data,
        split="all",
        n_boot=50,
        progress=False,
        output=tmp_path / "eval",
    )
    assert evaluation.metrics["ap"]["map50"] > 0.5, evaluation.lines
    lo, hi = evaluation.metrics["ap"]["map50_ci"]
    assert lo <= evaluation.metrics["ap"]["map50"] <= hi
    predictor = medlens.load_predictor(tmp_path / "run")
    predictor.predict_path(data.parent / "images", tmp_path / "pred")
    with (tmp_path / "pred" / "detections.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == ["image", "label", "score", "x1", "y1", "x2", "y2"]
    truth = list(csv.DictReader(data.open()))
    first = [r for r in rows if r["image"] == "case00" and float(r["score"]) > 0.3]
    expected = [r for r in truth if r["image"].endswith("case00.png")]
    assert len(first) >= 1
    best = [max(_iou(r, t) for r in first) for t in expected]
    assert max(best) > 0.5  # the CSV's pixels are the input's pixels (edges, COCO's convention)
    payload = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert payload["images"][0]["detections"][0]["label"] in ("disk", "square")


def _iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = (float(a[k]) for k in ("x1", "y1", "x2", "y2"))
    bx1, by1, bx2, by2 = (float(b[k]) for k in ("x1", "y1", "x2", "y2"))
    w, h = max(0.0, min(ax2, bx2) - max(ax1, bx1)), max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = w * h
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


def test_wrong_data_is_refused_by_name(tmp_path):
    from medlens.testing.tiny import blobs

    task = get_task("detection")
    data, _ = blobs(tmp_path)
    with pytest.raises(MedlensError, match=r"a classification dataset: detection needs boxes"):
        task.train(data, tmp_path / "run", **QUIET)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((32, 32), np.uint8)).save(empty / "images" / "a.png")
    (empty / "boxes.csv").write_text("image,x1,y1,x2,y2,label\nimages/a.png,,,,,\n")
    with pytest.raises(MedlensError, match="no boxes"):
        task.plan(empty / "boxes.csv", log=lambda s: None)


def test_bccd_plan(real):
    task = get_task("detection")
    plan = task.plan(real("bccd"), log=lambda s: None)
    assert plan.class_names == ["Platelets", "RBC", "WBC"] and plan.in_channels == 3
    assert all(p % 32 == 0 for p in plan.patch_size)
    # platelets (about 37 pixels) keep at least 12 pixels on the grid; levels cover the cells
    assert 37 / plan.target_spacing[0] >= 12 and plan.strides[0] == 8
    assert plan.ranges[0][0] == 0 and plan.ranges[-1][1] >= 1e6
    assert plan.box_sizes_mm["per_class"]["RBC"]["n"] == 3350
    assert plan.network["dense_weight"] == 0.0  # 2D: many boxes per image, no dense head


def test_tile_sampling_draws_large_scans_as_often_as_their_patches():
    from medlens.tasks.detection.data import BoxBatches, DetectionCase, case_weights

    def case(name, shape):
        box = np.array([[1, 1, 1, 4, 4, 4]], np.float32)
        return DetectionCase(name, np.zeros((1, *shape), np.float32), box, np.zeros(1, np.int64))

    cases = [case("crop", (20, 30, 30)), case("scan", (32, 100, 70))]  # 1 and 1*4*3 tiles of 32
    assert np.allclose(case_weights(cases, (32, 32, 32)), [1 / 13, 12 / 13])
    assert case_weights(cases[:1] * 3, (32, 32, 32)) is None  # all alike: uniform draws
    drawn = {}
    for weights in ("tiles", "cases"):
        batches = BoxBatches(cases, (32, 32, 32), 2, batches_per_epoch=200, weights=weights)
        rng = np.random.default_rng(0)
        counts = np.bincount([batches._draw(rng) for _ in range(2600)], minlength=2)
        drawn[weights] = counts[1] / counts.sum()
    assert abs(drawn["tiles"] - 12 / 13) < 0.02 and abs(drawn["cases"] - 0.5) < 0.03


def test_a_3d_detector_learns_boxes_not_only_centres(tmp_path):
    """Bright spheres in noise, boxes in a 3D CSV: after a minute of training the boxes have
    their size too (a ReLU on the distances once died in 3D: centres right, boxes of size 0)."""
    from medlens.io import save_image

    data = tmp_path / "spheres"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:16, :32, :32]
    rows = ["image,x1,y1,z1,x2,y2,z2,label"]
    for i in range(12):
        volume = rng.normal(0, 1, (16, 32, 32)).astype(np.float32)
        r = rng.uniform(3, 5)
        c = [rng.uniform(r + 1, s - r - 1) for s in (16, 32, 32)]
        volume[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= r * r] += 2.5
        low = [c[2] - r + 0.5, c[1] - r + 0.5, c[0] - r + 0.5]
        rows.append(
            f"images/v{i:02d}.nii.gz,"
            + ",".join(f"{v:.2f}" for v in low)
            + ","
            + ",".join(f"{v + 2 * r:.2f}" for v in low)
            + ",sphere"
        )
        save_image(Image(volume, spacing=(1.0, 1.0, 1.0)), data / "images" / f"v{i:02d}.nii.gz")
    (data / "boxes.csv").write_text("\n".join(rows) + "\n")
    task = get_task("detection")
    settings = [
        "network.width=8",
        "network.fpn_channels=16",
        "train.batches_per_epoch=8",
        "train.val_every=12",
        "batch_size=4",
        "inference.precision=float32",
    ]
    plan = task.plan(data / "boxes.csv", overrides=settings, log=lambda s: None)
    assert plan.spatial_dims == 3 and plan.strides == [4] and plan.network["dense_weight"] == 1.0
    assert plan.sampling == "tiles"
    task.train(
        data / "boxes.csv",
        tmp_path / "run",
        plan=plan.save(tmp_path / "plan.json"),
        epochs=12,
        **QUIET,
    )
    run = medlens.load_predictor(tmp_path / "run").run
    evaluation = task.evaluate(
        run, data / "boxes.csv", split="all", n_boot=20, progress=False, output=tmp_path / "eval"
    )
    assert evaluation.metrics["froc"]["cpm"] > 0.6, evaluation.lines
    assert evaluation.metrics["ap"]["map50"] > 0.4, evaluation.lines


def test_a_run_on_simulated_lesions_says_so(real, tmp_path):
    from types import SimpleNamespace

    from medlens.data.simulate_lesions import simulate_lesion_dataset
    from medlens.tasks.detection.data import open_boxes
    from medlens.tasks.detection.train import _info

    simulate_lesion_dataset(
        real("totalsegmentator", "ct_small"), tmp_path / "sim", count=1, size=32
    )
    plan = SimpleNamespace(class_names=["lesion"])
    info = _info(plan, open_boxes(tmp_path / "sim"), tmp_path / "sim", 0, "complete")
    assert info["data"]["simulated"] is True  # run.json records it


def test_folds_train_an_ensemble_scored_out_of_fold(tmp_path):
    data, settings = squares(tmp_path, n=8)
    task = get_task("detection")
    plan = task.plan(data, overrides=settings, log=lambda s: None)
    info = task.train(
        data, tmp_path / "run", plan=plan.save(tmp_path / "plan.json"), epochs=1, folds=2, **QUIET
    )
    assert info["folds"] == 2 and info["evaluation"]["n_cases"] == 8  # every image, out of fold
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["out_of_fold"] and set(metrics["tta"]) == {
        "mirror",
        "score_plain",
        "score_mirrored",
    }
    predictor = medlens.load_predictor(tmp_path / "run")
    assert len(predictor.networks) == 2  # their boxes fused by weighted box fusion
    assert "boxes in 8 images" in predictor.predict_path(data.parent / "images", tmp_path / "p")
    one = task.train(
        data, tmp_path / "one", plan=tmp_path / "plan.json", epochs=1, folds=2, fold=1, **QUIET
    )
    assert one["cv_fold"] == [1, 2] and one["folds"] == 1
    with pytest.raises(MedlensError, match="fold 2"):
        task.train(data, tmp_path / "bad", epochs=1, folds=2, fold=2, **QUIET)
