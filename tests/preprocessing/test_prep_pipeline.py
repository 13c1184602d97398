"""The Preprocessor: fitting in order, label maps, JSON round trips; common checks of every step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medlens.errors import GeometryError, MedlensError
from medlens.image import Image, Role
from medlens.preprocessing import (
    CLAHE,
    CropForeground,
    CTWindow,
    FittedStep,
    Gamma,
    MinMax,
    NotFittedError,
    PadOrCrop,
    PercentileClipZScore,
    Preprocessor,
    Reorient,
    Resample,
    Resize,
    Sharpen,
    Step,
    ZScore,
    registered_steps,
)
from medlens.preprocessing.pipeline import step_from_dict, step_to_dict

# Example arguments for every registered step, for 2D and 3D images (n = spatial dims).
EXAMPLES = {
    "Brightness": lambda n: {"delta": 3.0},
    "CLAHE": lambda n: {"clip_limit": 0.02, "kernel_size": 4},
    "CTWindow": lambda n: {"preset": "abdomen"},
    "ChannelZScore": lambda n: {"sample": 1},
    "Contrast": lambda n: {"factor": 1.3},
    "CropForeground": lambda n: {"threshold": 0.0, "margin": 1},
    "Gamma": lambda n: {"gamma": 0.7},
    "MinMax": lambda n: {"out_range": (-1.0, 1.0), "percentiles": (1.0, 99.0)},
    "PadOrCrop": lambda n: {"shape": (7, 20, 9)[-n:], "mode": "edge"},
    "PercentileClipZScore": lambda n: {"samples_per_image": 50, "seed": 1},
    "Reorient": lambda n: {"codes": "RAI"[:n] if n == 3 else "RA"},
    "Resample": lambda n: {"spacing": (1.5, 2.0, 2.5)[:n]},
    "ResampleLike": lambda n: {
        "shape": (6, 10, 12)[-n:],
        "spacing": (1.2,) * n,
        "origin": (1.0,) * n,
        "direction": np.eye(n)[::-1].tolist() if n == 2 else np.eye(n).tolist(),
    },
    "Resize": lambda n: {"shape": (9, 11, 13)[-n:], "keep_aspect": True},
    "Sharpen": lambda n: {"amount": 0.5, "sigma": 1.0},
    "ZScore": lambda n: {"nonzero": False},
}


def phantom(n: int, seed: int = 0) -> tuple[Image, Image]:
    """A blob phantom with noise in a background of zeros, and its label map."""
    shape = (8, 16, 18)[-n:]
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grids))
    labels = (radius < 0.6).astype(np.uint8) + (radius < 0.3)
    rng = np.random.default_rng(seed)
    array = np.where(radius < 0.8, 40.0 + 60.0 * labels + rng.normal(0, 5, shape), 0.0)
    spacing = (0.8, 1.1, 2.0)[:n]
    origin = (-5.0, 3.0, 20.0)[:n]
    image = Image(
        array.astype(np.float32),
        spacing=spacing,
        origin=origin,
        modality="CT",
        meta={"path": f"phantom{n}d.nii.gz"},
    )
    return image, image.with_array(labels, role=Role.LABEL)


def make(name: str, n: int) -> Step:
    return registered_steps()[name](**EXAMPLES[name](n))


def test_every_registered_step_has_an_example():
    assert set(registered_steps()) == set(EXAMPLES)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_common_step_behaviour(name, n):
    """Every step: stores only its arguments, runs on 2D and 3D, finite, deterministic, moves
    label maps only when spatial, and survives a JSON round trip with identical output."""
    image, label = phantom(n)
    step = make(name, n)
    assert vars(step) == step.get_params()
    if isinstance(step, FittedStep):
        with pytest.raises(NotFittedError):
            step.transform(image)
        assert step.fit([image, phantom(n, seed=1)[0]], [label, None]) is step
        assert step.is_fitted and set(step.get_state()) == set(step.learned)
    before = image.array.copy()
    out = step(image)
    assert isinstance(out, Image) and out.spatial_dims == n and out.role is Role.INTENSITY
    assert np.all(np.isfinite(out.array))
    np.testing.assert_array_equal(image.array, before)  # the input is never modified
    np.testing.assert_array_equal(step(image).array, out.array)  # deterministic

    out2, lab2 = step.transform_pair(image, label)
    np.testing.assert_array_equal(out2.array, out.array)
    if step.spatial:
        assert lab2.same_grid(out2) and lab2.role is Role.LABEL
        assert set(np.unique(lab2.array).tolist()) <= {0, 1, 2}
        assert lab2.array.dtype == label.array.dtype
    else:
        assert lab2 is label
        assert out.same_grid(image)

    data = json.loads(json.dumps(step_to_dict(step)))  # plain JSON
    again = step_from_dict(data)
    assert type(again) is type(step)
    np.testing.assert_array_equal(again(image).array, out.array)
    assert "Step" not in repr(step) and repr(step).startswith(name)


TENSOR_STEPS = [
    "Brightness",
    "CTWindow",
    "Contrast",
    "Gamma",
    "MinMax",
    "ZScore",
    "PercentileClipZScore",
    "ChannelZScore",
]


@pytest.mark.parametrize("name", TENSOR_STEPS)
def test_intensity_steps_take_batched_tensors_like_images(name):
    images = [phantom(3, seed=s)[0] for s in range(2)]
    step = make(name, 3)
    if isinstance(step, FittedStep):
        step.fit(images)
    batch = torch.stack([im.to_tensor(add_channel=True) for im in images])  # (2, 1, z, y, x)
    out = step(batch)
    assert isinstance(out, torch.Tensor) and out.shape == batch.shape
    for b, image in enumerate(images):
        np.testing.assert_allclose(out[b, 0].numpy(), step(image).array, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the pipeline
def test_fit_fits_steps_in_order_on_transformed_images():
    pairs = [phantom(3, seed=s) for s in range(3)]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    prep = Preprocessor([Resample(2.0), PercentileClipZScore(samples_per_image=None), Gamma(0.8)])
    assert prep.fit(images, labels) is prep
    # the fitted step saw the resampled images and the resampled masks
    expected = PercentileClipZScore(samples_per_image=None).fit(
        [im.resample(2.0) for im in images], [lab.resample(2.0) for lab in labels]
    )
    assert prep[1].get_state() == expected.get_state()
    image, label = prep.transform(images[0], labels[0])
    manual = Gamma(0.8)(expected.transform(images[0].resample(2.0)))
    np.testing.assert_array_equal(image.array, manual.array)
    assert label.same_grid(image) and set(np.unique(label.array).tolist()) <= {0, 1, 2}
    # masks may be plain arrays
    prep2 = Preprocessor([PercentileClipZScore()]).fit(images, [lab.array > 0 for lab in labels])
    assert prep2[0].is_fitted


def test_unfitted_pipeline_and_bad_inputs():
    image, label = phantom(3)
    prep = Preprocessor([Resample(2.0), PercentileClipZScore()])
    assert not prep.is_fitted
    with pytest.raises(NotFittedError, match="PercentileClipZScore"):
        prep.transform(image)
    prep.fit([image])
    other = label.replace(origin=(0.0, 0.0, 0.0))
    with pytest.raises(GeometryError):
        prep.transform(image, other)
    with pytest.raises(ValueError, match="masks"):
        prep.fit([image], [label, label])
    with pytest.raises(MedlensError, match="spatial shape"):
        prep.fit([image], [np.ones((3, 3, 3))])
    nan = image.with_array(np.full(image.array.shape, np.nan, np.float32))
    with pytest.raises(MedlensError, match=r"phantom3d\.nii\.gz"):
        Preprocessor([ZScore()]).fit_transform([nan])


def test_save_load_round_trip_on_real_ct_gives_identical_output(
    ct_small_image, real, helpers, tmp_path
):
    from medlens.io import load_image

    seg = load_image(real(*helpers.CT_SMALL_SEG), role="label")
    prep = Preprocessor(
        [
            Reorient("LPS"),
            CropForeground(threshold=-500, margin=2),
            Resample((2.5, 2.5, 4.0)),
            PercentileClipZScore(),
            PadOrCrop((32, 96, 96)),
            Sharpen(0.3, 1.0),
        ]
    )
    prep.fit([ct_small_image], [seg])
    path = prep.save(tmp_path / "run" / "preprocessing.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["preprocessing.json"]  # no temp left
    text = path.read_text()
    data = json.loads(text)
    assert data["format"] == "medlens.preprocessor"
    assert [s["name"] for s in data["steps"]][:2] == ["Reorient", "CropForeground"]
    assert data["steps"][3]["state"]["lower_"] == prep[3].lower_

    loaded = Preprocessor.load(path)
    assert loaded.to_dict() == prep.to_dict()
    image, label = prep.transform(ct_small_image, seg)
    image2, label2 = loaded.transform(ct_small_image, seg)
    np.testing.assert_array_equal(image2.array, image.array)
    np.testing.assert_array_equal(label2.array, label.array)
    assert image2.same_grid(image) and label2.same_grid(image2)
    assert image.spatial_shape == (32, 96, 96) and image.orientation == "LPS"
    assert set(np.unique(label.array).tolist()) <= set(np.unique(seg.array).tolist())


def test_round_trip_of_a_2d_pipeline_on_real_ultrasound(real, tmp_path):
    from medlens.io import load_image

    photo = load_image(real("hc18", "images", "000_HC.png"))
    prep = Preprocessor(
        [Resize((128, 160), keep_aspect=True), CLAHE(kernel_size=16), MinMax(out_range=(-1, 1))]
    )
    out = prep.transform(photo)
    again = Preprocessor.load(prep.save(tmp_path / "prep.json")).transform(photo)
    assert out.spatial_shape == (128, 160)
    np.testing.assert_array_equal(again.array, out.array)


def test_load_reports_problems_with_the_file(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(MedlensError, match="not found"):
        Preprocessor.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(MedlensError, match=r"broken\.json"):
        Preprocessor.load(broken)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(MedlensError, match="not a medlens preprocessor"):
        Preprocessor.load(wrong)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(
        json.dumps(
            {
                "format": "medlens.preprocessor",
                "version": 1,
                "steps": [{"name": "Pickle", "params": {}}],
            }
        )
    )
    with pytest.raises(MedlensError, match=r"unknown\.json.*unknown preprocessing step 'Pickle'"):
        Preprocessor.load(unknown)
    bad_param = tmp_path / "bad_param.json"
    bad_param.write_text(
        json.dumps(
            {
                "format": "medlens.preprocessor",
                "version": 1,
                "steps": [{"name": "ZScore", "params": {"x": 1}}],
            }
        )
    )
    with pytest.raises(MedlensError, match=r"bad_param\.json"):
        Preprocessor.load(bad_param)


def test_unfitted_steps_save_without_state_and_unregistered_steps_refuse():
    prep = Preprocessor([PercentileClipZScore(), CTWindow(center=50, width=350)])
    data = prep.to_dict()
    assert data["steps"][0]["state"] is None
    assert not Preprocessor.from_dict(data).is_fitted

    class Custom(Step):
        def transform(self, image):
            return image

    with pytest.raises(ValueError, match="register_step"):
        Preprocessor([Custom()]).to_dict()
    assert "Preprocessor([" in repr(prep) and "CTWindow(center=50, width=350)" in repr(prep)


def test_zscore_and_minmax_in_a_pipeline_leave_the_label_alone():
    image, label = phantom(2)
    out, lab = Preprocessor([ZScore(nonzero=True), MinMax()]).transform(image, label)
    assert lab is label or np.array_equal(lab.array, label.array)
    assert out.array.min() == 0.0 and out.array.max() == pytest.approx(1.0)
