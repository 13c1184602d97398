"""Segmentation metrics: worked by hand, against a brute-force oracle, and against MONAI."""

from __future__ import annotations

import json
import math
import time
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from medlens.image import Image
from medlens.metrics import (
    EMPTY_STATES,
    SEGMENTATION_METRICS,
    MetricInputError,
    SegmentationMetric,
    aggregate_segmentation,
    array_spacing,
    assd,
    dice,
    hausdorff95,
    hausdorff_distance,
    iou,
    segmentation_metrics,
    surface_dice,
)
from medlens.metrics._surface import surface_distances

# ---------------------------------------------------------------------------- data and oracles


def blob(shape: tuple[int, ...], rng: np.random.Generator, sigma: float = 3.0) -> np.ndarray:
    """A random blobby mask (smoothed noise above a threshold); it touches the image edges."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > 0.3 * field.std()


def label_blobs(shape: tuple[int, ...], rng: np.random.Generator, n_classes: int) -> np.ndarray:
    """A label map with classes 1..n_classes drawn as blobs over each other."""
    out = np.zeros(shape, dtype=np.int64)
    for label in range(1, n_classes + 1):
        out[blob(shape, rng)] = label
    return out


def box(shape: tuple[int, ...], start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + n) for s, n in zip(start, size, strict=True))] = True
    return mask


def brute_force(pred: np.ndarray, ref: np.ndarray, spacing, tau: float) -> dict[str, float]:
    """HD95 (max of directed percentiles), ASSD and NSD from all pairwise surface distances."""

    def surface_points(mask: np.ndarray) -> np.ndarray:
        padded = np.pad(mask, 1)
        inner = ndimage.binary_erosion(padded)[tuple(slice(1, -1) for _ in mask.shape)]
        return np.argwhere(mask & ~inner) * np.asarray(spacing, dtype=float)

    sp, sr = surface_points(pred), surface_points(ref)
    pairwise = cdist(sp, sr)
    d_pred, d_ref = pairwise.min(axis=1), pairwise.min(axis=0)
    both = np.concatenate([d_pred, d_ref])
    return {
        "hd95": max(np.percentile(d_pred, 95), np.percentile(d_ref, 95)),
        "assd": both.mean(),
        "nsd": np.mean(both <= tau),
    }


# MONAI computes in float32. Its HD95 comes from torch.quantile on float32 distances, whose rank
# (0.95 * (n - 1)) is also float32: that moves the interpolation by up to a few 1e-6 relative.
MONAI_RTOL = {"dice": 1e-6, "iou": 1e-6, "hd95": 1e-5, "assd": 1e-6, "nsd": 1e-6}


@pytest.fixture(scope="module")
def monai_metrics():
    return pytest.importorskip("monai.metrics")


def monai_values(mm, pred, ref, spacing, tau, n_classes=None) -> dict[str, np.ndarray]:
    """MONAI's values per class for one case: masks or (with n_classes) label maps."""
    if n_classes is None:
        p = torch.from_numpy(np.asarray(pred))[None, None].float()
        r = torch.from_numpy(np.asarray(ref))[None, None].float()
    else:
        ndim = np.asarray(pred).ndim

        def onehot(a):
            t = torch.nn.functional.one_hot(torch.from_numpy(a), n_classes + 1)
            return t.permute(ndim, *range(ndim))[None, 1:].float()

        p, r = onehot(pred), onehot(ref)
    k = p.shape[1]
    sp = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "dice": mm.compute_dice(p, r, include_background=True),
            "iou": mm.compute_iou(p, r, include_background=True),
            "hd95": mm.compute_hausdorff_distance(
                p, r, include_background=True, percentile=95, spacing=sp
            ),
            "assd": mm.compute_average_surface_distance(
                p, r, include_background=True, symmetric=True, spacing=sp
            ),
            "nsd": mm.compute_surface_dice(p, r, [tau] * k, include_background=True, spacing=sp),
        }
    return {key: value[0].double().numpy() for key, value in out.items()}


# ---------------------------------------------------------------------------- by hand


def test_dice_and_iou_of_two_offset_squares():
    a = box((30, 30), (5, 5), (10, 10))
    b = box((30, 30), (5, 7), (10, 10))  # shifted 2 along x: 80 voxels shared
    assert dice(a, b) == pytest.approx(0.8)
    assert iou(a, b) == pytest.approx(80 / 120)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, ~a) == 0.0


def test_parallel_lines_have_one_distance_in_mm():
    """Every surface voxel is exactly the shift away: HD95 = ASSD = shift, NSD jumps at it."""
    a = box((12, 6, 20), (3, 2, 4), (1, 1, 10))
    b = box((12, 6, 20), (5, 2, 4), (1, 1, 10))
    spacing = (3.0, 1.0, 0.5)  # 2 voxels along axis 0 at 3 mm
    assert hausdorff95(a, b, spacing) == pytest.approx(6.0)
    assert assd(a, b, spacing) == pytest.approx(6.0)
    assert surface_dice(a, b, spacing, tolerance_mm=5.99) == 0.0
    assert surface_dice(a, b, spacing, tolerance_mm=6.0) == 1.0
    # The same shift along an axis with another spacing.
    c = box((12, 6, 20), (3, 4, 4), (1, 1, 10))
    assert hausdorff95(a, c, spacing) == pytest.approx(2.0)


def test_shifted_cubes_with_anisotropic_spacing():
    a = box((20, 20, 20), (5, 5, 5), (10, 10, 10))
    b = box((20, 20, 20), (7, 5, 5), (10, 10, 10))
    spacing = (3.0, 0.7, 1.2)
    # The farthest surface voxels are the opposite faces, 2 voxels * 3 mm apart.
    assert hausdorff_distance(a, b, spacing, percentile=100) == pytest.approx(6.0)
    oracle = brute_force(a, b, spacing, tau=2.0)
    assert hausdorff95(a, b, spacing) == pytest.approx(oracle["hd95"], abs=1e-12)
    assert assd(a, b, spacing) == pytest.approx(oracle["assd"], abs=1e-12)
    assert surface_dice(a, b, spacing, 2.0) == pytest.approx(oracle["nsd"], abs=1e-12)
    assert dice(a, b) == pytest.approx(0.8)


def test_spacing_follows_array_axes_and_images_convert():
    a = box((16, 16), (4, 4), (1, 1))
    b = box((16, 16), (6, 4), (1, 1))  # 2 voxels apart along axis 0 (y)
    assert hausdorff95(a, b, (3.0, 1.0)) == pytest.approx(6.0)
    image = Image(np.zeros((16, 16)), spacing=(1.0, 3.0))  # ITK order: x = 1 mm, y = 3 mm
    assert array_spacing(image) == (3.0, 1.0)
    assert array_spacing((1.0, 3.0)) == (3.0, 1.0)
    assert hausdorff95(a, b, image) == pytest.approx(6.0)
    assert segmentation_metrics(a, b, image)["spacing"] == [3.0, 1.0]
    assert hausdorff95(a, b, 2.0) == pytest.approx(4.0)  # isotropic number
    assert hausdorff95(a, b) == pytest.approx(2.0)  # default 1 mm


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_brute_force_on_small_blobs(seed):
    rng = np.random.default_rng(seed)
    shape, spacing, tau = (14, 18, 16), (2.0, 0.9, 1.3), 1.5
    a, b = blob(shape, rng, 1.5), blob(shape, rng, 1.5)
    oracle = brute_force(a, b, spacing, tau)
    ours = segmentation_metrics(a, b, spacing, tolerance_mm=tau)["per_class"]["1"]
    for key, value in oracle.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key


def test_distance_transform_and_kdtree_agree():
    rng = np.random.default_rng(3)
    a, b = blob((30, 40, 36), rng), blob((30, 40, 36), rng)
    spacing = (2.5, 0.8, 1.1)
    d_edt = surface_distances(a, b, spacing, method="edt")
    d_kd = surface_distances(a, b, spacing, method="kdtree")
    for x, y in zip(d_edt, d_kd, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------- MONAI oracle


@pytest.mark.parametrize(
    ("shape", "spacing", "seed"),
    [
        ((64, 80), (0.7, 1.3), 0),
        ((64, 80), (2.0, 0.5), 1),
        ((24, 40, 36), (2.5, 0.8, 1.1), 2),
        ((20, 32, 28), (1.0, 1.0, 3.0), 3),
    ],
)
def test_binary_masks_match_monai(monai_metrics, shape, spacing, seed):
    rng = np.random.default_rng(seed)
    tau = 1.37
    for _ in range(3):
        a, b = blob(shape, rng), blob(shape, rng)
        ours = segmentation_metrics(a, b, spacing, tolerance_mm=tau)["per_class"]["1"]
        theirs = monai_values(monai_metrics, a, b, spacing, tau)
        for key in SEGMENTATION_METRICS:
            expected = float(theirs[key][0])
            assert ours[key] == pytest.approx(expected, rel=MONAI_RTOL[key], abs=1e-6), key


@pytest.mark.parametrize(("shape", "spacing"), [((48, 56), (0.6, 1.4)), ((20, 28, 24), (3, 1, 1))])
def test_label_maps_match_monai(monai_metrics, shape, spacing):
    rng = np.random.default_rng(7)
    pred, ref = label_blobs(shape, rng, 3), label_blobs(shape, rng, 3)
    pred[pred == 3] = 0  # class 3 only in the reference: MONAI gives inf/NaN, we document ours
    result = segmentation_metrics(pred, ref, spacing, labels=[1, 2, 3], tolerance_mm=2.0)
    theirs = monai_values(monai_metrics, pred, ref, spacing, 2.0, n_classes=3)
    for j, name in enumerate(["1", "2"]):
        for key in SEGMENTATION_METRICS:
            expected = float(theirs[key][j])
            value = result["per_class"][name][key]
            assert value == pytest.approx(expected, rel=MONAI_RTOL[key], abs=1e-6), key
    absent = result["per_class"]["3"]
    assert absent["empty"] == "prediction"
    assert theirs["dice"][2] == 0.0 and absent["dice"] == 0.0
    assert theirs["nsd"][2] == 0.0 and absent["nsd"] == 0.0
    assert not math.isfinite(theirs["hd95"][2]) and math.isnan(absent["hd95"])
    assert not math.isfinite(theirs["assd"][2]) and math.isnan(absent["assd"])


def test_monai_differs_on_empty_masks_only_as_documented(monai_metrics):
    empty = np.zeros((16, 16), dtype=bool)
    theirs = monai_values(monai_metrics, empty, empty, (1.0, 1.0), 1.0)
    ours = segmentation_metrics(empty, empty, labels=[1])["per_class"]["1"]
    # MONAI: undefined (NaN) when both are empty; Metrics Reloaded: a perfect prediction.
    assert math.isnan(theirs["hd95"][0]) and math.isnan(theirs["nsd"][0])
    assert (ours["dice"], ours["iou"], ours["nsd"], ours["hd95"], ours["assd"]) == (1, 1, 1, 0, 0)


# ---------------------------------------------------------------------------- empty masks


def test_empty_mask_conventions():
    empty = np.zeros((10, 12, 14), dtype=bool)
    full = box((10, 12, 14), (2, 3, 4), (3, 3, 3))
    spacing = (2.0, 1.0, 0.5)
    both = segmentation_metrics(empty, empty, spacing, labels=[1])["per_class"]["1"]
    assert both["empty"] == "both"
    assert [both[k] for k in SEGMENTATION_METRICS] == [1.0, 1.0, 0.0, 0.0, 1.0]
    ref_empty = segmentation_metrics(full, empty, spacing, labels=[1])["per_class"]["1"]
    pred_empty = segmentation_metrics(empty, full, spacing, labels=[1])["per_class"]["1"]
    assert ref_empty["empty"] == "reference" and pred_empty["empty"] == "prediction"
    for entry in (ref_empty, pred_empty):
        assert entry["dice"] == entry["iou"] == entry["nsd"] == 0.0
        assert math.isnan(entry["hd95"]) and math.isnan(entry["assd"])
    worst = segmentation_metrics(full, empty, spacing, labels=[1], empty_distance="max")
    diagonal = math.sqrt(20.0**2 + 12.0**2 + 7.0**2)
    assert worst["per_class"]["1"]["hd95"] == pytest.approx(diagonal)
    assert worst["per_class"]["1"]["assd"] == pytest.approx(diagonal)
    assert set(EMPTY_STATES) == {"none", "both", "reference", "prediction"}


def test_single_pair_functions_handle_empty_masks():
    empty = np.zeros((8, 8), dtype=np.uint8)
    full = box((8, 8), (2, 2), (3, 3))
    assert dice(empty, empty) == iou(empty, empty) == surface_dice(empty, empty) == 1.0
    assert hausdorff95(empty, empty) == assd(empty, empty) == 0.0
    assert dice(full, empty) == iou(empty, full) == surface_dice(full, empty) == 0.0
    assert math.isnan(hausdorff95(full, empty)) and math.isnan(assd(empty, full))
    assert hausdorff95(full, empty, (1.0, 2.0), empty_distance="max") == pytest.approx(
        math.hypot(8.0, 16.0)
    )


# ---------------------------------------------------------------------------- inputs


def test_multiclass_label_map_with_absent_classes():
    pred = np.zeros((20, 20), dtype=np.int64)
    ref = np.zeros((20, 20), dtype=np.int64)
    pred[2:8, 2:8] = ref[2:8, 2:8] = 1  # perfect
    ref[10:14, 10:14] = 2  # missed
    pred[15:18, 2:5] = 4  # false positive
    result = segmentation_metrics(pred, ref, labels=[1, 2, 3, 4], class_names={2: "lesion"})
    per_class = result["per_class"]
    assert list(per_class) == ["1", "lesion", "3", "4"]
    assert [per_class[n]["empty"] for n in per_class] == ["none", "prediction", "both", "reference"]
    assert per_class["1"]["dice"] == 1.0 and per_class["1"]["hd95"] == 0.0
    assert per_class["lesion"]["ref_voxels"] == 16 and per_class["lesion"]["pred_voxels"] == 0
    assert result["mean"]["dice"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert result["mean"]["hd95"] == 0.0  # classes 2 and 4 undefined, left out
    default = segmentation_metrics(pred, ref)
    assert default["labels"] == [1, 2, 4]
    assert segmentation_metrics(pred, ref, include_background=True)["labels"] == [0, 1, 2, 4]


def test_cropping_per_class_matches_whole_image_values():
    """Many small classes are cropped to their boxes; values equal the uncropped functions'."""
    rng = np.random.default_rng(4)
    shape, spacing = (40, 48, 44), (1.5, 0.8, 0.9)
    ref = np.zeros(shape, dtype=np.int16)
    for label in range(1, 25):
        start = [int(rng.integers(1, n - 8)) for n in shape]
        ref[tuple(slice(s, s + int(rng.integers(2, 8))) for s in start)] = label
    pred = np.roll(ref, 1, axis=2)
    pred[pred == 24] = 0
    result = segmentation_metrics(pred, ref, spacing, labels=range(1, 27), empty_distance="max")
    for label in (1, 7, 13, 24, 26):
        entry = result["per_class"][str(label)]
        assert entry["dice"] == pytest.approx(dice(pred, ref, label=label))
        hd = hausdorff95(pred, ref, spacing, label=label, empty_distance="max")
        assert entry["hd95"] == pytest.approx(hd, abs=1e-12)
        assert entry["assd"] == pytest.approx(
            assd(pred, ref, spacing, label=label, empty_distance="max")
        )
        assert entry["nsd"] == pytest.approx(surface_dice(pred, ref, spacing, 1.0, label=label))
    # Negative labels cannot use find_objects: they are scored on the whole image.
    shifted = segmentation_metrics(pred.astype(int) - 5, ref.astype(int) - 5, spacing)
    assert shifted["labels"][:3] == [-5, -4, -3]  # only the value 0 is background
    assert shifted["per_class"]["-4"]["hd95"] == pytest.approx(result["per_class"]["1"]["hd95"])


def test_one_hot_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(11)
    pred, ref = label_blobs((32, 40), rng, 2), label_blobs((32, 40), rng, 2)
    expected = segmentation_metrics(pred, ref, (1.5, 0.5), tolerance_mm={1: 1.0, 2: 2.0})
    onehot = [np.moveaxis(np.eye(3)[a], -1, 0) for a in (pred, ref)]
    from_onehot = segmentation_metrics(
        *onehot, (1.5, 0.5), tolerance_mm={1: 1.0, 2: 2.0}, channel_axis=0
    )
    from_torch = segmentation_metrics(
        torch.from_numpy(pred),
        torch.from_numpy(ref).float(),
        torch.tensor([1.5, 0.5]),
        tolerance_mm={1: 1.0, 2: 2.0},
    )
    assert from_onehot["per_class"] == expected["per_class"]
    assert from_torch["per_class"] == expected["per_class"]
    assert dice(torch.from_numpy(pred), torch.from_numpy(ref), label=2) == pytest.approx(
        expected["per_class"]["2"]["dice"]
    )


def test_dice_only_mode_skips_surface_metrics():
    a, b = box((20, 20), (2, 2), (5, 5)), box((20, 20), (3, 3), (5, 5))
    result = segmentation_metrics(a, b, distances=False)
    assert set(result["mean"]) == {"dice", "iou"}
    assert "hd95" not in result["per_class"]["1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ref": np.zeros((5, 6))}, "shape"),
        ({"spacing": (1.0, 1.0, 1.0)}, "spacing"),
        ({"spacing": (1.0, -1.0)}, "positive"),
        ({"tolerance_mm": -1.0}, "tolerance"),
        ({"tolerance_mm": {2: 1.0}}, "label 1"),
        ({"empty_distance": "inf"}, "empty_distance"),
        ({"pred": np.full((5, 5), 0.5)}, "label map"),
        ({"labels": [1.5]}, "integers"),
        ({"channel_axis": 3}, "channel_axis"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    args = {"pred": np.zeros((5, 5), dtype=int), "ref": np.ones((5, 5), dtype=int), **kwargs}
    with pytest.raises(MetricInputError, match=message):
        segmentation_metrics(**args)


# ---------------------------------------------------------------------------- accumulator


def test_accumulator_records_and_json_report():
    rng = np.random.default_rng(5)
    metric = SegmentationMetric(labels=[1, 2], class_names={1: "liver", 2: "tumour"}, n_boot=200)
    direct = []
    for i in range(6):
        pred, ref = label_blobs((24, 28, 20), rng, 2), label_blobs((24, 28, 20), rng, 2)
        if i == 0:
            pred[pred == 2] = 0  # tumour missed: HD95 undefined
        record = metric.update(pred, ref, spacing=(2.0, 1.0, 1.0), case_id=f"case{i}")
        direct.append(segmentation_metrics(pred, ref, (2.0, 1.0, 1.0), labels=[1, 2]))
        assert record["case_id"] == f"case{i}"
    report = metric.compute()
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert report["n_cases"] == len(metric) == 6
    assert report["cases"][0]["per_class"]["tumour"]["hd95"] is None
    assert report["cases"][0]["per_class"]["tumour"]["empty"] == "prediction"

    stats = report["aggregate"]["per_class"]["tumour"]["hd95"]
    values = np.array([d["per_class"]["2"]["hd95"] for d in direct])
    finite = values[1:]
    assert stats["n"] == 5 and stats["n_nan"] == 1
    assert stats["mean"] == pytest.approx(finite.mean())
    assert stats["median"] == pytest.approx(np.median(finite))
    assert stats["std"] == pytest.approx(finite.std(ddof=1))
    assert stats["low"] <= stats["mean"] <= stats["high"]
    assert report["aggregate"]["per_class"]["tumour"]["empty"]["prediction"] == 1
    assert any("tumour" in note and "hd95" in note for note in report["notes"])
    mean_dice = [d["mean"]["dice"] for d in direct]
    assert report["aggregate"]["mean"]["dice"]["mean"] == pytest.approx(np.mean(mean_dice))
    assert report["bootstrap"]["n_boot"] == 200
    assert metric.compute() == report  # seeded
    assert metric.compute(n_boot=0)["aggregate"]["mean"]["dice"]["low"] is None
    assert report["settings"]["labels"] == [1, 2]


def test_accumulator_batches_reset_and_errors():
    rng = np.random.default_rng(9)
    pred = torch.from_numpy(np.stack([label_blobs((20, 24), rng, 1) for _ in range(3)]))
    ref = torch.from_numpy(np.stack([label_blobs((20, 24), rng, 1) for _ in range(3)]))
    metric = SegmentationMetric(n_boot=0)
    records = metric.update_batch(pred, ref, spacing=[(1.0, 2.0)] * 3, case_ids=["a", "b", "c"])
    assert [r["case_id"] for r in records] == ["a", "b", "c"]
    one = segmentation_metrics(pred[1], ref[1], (1.0, 2.0))
    assert records[1]["per_class"]["1"]["dice"] == pytest.approx(one["per_class"]["1"]["dice"])
    metric.update_batch(pred, ref, spacing=torch.tensor([1.0, 2.0]))
    assert len(metric) == 6
    assert metric.compute()["cases"][4]["spacing"] == [1.0, 2.0]
    metric.reset()
    with pytest.raises(MetricInputError, match="no cases"):
        metric.compute()
    with pytest.raises(MetricInputError, match="n_boot"):
        aggregate_segmentation(records, n_boot=-1)


def test_aggregate_of_classes_missing_in_some_cases_is_noted():
    a = np.zeros((10, 10), dtype=int)
    a[2:5, 2:5] = 1
    b = a.copy()
    b[6:8, 6:8] = 2
    cases = []
    for i, (p, r) in enumerate([(a, a), (b, b)]):
        cases.append({"case_id": str(i), **segmentation_metrics(p, r)})
    report = aggregate_segmentation(cases)
    assert report["aggregate"]["per_class"]["2"]["n_cases"] == 1
    assert any("1 of 2 cases" in note for note in report["notes"])
    json.dumps(report, allow_nan=False)


# ---------------------------------------------------------------------------- scale


@pytest.mark.parametrize(
    ("shape", "spacing"), [((256, 256), (0.8, 0.8)), ((96, 96, 96), (2.0, 1.0, 1.0))]
)
def test_realistic_sizes_run_fast(shape, spacing):
    grid = np.indices(shape, dtype=np.float64)
    centre = np.array(shape, dtype=np.float64)[:, None] / 2
    radius = shape[0] / 3

    def organ(offset: float, wobble: float) -> np.ndarray:
        pts = grid.reshape(len(shape), -1) - centre - offset
        r = np.sqrt((pts**2).sum(axis=0)) * (1 + wobble * np.sin(3 * pts[-1] / radius))
        return (r < radius).reshape(shape)

    pred, ref = organ(0.0, 0.0), organ(2.0, 0.1)
    label_pred = pred.astype(np.int64) + (pred & (grid[-1] > centre[-1, 0])).astype(np.int64)
    label_ref = ref.astype(np.int64) + (ref & (grid[-1] > centre[-1, 0] + 3)).astype(np.int64)
    start = time.perf_counter()
    result = segmentation_metrics(label_pred, label_ref, spacing, tolerance_mm=2.0)
    elapsed = time.perf_counter() - start
    assert result["labels"] == [1, 2]
    assert 0.5 < result["mean"]["dice"] < 1.0
    assert elapsed < 1.0, f"{shape}: {elapsed:.2f} s"
