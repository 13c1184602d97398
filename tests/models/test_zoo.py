"""Tests every registered model through the common backbone interface, in 2D and 3D.

The tests are parametrised over :func:`list_models`, so a new model gets them on registration.
Inputs stay small (28x28, 28^3 behind the large stem, 8^3 behind the small one) to keep the
file fast on a CPU; the full-resolution 3D small-stem case is in ``test_model_archs.py``, marked
slow. The multi-scale features (``feature_info``, ``forward_intermediates``) are tested on
narrow builds (the ``narrow`` fixture of ``conftest.py``) of every model, U-Nets included; the
``norm`` option in ``test_zoo_norm.py``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
from torch import nn

from medlens.models import Backbone, count_parameters, create_model, list_models, register_model
from medlens.models import registry as registry_module

MODELS = list_models(task="classification")  # the Backbone interface; U-Nets: test_unet.py
SEGMENTATION = list_models(task="segmentation")
DIMS = (2, 3)
NUM_CLASSES = 3


def build(
    name: str,
    spatial_dims: int,
    in_channels: int = 1,
    num_classes: int = NUM_CLASSES,
    seed: int = 0,
    stem: str | None = None,
    **kw: Any,
) -> Backbone:
    """``create_model`` under a fixed seed; ``stem`` only for models that have one."""
    torch.manual_seed(seed)
    args = dict(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kw)
    if stem is None:
        return create_model(name, **args)
    try:
        return create_model(name, stem=stem, **args)
    except TypeError:  # a model without stem options (smallcnn)
        return create_model(name, **args)


def small_input(spatial_dims: int, in_channels: int = 1, seed: int = 1) -> tuple[torch.Tensor, int]:
    """A batch of 2 and its side: 28x28 in 2D, 8^3 in 3D (both behind the small stem)."""
    side = 28 if spatial_dims == 2 else 8
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, in_channels, *(side,) * spatial_dims, generator=g), side


@pytest.fixture(
    scope="module", params=[(n, d) for n in MODELS for d in DIMS], ids=lambda p: f"{p[0]}-{p[1]}d"
)
def zoo(request) -> tuple[str, int, Backbone]:
    """``(name, spatial_dims, model)``, built once (seed 0, small stem) for the tests below.

    Module scope makes pytest run all tests of one model together and build it once. Tests must
    not change the model: those that train or reset it work on ``copy.deepcopy``.
    """
    name, spatial_dims = request.param
    _, side = small_input(spatial_dims)
    return name, spatial_dims, build(name, spatial_dims, input_size=side, seed=0).eval()


def test_the_zoo_is_registered():
    assert {"resnet10", "resnet18", "resnet34", "resnet50", "densenet121", "smallcnn"} <= set(
        MODELS
    )
    assert sorted(MODELS) == MODELS
    assert list_models("resnet*") == ["resnet10", "resnet18", "resnet34", "resnet50"]


def test_forward_shapes_small_stem(zoo):
    _, spatial_dims, model = zoo
    x, _ = small_input(spatial_dims)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    assert isinstance(model, Backbone)
    assert (model.spatial_dims, model.in_channels, model.num_classes) == (spatial_dims, 1, 3)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("name", MODELS)
def test_forward_shapes_large_stem(name, spatial_dims, in_channels):
    """2D 64x64 and 3D 28^3 (the smallest volumes a large stem sees), 1 and 3 channels."""
    side = 64 if spatial_dims == 2 else 28
    model = build(name, spatial_dims, in_channels, stem="large").eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, in_channels, *(side,) * spatial_dims))
        logits = model.forward_head(features)
    assert features.shape[:2] == (2, model.num_features)
    assert features.dim() == spatial_dims + 2
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()


def test_backward_and_feature_layer_hooks(zoo):
    """Finite grads for every parameter, and what Grad-CAM needs from ``feature_layer``.

    A forward hook on it must see exactly the feature map, a full backward hook its gradient.
    """
    _, spatial_dims, model = zoo
    model = copy.deepcopy(model).train()
    x, _ = small_input(spatial_dims)
    seen: dict[str, torch.Tensor] = {}
    layer = model.feature_layer
    assert any(m is layer for m in model.modules())
    h1 = layer.register_forward_hook(lambda m, i, o: seen.__setitem__("act", o.detach()))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: seen.__setitem__("grad", go[0]))
    try:
        logits = model(x)
        assert torch.isfinite(logits).all()
        logits[:, 1].sum().backward()
    finally:
        h1.remove()
        h2.remove()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    # In training mode too, batch norm output depends on the batch only: same map again.
    with torch.no_grad():
        torch.testing.assert_close(seen["act"], model.forward_features(x))
    # d logit / d features = the class's fc weights spread evenly over the map's positions.
    positions = math.prod(seen["act"].shape[2:])
    expected = (model.fc.weight[1] / positions).view(1, -1, *(1,) * spatial_dims)
    torch.testing.assert_close(seen["grad"], expected.expand_as(seen["act"]))


def test_same_seed_same_model_and_output(zoo):
    name, spatial_dims, model = zoo
    x, side = small_input(spatial_dims)
    again = build(name, spatial_dims, input_size=side, seed=0).eval()
    sa, sb = model.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("name", MODELS)
def test_other_seed_other_weights(name):
    sa, sb = build(name, 2, seed=0).state_dict(), build(name, 2, seed=1).state_dict()
    drawn = [k for k, v in sa.items() if k.endswith("weight") and v.dim() > 1]  # conv, linear
    assert drawn
    assert not any(torch.equal(sa[k], sb[k]) for k in drawn)


def test_forward_is_head_of_features(zoo):
    _, spatial_dims, model = zoo
    x, _ = small_input(spatial_dims)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(model(x), model.forward_head(features))
    assert features.shape[:2] == (2, model.num_features)
    assert features.dim() == spatial_dims + 2
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(pooled, features.mean(dim=tuple(range(2, features.dim()))))


def test_reset_classifier(zoo):
    _, spatial_dims, model = zoo
    model = copy.deepcopy(model)
    features = torch.randn(2, model.num_features, *(3,) * spatial_dims)
    body = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    model.reset_classifier(5)
    assert model.num_classes == 5
    assert model.forward_head(features).shape == (2, 5)
    model.reset_classifier(0)
    assert model.num_classes == 0
    torch.testing.assert_close(model.forward_head(features), features.flatten(2).mean(-1))
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in body.items())
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


def test_reset_classifier_follows_dtype():
    model = build("smallcnn", 2, input_size=28).double().eval()
    model.reset_classifier(4)
    assert model.fc.weight.dtype == torch.float64
    with torch.no_grad():
        assert model(small_input(2)[0].double()).shape == (2, 4)


@pytest.mark.parametrize("name", MODELS)
def test_num_classes_zero_gives_pooled_features(name):
    """Built headless (3D is covered by ``reset_classifier(0)`` above)."""
    x, side = small_input(2)
    model = build(name, 2, num_classes=0, input_size=side).eval()
    assert count_parameters(model.fc) == 0
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(out, model.forward_head(model.forward_features(x), True))
    assert out.shape == (2, model.num_features)


@pytest.mark.parametrize("name", MODELS)
def test_dropout_only_in_training(name):
    model = build(name, 2, dropout=0.5).eval()
    features = torch.rand(4, model.num_features, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(features), model.forward_head(features))
        model.train()
        assert not torch.equal(model.forward_head(features), model.forward_head(features))


def test_count_parameters():
    model = create_model("smallcnn", in_channels=1, num_classes=2, width=4)
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters())
    model.fc.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - (model.num_features * 2 + 2)


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet19'") as err:
        create_model("resnet19")
    assert all(name in str(err.value) for name in MODELS)
    assert "did you mean" in str(err.value)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"spatial_dims": True}, "spatial_dims"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": 1.5}, "in_channels"),
        ({"num_classes": -1}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
@pytest.mark.parametrize("name", MODELS)
def test_bad_arguments(name, kw, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **kw)


def test_wrong_input_shape_is_named(zoo):
    _, spatial_dims, model = zoo
    axes = "H, W" if spatial_dims == 2 else "D, H, W"
    x, side = small_input(spatial_dims)
    with pytest.raises(ValueError, match=rf"expects input \(B, 1, {axes}\)"):
        model(x[0])  # unbatched
    with pytest.raises(ValueError, match=rf"got \(2, 3, {side}, {side}"):
        model.forward_features(x.expand(-1, 3, *x.shape[2:]))


def test_register_model(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register_model("tinycnn")
    def tinycnn(**kw: Any) -> Backbone:
        return create_model("smallcnn", width=2, num_blocks=2, **kw)

    assert "tinycnn" in list_models()
    model = create_model("tinycnn", spatial_dims=3, in_channels=2, num_classes=4)
    assert model(torch.randn(1, 2, 8, 8, 8)).shape == (1, 4)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tinycnn")(tinycnn)
    with pytest.raises(ValueError, match="non-empty"):
        register_model("")


# -- multi-scale features: feature_info and forward_intermediates -----------------------------


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_feature_info(
    model: nn.Module, x: torch.Tensor, sides: list[tuple[int, ...]] | None = None
) -> None:
    """``forward_intermediates(x)`` matches ``feature_info`` and hooks on its modules.

    ``sides``: the spatial shape of each stage, if not the input's divided by ``reduction``.
    """
    info = model.feature_info
    assert info and all(set(f) == {"module", "num_chs", "reduction"} for f in info)
    reductions = [f["reduction"] for f in info]
    assert reductions == sorted(reductions) and reductions[0] >= 1
    assert info[-1]["num_chs"] == model.num_features
    assert model.get_submodule(info[-1]["module"]) is model.feature_layer
    if sides is None:
        sides = [tuple(math.ceil(s / r) for s in x.shape[2:]) for r in reductions]
    seen: list[torch.Tensor] = []
    hooks = [
        model.get_submodule(f["module"]).register_forward_hook(
            lambda m, i, o: seen.append(o.clone())
        )
        for f in info
    ]
    try:
        with torch.no_grad():
            final = model.forward_features(x)
            maps = model.forward_intermediates(x)  # runs the same modules: hooks fire again
    finally:
        for h in hooks:
            h.remove()
    assert len(maps) == len(info) and len(seen) == 2 * len(info)
    hooked_maps, hooked_again = seen[: len(info)], seen[len(info) :]
    for f, side, m, hooked, again in zip(info, sides, maps, hooked_maps, hooked_again, strict=True):
        assert m.shape == (x.shape[0], f["num_chs"], *side), f
        torch.testing.assert_close(m, hooked)
        torch.testing.assert_close(m, again)
    torch.testing.assert_close(maps[-1], final)


@pytest.mark.parametrize(
    ("spatial_dims", "stem", "side"), [(2, "large", 64), (3, "large", 32), (3, "small", 12)]
)
@pytest.mark.parametrize("name", MODELS)
def test_feature_info_describes_forward_intermediates(narrow, name, spatial_dims, stem, side):
    try:
        model = narrow(name, spatial_dims, stem=stem)
    except TypeError:  # a model without stem options (smallcnn)
        model = narrow(name, spatial_dims)
    check_feature_info(model, rand(2, 1, *(side,) * spatial_dims))


@pytest.mark.parametrize("spatial_dims", DIMS)
@pytest.mark.parametrize("name", SEGMENTATION)
def test_unet_feature_info_follows_anisotropic_strides(narrow, name, spatial_dims):
    """Encoder stages with per-axis strides: ``reduction`` is the largest axis's."""
    strides = [1, 2, (1, 2) if spatial_dims == 2 else (1, 2, 2)]
    model = narrow(name, spatial_dims, strides=strides)
    info = model.feature_info
    assert [f["module"] for f in info] == ["encoder.0", "encoder.1", "encoder.2"]
    assert [f["num_chs"] for f in info] == list(model.features)
    assert [f["reduction"] for f in info] == [1, 2, 4]
    shape = (8, 16) if spatial_dims == 2 else (8, 16, 16)
    sides = [shape, tuple(s // 2 for s in shape)]
    sides.append(tuple(s // d for s, d in zip(shape, model.required_divisor, strict=True)))
    check_feature_info(model, rand(2, 1, *shape), sides)


@pytest.mark.parametrize("name", MODELS + SEGMENTATION)
def test_forward_intermediates_indices(narrow, name):
    model = narrow(name, 2)
    x = rand(1, 1, 32, 32)
    n = len(model.feature_info)

    def take(indices: Any, stop_early: bool = False) -> list[torch.Tensor]:
        with torch.no_grad():
            return model.forward_intermediates(x, indices, stop_early=stop_early)

    every = take(None)
    assert [m.shape for m in take(2)] == [m.shape for m in every[-2:]]
    assert [m.shape for m in take(n)] == [m.shape for m in every]
    for indices in ([0, -1], [-1, 0], [n - 1, 0, -n]):  # shallow to deep, no repeats
        got = take(indices)
        assert len(got) == 2
        torch.testing.assert_close(got[0], every[0])
        torch.testing.assert_close(got[1], every[-1])
    # stop_early gives the same map without running the deeper stages.
    calls: list[int] = []
    last = model.get_submodule(model.feature_info[-1]["module"])
    hook = last.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        torch.testing.assert_close(take([1], stop_early=True)[0], every[1])
        assert not calls
        take([1])
        assert calls
    finally:
        hook.remove()
    for bad in (0, n + 1, [n], [-n - 1], [], "0", [True], 1.0):
        with pytest.raises(ValueError, match="indices"):
            take(bad)
    with pytest.raises(ValueError, match="expects input"):
        model.forward_intermediates(x[0])
