"""The tasks' normalisation as preprocessing steps: the same numbers as the formulas they replace.

Classification's ``fit_normaliser`` is a fitted :class:`ChannelZScore`; segmentation's
``normalise`` runs the plan's :func:`normaliser` (``PercentileClipZScore`` / ``ZScore``). The
old formulas are copied here as the reference, and results must be bit-identical.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medlens.errors import MedlensError
from medlens.image import Image, Role
from medlens.preprocessing import (
    ChannelZScore,
    NotFittedError,
    PercentileClipZScore,
    Preprocessor,
    ZScore,
)
from medlens.tasks.classification.plan import Classifier, fit_normaliser
from medlens.tasks.segmentation.data import normalise, normaliser


# ----------------------------------------------------------------------------- references
def old_fit_normaliser(images: np.ndarray, *, sample: int = 4096):
    """``fit_normaliser`` as it was before it became a step."""
    step = max(1, images.shape[0] // sample)
    values = images[::step].astype(np.float64)
    if images.dtype == np.uint8:
        values /= 255.0
    axes = (0, *range(2, values.ndim))
    mean = values.mean(axis=axes)
    std = values.std(axis=axes)
    return [float(m) for m in mean], [float(max(s, 1e-6)) for s in std]


def old_normalise(array: np.ndarray, plan) -> np.ndarray:
    """Segmentation's ``normalise`` as it was before it used the steps."""
    array = array.astype(np.float32, copy=False)
    scheme = plan.normalisation["scheme"]
    if scheme == "ct":
        low, high = plan.normalisation["clip"]
        mean, std = plan.normalisation["mean"], plan.normalisation["std"]
        return ((np.clip(array, low, high) - mean) / max(std, 1e-8)).astype(np.float32)
    if scheme == "zscore":
        axes = tuple(range(1, array.ndim))
        mean = array.mean(axis=axes, keepdims=True)
        std = array.std(axis=axes, keepdims=True)
        return ((array - mean) / np.maximum(std, 1e-8)).astype(np.float32)
    return array


def training_set(shape: tuple[int, ...], dtype, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape).astype(np.uint8)
    return rng.normal(40.0, 15.0, shape).astype(dtype)


def ct_like(shape=(2, 12, 40, 36), seed=0) -> np.ndarray:
    """int16 Hounsfield units: air, soft tissue and some bone, as a real CT holds."""
    rng = np.random.default_rng(seed)
    array = rng.normal(40, 30, shape)
    array[..., :6] = rng.normal(-1000, 20, array[..., :6].shape)
    array[..., 5:9, 10:14, :] += 900
    return array.round().astype(np.int16)


def plan_of(**normalisation):
    return SimpleNamespace(normalisation=normalisation)


CASES = [
    ((40, 1, 16, 16), np.uint8),  # 2D, 8-bit
    ((30, 3, 12, 10), np.uint8),  # 2D, colour
    ((12, 1, 6, 7, 8), np.uint8),  # 3D, 8-bit
    ((25, 2, 14, 9), np.float32),  # 2D, float
    ((10, 1, 5, 6, 7), np.float32),  # 3D, float
    ((10, 1, 5, 6, 7), np.float64),
]


# ----------------------------------------------------------------------------- ChannelZScore
@pytest.mark.parametrize(("shape", "dtype"), CASES)
def test_channel_zscore_fit_equals_the_old_fit_normaliser(shape, dtype):
    images = training_set(shape, dtype)
    expected = old_fit_normaliser(images)
    step = ChannelZScore().fit(images)
    assert (step.mean_, step.std_) == expected  # exactly: the same saved numbers
    assert fit_normaliser(images) == expected
    # the same images as Image objects, one per case, give the same numbers
    as_images = ChannelZScore().fit([Image(x, leading=("channel",)) for x in images])
    assert (as_images.mean_, as_images.std_) == expected


def test_channel_zscore_samples_as_fit_normaliser_did():
    images = training_set((23, 1, 8, 8), np.uint8)
    for sample in (1, 4, 5, 11, 100):
        expected = old_fit_normaliser(images, sample=sample)
        assert fit_normaliser(images, sample=sample) == expected
        step = ChannelZScore(sample=sample).fit(list(images))  # (C, ...) arrays, one per case
        assert (step.mean_, step.std_) == expected
    constant = np.full((4, 2, 5, 5), 7, np.uint8)
    assert ChannelZScore().fit(constant).std_ == [1e-6, 1e-6]  # floored, never zero


def test_channel_zscore_fits_images_of_different_sizes():
    rng = np.random.default_rng(3)
    images = [Image(rng.normal(5, 2, shape).astype(np.float32)) for shape in ((8, 9), (11, 6))]
    step = ChannelZScore().fit(images)
    values = np.concatenate([im.array.reshape(-1) for im in images]).astype(np.float64)
    assert step.mean_ == pytest.approx([values.mean()], rel=1e-12)
    assert step.std_ == pytest.approx([values.std()], rel=1e-12)
    with pytest.raises(MedlensError, match="channels"):
        ChannelZScore().fit(
            [Image(np.zeros((2, 4, 4)), leading=("channel",)), Image(np.zeros((4, 4)))]
        )
    with pytest.raises(ValueError, match="label maps"):
        ChannelZScore().fit([Image(np.zeros((4, 4), np.uint8), role=Role.LABEL)])


def test_channel_zscore_transform_is_what_the_classifier_computes():
    images = training_set((6, 3, 10, 12), np.uint8)
    step = ChannelZScore().fit(images)
    backbone = torch.nn.Identity()
    backbone.spatial_dims = 2  # only the classifier's normalise is used
    network = Classifier(backbone, step.mean_, step.std_)
    x = torch.from_numpy(images)
    expected = network.normalise(x.float() / 255.0)  # as prediction feeds 8-bit batches
    assert torch.equal(step.transform(x), expected)
    per_image = np.stack([step(Image(a, leading=("channel",))).array for a in images])
    assert per_image.dtype == np.float32 and np.array_equal(per_image, expected.numpy())
    with pytest.raises(MedlensError, match="3 channel"):
        step(Image(images[0, 0]))


def test_channel_zscore_saves_and_loads(tmp_path):
    images = training_set((9, 2, 6, 7, 5), np.uint8)
    prep = Preprocessor([ChannelZScore(sample=3)]).fit(
        [Image(a, leading=("channel",)) for a in images]
    )
    path = prep.save(tmp_path / "preprocessing.json")
    data = json.loads(path.read_text())
    assert data["format"] == "medlens.preprocessor"
    assert data["steps"][0]["name"] == "ChannelZScore"
    loaded = Preprocessor.load(path)
    assert loaded.to_dict() == prep.to_dict()
    assert loaded[0].mean_ == prep[0].mean_ and loaded[0].std_ == prep[0].std_
    one = Image(images[0], leading=("channel",))
    assert np.array_equal(loaded(one).array, prep(one).array)
    with pytest.raises(NotFittedError):
        ChannelZScore()(one)


def test_an_old_classification_preprocessing_json_loads_as_its_step(old_runs):
    """Run folders from before the Preprocessor format: their file reads as the same step."""
    old_run = old_runs / "classification"
    old = json.loads((old_run / "preprocessing.json").read_text())
    assert "format" not in old  # the fixture really is the old content
    prep = Preprocessor.load(old_run / "preprocessing.json")
    norm = json.loads((old_run / "run.json").read_text())["normalisation"]
    (step,) = prep.steps
    assert isinstance(step, ChannelZScore) and step.scale_uint8
    assert step.mean_ == norm["mean"] and step.std_ == norm["std"]
    assert ChannelZScore.from_normalisation(norm).get_state() == step.get_state()


# ----------------------------------------------------------------------------- segmentation
SCHEMES = {
    "ct": plan_of(scheme="ct", clip=[-998.0, 957.5], mean=48.2, std=301.7),
    "ct-int": plan_of(scheme="ct", clip=[-1000, 1000], mean=50, std=300),
    "zscore": plan_of(scheme="zscore"),
    "none": plan_of(scheme="none"),
}


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize(
    "array",
    [
        ct_like(),
        ct_like((1, 30, 50), seed=1),
        np.random.default_rng(2).normal(310.0, 95.0, (2, 7, 33, 21)).astype(np.float32),
        np.random.default_rng(3).integers(0, 256, (3, 40, 48)).astype(np.uint8),
        np.array([[-5.0, 5.0, 20.0]]),
    ],
    ids=["ct3d", "ct2d", "mr-float", "rgb-uint8", "1d-float64"],
)
def test_segmentation_normalise_equals_the_old_formula(scheme, array):
    plan = SCHEMES[scheme]
    out = normalise(array, plan)
    expected = old_normalise(array, plan)
    assert out.dtype == np.float32 and out.shape == array.shape
    np.testing.assert_array_equal(out, expected)  # bit-identical


def test_segmentation_normalise_equals_the_old_formula_on_a_real_ct(ct_small_image):
    array = np.asarray(ct_small_image.array)[None]
    for plan in SCHEMES.values():
        np.testing.assert_array_equal(normalise(array, plan), old_normalise(array, plan))


def test_segmentation_normaliser_is_a_preprocessor_a_run_can_save(tmp_path):
    ct = normaliser(SCHEMES["ct"])
    (step,) = ct.steps
    assert isinstance(step, PercentileClipZScore) and step.is_fitted
    assert (step.lower_, step.upper_, step.mean_, step.std_) == (-998.0, 957.5, 48.2, 301.7)
    (zscore,) = normaliser(SCHEMES["zscore"]).steps
    assert isinstance(zscore, ZScore) and zscore.stats_dtype == "float32"
    assert len(normaliser(SCHEMES["none"])) == 0
    image = Image(ct_like()[0])
    for name in ("ct", "zscore", "none"):
        prep = normaliser(SCHEMES[name])
        again = Preprocessor.load(prep.save(tmp_path / f"{name}.json"))
        assert again.to_dict() == prep.to_dict()
        assert np.array_equal(again(image).array, prep(image).array)


def test_zscore_float32_statistics_are_numpys_and_float64_stays_the_default():
    array = ct_like((1, 20, 64, 64), seed=5).astype(np.float32)
    image = Image(array[0])
    assert ZScore().stats_dtype == "float64"
    single = ZScore(stats_dtype="float32")(image).array
    expected = (array[0] - array[0].mean()) / np.maximum(array[0].std(), 1e-8)
    np.testing.assert_array_equal(single, expected)
    np.testing.assert_allclose(ZScore()(image).array, single, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="stats_dtype"):
        ZScore(stats_dtype="float16")(image)


# ----------------------------------------------------------------------------- JSON reading
def test_load_refuses_unknown_keys_with_a_suggestion(tmp_path):
    good = Preprocessor([ZScore()]).to_dict()
    typo = tmp_path / "typo.json"
    typo.write_text(json.dumps({**good, "stpes": []}))
    with pytest.raises(MedlensError, match=r"typo\.json: unknown key 'stpes' \(did you mean"):
        Preprocessor.load(typo)
    step_typo = tmp_path / "step_typo.json"
    step_typo.write_text(
        json.dumps({**good, "steps": [{"name": "ZScore", "parms": {"nonzero": True}}]})
    )
    with pytest.raises(MedlensError, match=r"step_typo\.json.*'parms' \(did you mean 'params'"):
        Preprocessor.load(step_typo)
    missing = tmp_path / "missing.json"
    with pytest.raises(MedlensError, match="not found") as caught:
        Preprocessor.load(missing)
    assert caught.value.path == missing and str(caught.value).count(str(missing)) == 1
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"normalisation": {"mean": [0.5]}}))  # an old file, damaged
    with pytest.raises(MedlensError, match=r"broken\.json.*invalid classification normalisation"):
        Preprocessor.load(broken)
