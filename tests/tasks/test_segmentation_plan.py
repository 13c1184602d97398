"""Segmentation planning: spacing, normalisation, patch, topology, the JSON file and overrides."""

from __future__ import annotations

import json
import math

import pytest

from medlens.cli.main import main
from medlens.tasks.segmentation import (
    PlanError,
    SegmentationPlan,
    apply_plan_overrides,
    make_plan,
)


def _fingerprint(spacings, sizes, *, modality="MR", dims=3, p10=None):
    return {
        "name": "toy",
        "task": "segmentation",
        "spatial_dims": dims,
        "channels": 1,
        "modality": modality,
        "size": {"median": sizes},
        "spacing": {"median": spacings, "p10": p10 or spacings},
        "anisotropic": max(spacings) / min(spacings) > 3,
        "label_values": [0, 1, 2],
        "intensity": [
            {"n_voxels": 100, "mean": 40.0, "std": 50.0, "p00_5": -100.0, "p99_5": 300.0}
        ],
    }


def _divisible(plan: SegmentationPlan) -> bool:
    return all(p % d == 0 for p, d in zip(plan.patch_size, plan.divisor, strict=True))


def test_isotropic_ct_volume():
    plan = make_plan(_fingerprint([1.0, 1.0, 1.0], [200, 180, 160], modality="CT"))
    assert plan.spatial_dims == 3 and plan.num_classes == 3
    assert plan.target_spacing == [1.0, 1.0, 1.0]
    assert plan.median_shape == [160, 180, 200]  # array order (z, y, x)
    assert plan.normalisation == {
        "scheme": "ct",
        "clip": [-100.0, 300.0],
        "mean": 40.0,
        "std": 50.0,
    }
    assert math.prod(plan.patch_size) <= 1.2 * 64**3 and _divisible(plan)
    assert all(k == [3, 3, 3] for k in plan.network["kernel_sizes"])
    # a CPU plan: half of nnU-Net's widths, the CPU schedule; a GPU plan: the full widths
    assert plan.network["features"][0] == 16 and max(plan.network["features"]) <= 160
    # 2,000 steps, three times that in bf16 where the CPU computes it natively (1.8x faster steps)
    steps = 6000 if plan.train.amp == "on" else 2000
    assert plan.train.epochs * plan.train.batches_per_epoch == steps
    assert plan.batch_size >= 2
    gpu = make_plan(_fingerprint([1.0, 1.0, 1.0], [200, 180, 160], modality="CT"), device="gpu")
    assert gpu.network["features"][0] == 32 and max(gpu.network["features"]) == 320
    assert math.prod(gpu.patch_size) > math.prod(plan.patch_size)
    with pytest.raises(PlanError, match="device"):
        make_plan(_fingerprint([1.0, 1.0, 1.0], [200, 180, 160]), device="tpu")


def test_anisotropic_volume_follows_the_thin_slices_and_spares_the_coarse_axis():
    plan = make_plan(
        _fingerprint([0.7, 0.7, 5.0], [512, 512, 40], p10=[0.7, 0.7, 2.5]), device="gpu"
    )
    assert plan.target_spacing == [0.7, 0.7, 2.5]  # coarse axis at its 10th percentile
    assert plan.normalisation == {"scheme": "zscore"}  # MR: per image
    strides, kernels = plan.network["strides"], plan.network["kernel_sizes"]
    assert kernels[0][0] == 1 and kernels[0][1:] == [3, 3]  # in-plane kernels first
    assert strides[1][0] == 1 and strides[1][1:] == [2, 2]  # z not downsampled at first
    assert _divisible(plan)


def test_2d_images_are_coarsened_to_fit_a_patch():
    plan = make_plan(_fingerprint([0.1, 0.1], [800, 540], modality="US", dims=2))
    assert plan.spatial_dims == 2 and plan.target_spacing[0] > 0.1
    assert plan.median_shape[0] <= plan.patch_size[0] + plan.divisor[0]
    assert any("coarsened" in note for note in plan.notes) and _divisible(plan)


def _zoom_fingerprint(extent_voxels, extent_mm, spacing_p10=0.05, spacing_p90=0.15):
    fp = _fingerprint([0.1, 0.1], [800, 540], modality="US", dims=2)
    fp["spacing"].update(p10=[spacing_p10] * 2, p90=[spacing_p90] * 2)
    fp["foreground_extent"] = {
        "voxels": {"p10": [extent_voxels[0]] * 2, "p90": [extent_voxels[1]] * 2},
        "mm": {"p10": [extent_mm[0]] * 2, "p90": [extent_mm[1]] * 2},
    }
    return fp


def test_zoomed_2d_acquisitions_are_scaled_not_resampled_to_one_spacing():
    # HC18-like: pixel sizes vary 3x, the head's size varies less in pixels than in mm
    zoomed = make_plan(_zoom_fingerprint((240, 500), (20, 60)))
    coarse = make_plan(_fingerprint([0.1, 0.1], [800, 540], modality="US", dims=2))
    assert zoomed.target_scale is not None and coarse.target_scale is None
    assert zoomed.target_scale[0] == pytest.approx(zoomed.target_spacing[0] / 0.1)
    assert zoomed.patch_size == coarse.patch_size and any("zoomed" in n for n in zoomed.notes)
    assert zoomed.grid_spacing((0.05, 0.05)) == pytest.approx((0.05 * zoomed.target_scale[0],) * 2)
    assert coarse.grid_spacing((0.05, 0.05)) == tuple(coarse.target_spacing)
    # anatomy of one size in mm (a scanner's fixed field of view), or one spacing: not zoomed
    assert make_plan(_zoom_fingerprint((100, 300), (20, 22))).target_scale is None
    assert make_plan(_zoom_fingerprint((240, 500), (20, 60), 0.1, 0.12)).target_scale is None
    # the plan file keeps it; older plans without it load as spacing plans
    data = zoomed.to_dict()
    assert SegmentationPlan.from_dict(data) == zoomed
    del data["target_scale"]
    assert SegmentationPlan.from_dict(data).target_scale is None


def test_json_round_trip_overrides_and_errors(tmp_path):
    plan = make_plan(_fingerprint([1.0, 1.0, 1.0], [128, 128, 128]))
    path = plan.save(tmp_path / "plan.json")
    assert SegmentationPlan.load(path) == plan
    edited = apply_plan_overrides(plan, ["patch_size=32,64,64", "batch_size=3",
                                         "network.encoder=residual", "train.epochs=5"])  # fmt: skip
    assert edited.patch_size == [32, 64, 64] and edited.batch_size == 3
    assert edited.network["encoder"] == "residual" and edited.train.epochs == 5
    assert edited.train.batch_size == 3
    with pytest.raises(PlanError, match="not divisible"):
        apply_plan_overrides(plan, ["patch_size=33,64,64"])
    with pytest.raises(PlanError, match=r"unknown plan key 'patchsize' .did you mean 'patch_size'"):
        apply_plan_overrides(plan, ["patchsize=32,64,64"])
    # a misspelt key inside a section is refused with a suggestion, never silently kept
    with pytest.raises(PlanError, match=r"unknown training setting 'lrr' .did you mean 'lr'"):
        apply_plan_overrides(plan, ["train.lrr=1"])
    with pytest.raises(PlanError, match=r"'network' has no key 'encodr' .did you mean 'encoder'"):
        apply_plan_overrides(plan, ["network.encodr=residual"])
    with pytest.raises(PlanError, match="expected float"):
        apply_plan_overrides(plan, ["train.lr=fast"])
    # one grammar: a bare training setting means train.<key>
    assert apply_plan_overrides(plan, ["lr=0.02"]).train.lr == 0.02
    data = plan.to_dict()
    data["train"]["lrr"] = 1
    (tmp_path / "typo.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"typo\.json: train: .*'lrr' .did you mean 'lr'"):
        SegmentationPlan.load(tmp_path / "typo.json")
    data = json.loads(path.read_text())
    data["format"] = "something else"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(PlanError, match=r"bad\.json"):
        SegmentationPlan.load(tmp_path / "bad.json")
    with pytest.raises(PlanError, match="classification"):
        make_plan({**_fingerprint([1.0] * 3, [8] * 3), "task": "classification"})


def test_cli_plans_hc18(real, tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", str(real("hc18")), "-o", str(out), "--max-samples", "20",
                 "--set", "train.epochs=7"]) == 0  # fmt: skip
    plan = SegmentationPlan.load(out)
    assert plan.spatial_dims == 2 and plan.modality == "US" and plan.train.epochs == 7
    assert plan.normalisation["scheme"] == "zscore" and plan.label_values == [0, 1]
    assert plan.target_scale is not None  # zoomed ultrasound: scaled per image
    assert "pixels scaled by" in capsys.readouterr().out
    assert main(["plan", str(tmp_path / "missing"), "-o", str(tmp_path / "p.json")]) == 1


def test_the_plan_records_the_training_range_and_flags_images_outside_it(tmp_path):
    from medlens.tasks.segmentation.plan import outside_training_range

    fp = _zoom_fingerprint((240, 500), (20, 60))
    fp["spacing"].update(min=[0.06, 0.06], max=[0.26, 0.26])
    fp["foreground_extent"]["mm"].update(min=[13.0, 15.0], max=[104.0, 112.0])
    fp["foreground_extent"]["voxels"].update(min=[140.0, 150.0], max=[560.0, 540.0])
    plan = make_plan(fp)
    assert plan.training_range == {
        "spacing_mm": [[0.06, 0.06], [0.26, 0.26]],
        "foreground_mm": [[13.0, 15.0], [104.0, 112.0]],
        "foreground_voxels": [[140.0, 150.0], [560.0, 540.0]],
    }
    assert outside_training_range(plan, (0.2, 0.2), (80.0, 95.0)) is None
    late = outside_training_range(plan, (0.2, 0.2), (150.0, 120.0))  # a larger head than any
    assert late and "predicted foreground size 150 mm" in late and "13-112 mm" in late
    assert "pixel spacing 0.5 mm" in outside_training_range(plan, (0.5, 0.5), None)
    # a PNG without spacing (unit spacing stands in): its head is compared in pixels only
    assert outside_training_range(plan, None, (400.0, 300.0), extent_voxels=(400, 300)) is None
    tiny = outside_training_range(plan, None, (60.0, 50.0), extent_voxels=(60, 50))
    assert tiny == "predicted foreground size 60 pixels outside the training images' 140-560 pixels"
    assert (
        SegmentationPlan.load(plan.save(tmp_path / "p.json")).training_range == plan.training_range
    )
    del fp["spacing"]["min"]  # older fingerprints and plans: nothing to check against
    assert outside_training_range(make_plan(fp), (9.0, 9.0), (999.0, 1.0)) is None


@pytest.mark.parametrize("native", [True, False])
def test_3d_cpu_plans_train_in_bf16_only_where_the_cpu_computes_it(monkeypatch, native):
    import medlens.tasks.segmentation.plan as planning

    monkeypatch.setattr(planning, "_native_bf16", lambda: native)
    plan = make_plan(_fingerprint([1.0, 1.0, 1.0], [200, 180, 160], modality="CT"))
    assert plan.train.amp == ("on" if native else "auto")
    assert plan.train.epochs == (120 if native else 40)
    assert plan.inference["precision"] == ("bf16" if native else "float32")
    assert ("bf16 mixed precision" in " ".join(plan.notes)) == native
    # never on a GPU plan (fp16 there) nor in 2D (its schedule was measured in float32)
    assert make_plan(_fingerprint([1.0] * 3, [200, 180, 160]), device="gpu").train.amp == "auto"
    assert make_plan(_fingerprint([0.2, 0.2], [800, 540], dims=2)).train.amp == "auto"


def test_the_plan_says_how_it_predicts_and_old_plans_predict_as_before(tmp_path):
    from medlens.tasks.segmentation.network import inference_window
    from medlens.tasks.segmentation.plan import inference_settings
    from medlens.tasks.segmentation.predict import mirror_default

    small = make_plan(_fingerprint([1.0, 1.0, 1.0], [35, 50, 36]))  # the hippocampus' size
    assert small.patch_size == [32, 48, 32] and small.divisor == [8, 8, 8]
    assert small.inference["mirror"] and small.inference["window"] == "patch"
    assert mirror_default(small) and "predicted mirrored" in " ".join(small.notes)
    assert inference_window(small, (36, 50, 35)) == (32, 48, 32)
    # window=image: each axis grows to hold the image (to the divisor) up to 1.5x the patch
    grown = apply_plan_overrides(small, ["inference.window=image"])
    assert inference_window(grown, (36, 50, 35)) == (40, 56, 40)
    assert inference_window(grown, (30, 80, 35)) == (32, 48, 40)  # 80 > 1.5 x 48: windows
    big = make_plan(_fingerprint([1.0, 1.0, 1.0], [200, 180, 160], modality="CT"))
    assert not big.inference["mirror"] and not mirror_default(big)
    flat = make_plan(_fingerprint([0.2, 0.2], [800, 540], dims=2))
    assert flat.inference["mirror"] and flat.inference["window"] == "patch"
    # a plan written before the section: 2D mirrored, the training patch, float32
    data = json.loads(small.save(tmp_path / "p.json").read_text())
    del data["inference"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = SegmentationPlan.load(tmp_path / "old.json")
    assert old.inference is None and not mirror_default(old)
    assert inference_settings(old) == {"mirror": False, "window": "patch", "precision": "float32"}
    assert inference_window(old, (36, 50, 35)) == (32, 48, 32)
    assert SegmentationPlan.load(small.save(tmp_path / "new.json")).inference == small.inference
    assert not mirror_default(apply_plan_overrides(small, ["inference.mirror=false"]))
    with pytest.raises(PlanError, match="window"):
        apply_plan_overrides(small, ["inference.window=huge"])
