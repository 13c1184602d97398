"""Attribution methods, faithfulness checks and simulated lesions (``medlens.explain``).

The methods are checked on tiny hand-made networks whose right answer is known: a "region model"
whose logit is the mean of the input inside a fixed square (so every pixel outside it is
irrelevant and each pixel inside contributes its value over the region's size), and small conv
nets for the gradient identities (Integrated Gradients' completeness, Grad-CAM from hooks).
Simulated lesions are checked on real MedMNIST images (skipped when the data is absent).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from medlens.errors import MedlensError
from medlens.explain import METHODS, RegionScore, attribute, baseline_like, superpixels
from medlens.explain.faithfulness import (
    FLAG_CORRELATION,
    deletion_insertion,
    pointing_hits,
    randomisation_check,
    target_probability,
)
from medlens.explain.lesions import lesion_npz, simulate_lesions

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- tiny models
class SmoothNet(nn.Module):
    """Two smooth conv layers (the second with stride 2), global mean, linear head."""

    def __init__(self, dims: int = 2, channels: int = 1, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv1 = conv(channels, 4, 3, padding=1)
        self.conv2 = conv(4, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(6, classes)
        with torch.no_grad():
            self.head.weight.mul_(10.0)  # outputs that move when the input does

    def forward(self, x):
        h = torch.tanh(self.conv1(x))
        h = F.softplus(self.conv2(h))
        return self.head(h.flatten(2).mean(2))


class RegionModel(nn.Module):
    """Logit 1: mean input (summed over channels) inside ``region``; logit 0: its negative."""

    def __init__(self, region: np.ndarray):
        super().__init__()
        self.register_buffer("region", torch.as_tensor(region, dtype=torch.float32))
        self.conv = nn.Conv2d(1, 1, 1)  # unused: only there for code that looks for a layer

    def forward(self, x):
        m = (x.sum(1) * self.region).flatten(1).sum(1) / self.region.sum()
        return torch.stack([-m, m], dim=1)


SIDE = 16
REGION = np.zeros((SIDE, SIDE), bool)
REGION[3:9, 8:14] = True  # 6x6, not aligned with the 4x4 blocks below


def _blocks(side: int = SIDE, size: int = 4) -> np.ndarray:
    """Square superpixels: labels of ``size`` x ``size`` blocks."""
    yy, xx = np.mgrid[:side, :side]
    return (yy // size) * (side // size) + xx // size


def _region_inputs(n: int = 2, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(0.6, 1.0, (n, 1, SIDE, SIDE))).float()


def _inside(maps: torch.Tensor, region: np.ndarray, *, low: bool = False) -> list[bool]:
    """Per map: is its maximum (minimum if ``low``) inside ``region``?"""
    out = []
    for amap in maps.numpy():
        where = np.unravel_index(np.argmin(amap) if low else np.argmax(amap), amap.shape)
        out.append(bool(region[where]))
    return out


# ----------------------------------------------------------------------------- methods
def test_integrated_gradients_is_complete():
    model = SmoothNet(classes=3, seed=1).eval()
    x = 1 + torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        delta = model(x) - model(torch.zeros_like(x))
    for target in (0, 2):
        maps = attribute(model, x, "ig", target, n_steps=64)
        expected = delta[:, target]
        assert torch.all(expected.abs() > 0.02)  # a real difference to explain
        np.testing.assert_allclose(maps.sum((1, 2)).numpy(), expected.numpy(), rtol=0.02)
    # the "mean" baseline: completeness with respect to that reference instead
    maps = attribute(model, x, "ig", 1, n_steps=64, baseline="mean")
    mean = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    with torch.no_grad():
        expected = model(x)[:, 1] - model(mean)[:, 1]
    np.testing.assert_allclose(maps.sum((1, 2)).numpy(), expected.numpy(), rtol=0.02, atol=1e-4)


def test_integrated_gradients_of_the_region_model_is_exact():
    x = _region_inputs()
    model = RegionModel(REGION)
    maps = attribute(model, x, "ig", 1, n_steps=16)
    # linear model, zero baseline: attribution = x / |region| inside, 0 outside
    expected = x[:, 0].numpy() * REGION / REGION.sum()
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-6)
    # the other class's evidence is the opposite
    np.testing.assert_allclose(attribute(model, x, "ig", 0).numpy(), -expected, atol=1e-6)


@pytest.mark.parametrize("method", ["occlusion", "ig", "lime", "shap", "gradshap"])
def test_perturbation_methods_point_at_the_region(method):
    x = _region_inputs()
    model = RegionModel(REGION)
    segments = np.stack([_blocks()] * 2)
    options = {"segments": segments, "n_samples": 150}
    maps = attribute(model, x, method, 1, **options)
    assert _inside(maps, REGION) == [True, True], method
    amap = maps.numpy()
    assert np.all(amap[:, REGION].mean(1) > amap[:, ~REGION].mean(1) + 1e-3)
    # explaining the negative class: the most negative values are in the region
    assert _inside(attribute(model, x, method, 0, **options), REGION, low=True) == [True, True]


def test_kernel_shap_recovers_the_exact_contributions():
    x = _region_inputs()
    model = RegionModel(REGION)
    segments = np.stack([_blocks()] * 2)
    maps = attribute(model, x, "shap", 1, segments=segments, n_samples=200).numpy()
    for i in range(2):
        contribution = x[i, 0].numpy() * REGION / REGION.sum()  # additive: exact Shapley values
        for label in np.unique(segments[i]):
            where = segments[i] == label
            values = maps[i][where]
            np.testing.assert_allclose(values, values[0], atol=1e-6)  # one value per superpixel
            assert values[0] == pytest.approx(contribution[where].sum(), abs=1e-4), (i, label)


def _gradcam_from_hooks(model, layer, x, targets):
    """Grad-CAM computed independently: activations x channel-mean gradients, ReLU, upsampled."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _a, out: store.setdefault("act", out))
    try:
        x = x.clone().requires_grad_(True)
        out = model(x)
        act = store["act"]
        (grads,) = torch.autograd.grad(out[torch.arange(len(targets)), targets].sum(), act)
    finally:
        handle.remove()
    dims = tuple(range(2, act.dim()))
    weights = grads.mean(dim=dims, keepdim=True)
    cam = torch.relu((weights * act).sum(1, keepdim=True))
    mode = "bilinear" if x.dim() == 4 else "trilinear"
    cam = F.interpolate(cam, size=x.shape[2:], mode=mode, align_corners=False)
    return cam[:, 0].detach()


@pytest.mark.parametrize("dims", [2, 3])
def test_gradcam_equals_the_hook_computation(dims):
    model = SmoothNet(dims=dims, channels=2, seed=3).eval()
    shape = (3, 2, 12, 12) if dims == 2 else (2, 2, 8, 10, 12)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2, 1][: shape[0]])
    maps = attribute(model, x, "gradcam", targets)
    assert maps.shape == (shape[0], *shape[2:]) and maps.dtype == torch.float32
    expected = _gradcam_from_hooks(model, model.conv2, x, targets)
    assert expected.abs().max() > 0  # not a trivially empty map
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    # target None: each image's top class
    top = model(x).argmax(1)
    expected = _gradcam_from_hooks(model, model.conv2, x, top)
    np.testing.assert_allclose(attribute(model, x, "gradcam").numpy(), expected.numpy(), atol=1e-6)
    # an explicit layer
    expected = _gradcam_from_hooks(model, model.conv1, x, targets)
    maps = attribute(model, x, "gradcam", targets, layer=model.conv1)
    np.testing.assert_allclose(maps.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


class OneChannelNet(nn.Module):
    """Conv -> ReLU (one channel, the Grad-CAM layer) -> a position-weighted, non-linear head
    whose gradient with respect to the feature map is positive everywhere but not constant."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.register_buffer("weight", torch.linspace(0.5, 2.0, 36).view(1, 6, 6))

    def forward(self, x):
        f = self.relu(self.conv(x))[:, 0]
        score = (self.weight * (f + 0.5 * f**2)).flatten(1).mean(1)
        return torch.stack([score, -score], 1)


def test_gradcam_plus_plus():
    model = OneChannelNet().eval()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(2))
    cam = attribute(model, x, "gradcam", 0, layer=model.relu).numpy()
    plus = attribute(model, x, "gradcam++", 0, layer=model.relu).numpy()
    assert plus.shape == cam.shape == (2, 12, 12) and np.all(plus >= 0)
    for a, b in zip(cam, plus, strict=True):
        assert a.max() > 0
        scale = b.max() / a.max()
        assert scale > 0
        np.testing.assert_allclose(b, scale * a, rtol=1e-4, atol=1e-6 * b.max())
    # on a many-channel net it differs from Grad-CAM but stays non-negative
    net = SmoothNet(seed=4).eval()
    y = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    maps = attribute(net, y, "gradcam++", [0, 1, 2])
    assert torch.all(maps >= 0) and maps.abs().sum() > 0


@pytest.mark.parametrize("dims", [2, 3])
def test_every_method_gives_finite_float_maps_on_the_input_grid(dims):
    model = SmoothNet(dims=dims, seed=5).eval()
    shape = (2, 1, 10, 12) if dims == 2 else (2, 1, 6, 8, 8)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(4))
    for method in METHODS:
        maps = attribute(model, x, method, n_steps=8, nt_samples=4, n_samples=24)
        assert maps.shape == (2, *shape[2:]), method
        assert maps.dtype == torch.float32, method
        assert torch.isfinite(maps).all(), method
        assert maps.abs().sum() > 0 or method.startswith("gradcam"), method
    # the same seed gives the same sampled maps
    a = attribute(model, x, "lime", 1, n_samples=24, seed=3)
    b = attribute(model, x, "lime", 1, n_samples=24, seed=3)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bad_requests_raise_medlens_errors():
    model = SmoothNet().eval()
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(MedlensError, match="nope"):
        attribute(model, x, "nope")
    with pytest.raises(MedlensError):
        attribute(model, x[0], "gradcam")  # no batch axis
    with pytest.raises(MedlensError):
        attribute(model, x, "ig", [0, 1, 2])  # three targets for two images
    with pytest.raises(MedlensError):
        attribute(model, x, "ig", baseline="purple")
    with pytest.raises(MedlensError):
        attribute(model, x, "shap", 0, segments=np.zeros((2, 4, 4), int))
    with pytest.raises(MedlensError):
        attribute(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), x, "gradcam")  # no conv layer


def test_baselines_and_superpixels():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(baseline_like(x, "zeros"), torch.zeros_like(x))
    mean = baseline_like(x, "mean")
    np.testing.assert_allclose(mean[:, :, 4, 7].numpy(), x.mean((2, 3)).numpy(), rtol=1e-6)
    blur = baseline_like(x, "blur")
    assert blur.shape == x.shape and blur.std() < x.std() / 2
    noise = baseline_like(x, "noise", seed=1)
    assert torch.all(noise >= x.amin((2, 3), keepdim=True) - 1e-6)
    assert torch.all(noise <= x.amax((2, 3), keepdim=True) + 1e-6)
    assert torch.equal(noise, baseline_like(x, "noise", seed=1))
    # two flat parts: superpixels follow the edge (never straddle it) wherever it lies, in 2D
    # and 3D; labels are consecutive from 0
    for shape, edge, n_segments in (
        ((24, 24), 7, None),
        ((24, 24), 10, 8),
        ((24, 24), 13, 16),
        ((12, 16, 16), 6, None),
    ):
        image = np.zeros((1, *shape))
        image[..., edge:] = 100.0
        labels = superpixels(image, n_segments=n_segments)
        assert labels.shape == shape and labels.dtype == np.int64
        assert set(np.unique(labels)) == set(range(labels.max() + 1))
        assert labels.max() >= 4
        for label in np.unique(labels):
            assert len(np.unique(image[0][labels == label])) == 1, (shape, edge, label)


class TinySegNet(nn.Module):
    def __init__(self, deep_supervision: bool = False):
        super().__init__()
        torch.manual_seed(6)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.deep_supervision = deep_supervision

    def forward(self, x):
        out = self.conv(x)
        return [out, out[:, :, ::2, ::2]] if self.deep_supervision else out


def test_region_score_is_the_mean_logit_in_the_region():
    net = TinySegNet().eval()
    x = torch.randn(2, 1, 10, 12, generator=torch.Generator().manual_seed(6))
    region = torch.rand(2, 10, 12, generator=torch.Generator().manual_seed(7)) > 0.6
    with torch.no_grad():
        logits = net(x)
        expected = torch.stack([logits[i, 2][region[i]].mean() for i in range(2)])
        score = RegionScore(net, 2, region)(x)
        assert score.shape == (2, 1)
        np.testing.assert_allclose(score[:, 0].numpy(), expected.numpy(), rtol=1e-5)
        # one region for a batch of perturbations of one image
        one = RegionScore(net, 1, region[:1])
        batch = torch.cat([x[:1]] * 5)
        np.testing.assert_allclose(
            one(batch)[:, 0].numpy(), [logits[0, 1][region[0]].mean().item()] * 5, rtol=1e-5
        )
        # deep supervision: the full-resolution output is scored
        deep = RegionScore(TinySegNet(deep_supervision=True), 2, region)
        np.testing.assert_allclose(deep(x)[:, 0].numpy(), expected.numpy(), rtol=1e-5)
    # attributions of a region score: Grad-CAM's default layer is the network's conv
    scorer = RegionScore(net, 2, region[:1]).eval()
    maps = attribute(scorer, x[:1], "ig", 0, n_steps=8)
    assert maps.shape == (1, 10, 12)
    assert attribute(scorer, x[:1], "gradcam", 0).shape == (1, 10, 12)


# ----------------------------------------------------------------------------- faithfulness
def _bright_region_images(n: int = 2, seed: int = 0) -> torch.Tensor:
    """A bright region on a dark, noisy background: deleting the region lowers the score."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.2, (n, 1, SIDE, SIDE))
    images[:, :, REGION] += 0.8
    return torch.from_numpy(images).float()


def test_the_true_map_beats_a_random_one_on_deletion_and_insertion():
    model = RegionModel(REGION)
    x = _bright_region_images()
    targets = torch.tensor([1, 1])
    truth = torch.from_numpy(np.stack([REGION] * 2).astype(np.float32))
    random = torch.rand(2, SIDE, SIDE, generator=torch.Generator().manual_seed(8))
    good = deletion_insertion(model, x, truth, targets, steps=16)
    bad = deletion_insertion(model, x, random, targets, steps=16)
    assert good["deletion"].shape == (2, 17) and good["fractions"].shape == (17,)
    assert np.all(good["deletion_auc"] < bad["deletion_auc"] - 0.02)
    assert np.all(good["insertion_auc"] > bad["insertion_auc"] + 0.02)
    for curves in (good, bad):
        assert np.all((curves["deletion_auc"] >= 0) & (curves["deletion_auc"] <= 1))
        assert np.all((curves["insertion_auc"] >= 0) & (curves["insertion_auc"] <= 1))
    # the ends of the curves: the original image and its blurred version (sigma = side / 8)
    blurred = torch.from_numpy(
        ndimage.gaussian_filter(x.double().numpy(), (0, 0, SIDE / 8, SIDE / 8), mode="nearest")
    ).float()
    with torch.no_grad():
        p_image = torch.sigmoid(2 * model(x)[:, 1]).numpy()
        p_blur = torch.sigmoid(2 * model(blurred)[:, 1]).numpy()
    assert np.all(p_image > p_blur + 0.05)
    for curves in (good, bad):
        np.testing.assert_allclose(curves["deletion"][:, 0], p_image, atol=1e-5)
        np.testing.assert_allclose(curves["deletion"][:, -1], p_blur, atol=1e-5)
        np.testing.assert_allclose(curves["insertion"][:, 0], p_blur, atol=1e-5)
        np.testing.assert_allclose(curves["insertion"][:, -1], p_image, atol=1e-5)
    # deleting the region's pixels first: the probability falls monotonically while they go
    steps_in_region = int(np.floor(REGION.sum() / (SIDE * SIDE) * 16))
    assert np.all(np.diff(good["deletion"][:, : steps_in_region + 1], axis=1) < 0)


def test_target_probability():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    p = target_probability(logits, torch.tensor([1, 2]))
    np.testing.assert_allclose(p.numpy(), logits.softmax(1)[[0, 1], [1, 2]].numpy(), rtol=1e-6)
    one = torch.tensor([[0.3], [-2.0]])
    np.testing.assert_allclose(
        target_probability(one, torch.tensor([0, 0])).numpy(), torch.sigmoid(one[:, 0]).numpy()
    )


def test_randomisation_flags_a_map_that_is_the_image():
    model = SmoothNet(seed=9).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(9))
    targets = torch.tensor([0, 1, 2])

    def edge_detector(_model, images, _targets):  # ignores the model altogether
        return images[:, 0]

    check = randomisation_check(model, x, edge_detector, targets, groups=3)
    assert len(check["steps"]) == len(check["spearman"]) == 3
    assert check["final"] == pytest.approx(1.0) and check["flagged"] is True

    def gradcam(m, images, t):
        return attribute(m, images, "gradcam", t)

    check = randomisation_check(model, x, gradcam, targets, groups=3, seed=1)
    assert check["steps"][0] == "head"  # from the output backwards
    assert len(check["spearman"]) == 3 and all(-1 <= s <= 1 for s in check["spearman"])
    assert min(check["spearman"]) < 0.9  # the map follows the weights
    assert len(set(np.round(check["spearman"], 6))) > 1  # and changes from step to step
    assert check["flagged"] == (check["final"] >= FLAG_CORRELATION)
    # the model handed in is left as it was
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # a reference passed in is used as the trained model's maps
    reference = gradcam(model, x, targets)
    again = randomisation_check(model, x, gradcam, targets, groups=3, seed=1, reference=reference)
    assert again["spearman"] == pytest.approx(check["spearman"])


def test_pointing_hits():
    maps = np.zeros((4, 6, 6))
    masks = np.zeros((4, 6, 6), bool)
    maps[0, 2, 2] = 1.0
    masks[0, 2, 2] = True  # hit
    maps[1, 2, 0] = 1.0
    masks[1, 2, 2] = True  # miss, two pixels away
    maps[2, 2, 3] = 1.0
    masks[2, 2, 2] = True  # miss, next to it
    maps[3, 1, 1] = 1.0  # empty mask: never a hit
    assert pointing_hits(maps, masks).tolist() == [True, False, False, False]
    assert pointing_hits(maps, masks, tolerance=1).tolist() == [True, False, True, False]
    assert pointing_hits(torch.from_numpy(maps), masks, tolerance=2).tolist() == [
        True,
        True,
        True,
        False,
    ]


# ----------------------------------------------------------------------------- simulated lesions
def _check_lesions(images: np.ndarray, made: dict, margin: float) -> None:
    n = len(images)
    labels, masks, out = made["labels"], made["masks"], made["images"]
    assert out.dtype == images.dtype and out.shape == images.shape and masks.shape == images.shape
    assert labels.sum() == round(0.5 * n)
    assert np.array_equal(masks.reshape(n, -1).any(1), labels == 1)
    assert np.array_equal(np.isnan(made["centres"]).any(1), labels == 0)
    negatives = labels == 0
    assert np.array_equal(out[negatives], images[negatives])  # bit for bit
    change = np.abs(out.astype(np.float64) - images.astype(np.float64))
    for i in np.flatnonzero(labels):
        # the centre is inside its lesion, the lesion inside the image's changed area
        assert masks[i][tuple(np.round(made["centres"][i]).astype(int))]
        far = ndimage.distance_transform_edt(~masks[i]) > margin
        assert change[i][far].max() <= 1.0, i  # outside (and a few pixels off) the lesion: ~0
        low, high = np.percentile(images[i], [1, 99])
        assert change[i][masks[i]].mean() > 0.1 * (high - low), i  # inside: a real change


def test_lesions_in_real_2d_images(real):
    with np.load(real("medmnist", "breastmnist.npz")) as data:
        images = data["val_images"][:40]
    original = images.copy()
    made = simulate_lesions(images, seed=3)
    assert np.array_equal(images, original)  # input not modified
    _check_lesions(images, made, margin=5)
    again = simulate_lesions(images, seed=3)
    assert np.array_equal(again["images"], made["images"])
    other = simulate_lesions(images, seed=4)
    assert not np.array_equal(other["images"], made["images"])
    # lesion sizes: default radius 8-15 % of the side, areas of about pi r^2 (elongated)
    side = images.shape[1]
    areas = made["masks"][made["labels"] == 1].sum((1, 2))
    assert np.all(areas >= np.pi * (0.08 * side * 0.75) ** 2 * 0.7)
    assert np.all(areas <= np.pi * (0.15 * side * 1.3) ** 2 * 1.3)
    # float images keep their dtype too (no rounding)
    made_f = simulate_lesions(images.astype(np.float32) / 255, seed=3, fraction=0.25)
    assert made_f["images"].dtype == np.float32 and made_f["labels"].sum() == 10
    with pytest.raises(ValueError):
        simulate_lesions(images[0])


def test_lesions_in_real_3d_volumes(real):
    with np.load(real("medmnist", "adrenalmnist3d.npz")) as data:
        volumes = data["val_images"][:6]
    made = simulate_lesions(volumes, seed=1)
    assert made["centres"].shape == (6, 3)
    _check_lesions(volumes, made, margin=5)


def test_lesion_npz_writes_a_medmnist_layout_file(real, tmp_path):
    source = tmp_path / "small.npz"
    with np.load(real("medmnist", "breastmnist.npz")) as data:
        np.savez(source, train_images=data["train_images"][:20], val_images=data["val_images"][:8])
    masks = lesion_npz(source, tmp_path / "lesions.npz", copies=2, seed=0)
    with np.load(tmp_path / "lesions.npz") as out, np.load(source) as src:
        assert sorted(out.files) == ["train_images", "train_labels", "val_images", "val_labels"]
        for split, n in (("train", 20), ("val", 8)):
            images, labels = out[f"{split}_images"], out[f"{split}_labels"]
            assert images.shape == (2 * n, 28, 28) and images.dtype == np.uint8
            assert labels.shape == (2 * n, 1) and labels.sum() == n
            lesions = masks[f"{split}_masks"]
            assert lesions.shape == images.shape
            assert np.array_equal(lesions.reshape(2 * n, -1).any(1), labels[:, 0] == 1)
            repeated = np.concatenate([src[f"{split}_images"]] * 2)
            negative = labels[:, 0] == 0
            assert np.array_equal(images[negative], repeated[negative])
