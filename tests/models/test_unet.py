"""Tests of the plan-built U-Net: 2D/3D, plain/residual encoder, anisotropic strides and
kernels, deep supervision and its loss helpers, argument checks, and its registry entries.

Feature counts stay tiny (4 to 32 channels) so that the file runs in seconds on a CPU.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import torch
from torch import nn

from medlens.models import (
    UNet,
    count_parameters,
    create_model,
    deep_supervision_weights,
    downsample_targets,
    list_models,
    model_task,
    register_model,
    stage_features,
)
from medlens.models import registry as registry_module
from medlens.models.unet import ConvNormAct, ResidualBlock

FEATURES = (4, 8, 16)
NUM_CLASSES = 3
# A thick-slice volume: no downsampling along D in the first pooling stage, 1x3x3 kernels there.
ANISO_3D = {
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
    "kernel_sizes": [[1, 3, 3], [3, 3, 3], [3, 3, 3]],
}
ANISO_2D = {"strides": [1, [1, 2], 2], "kernel_sizes": [[1, 3], 3, 3]}
# (spatial_dims, plan, input spatial shape, required divisor)
CASES = {
    "2d": (2, {}, (32, 24), (4, 4)),
    "2d-aniso": (2, ANISO_2D, (16, 32), (2, 4)),
    "3d": (3, {}, (8, 16, 12), (4, 4, 4)),
    "3d-aniso": (3, ANISO_3D, (16, 64, 64), (2, 4, 4)),
}


def build(
    spatial_dims: int = 2, seed: int = 0, features: tuple[int, ...] = FEATURES, **kw: Any
) -> UNet:
    torch.manual_seed(seed)
    return UNet(spatial_dims, 1, NUM_CLASSES, features=features, **kw)


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("encoder", ["plain", "residual"])
@pytest.mark.parametrize("case", list(CASES))
def test_output_has_the_input_shape(case, encoder):
    spatial_dims, plan, shape, divisor = CASES[case]
    model = build(spatial_dims, encoder=encoder, **plan).eval()
    assert model.required_divisor == divisor
    x = rand(2, 1, *shape)
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, NUM_CLASSES, *shape)
    assert torch.isfinite(logits).all()
    assert features.shape == (
        2,
        FEATURES[-1],
        *(s // d for s, d in zip(shape, divisor, strict=True)),
    )


def test_anisotropic_stages_follow_the_plan():
    """Per-axis strides and kernels reach the layers: 16x64x64 -> 16x32x32 -> 8x16x16."""
    model = build(3, **ANISO_3D).eval()
    seen = []
    hooks = [
        s.register_forward_hook(lambda m, i, o: seen.append(o.shape[2:])) for s in model.encoder
    ]
    with torch.no_grad():
        model(rand(1, 1, 16, 64, 64))
    for h in hooks:
        h.remove()
    assert seen == [(16, 64, 64), (16, 32, 32), (8, 16, 16)]
    first = model.encoder[0][0].conv
    assert first.kernel_size == (1, 3, 3) and first.padding == (0, 1, 1)
    assert model.encoder[1][0].conv.stride == (1, 2, 2)
    assert model.encoder[1][1].conv.stride == (1, 1, 1)  # only the first conv downsamples
    assert [up.kernel_size for up in model.upsamples] == [(1, 2, 2), (2, 2, 2)]
    assert [up.stride for up in model.upsamples] == [(1, 2, 2), (2, 2, 2)]
    assert model.decoder[0][0].conv.kernel_size == (1, 3, 3)


@pytest.mark.parametrize("encoder", ["plain", "residual"])
@pytest.mark.parametrize(
    ("spatial_dims", "features", "plan", "shape", "expected"),
    [
        (2, (4, 8, 16, 32, 32), {}, (32, 32), [(32, 32), (16, 16), (8, 8)]),
        (
            3,
            (4, 8, 16, 32),
            {"strides": [1, [1, 2, 2], [1, 2, 2], 2], "kernel_sizes": [[1, 3, 3], 3, 3, 3]},
            (8, 32, 32),
            [(8, 32, 32), (8, 16, 16)],
        ),
    ],
)
def test_deep_supervision_outputs(encoder, spatial_dims, features, plan, shape, expected):
    model = build(spatial_dims, features=features, encoder=encoder, deep_supervision=True, **plan)
    x = rand(2, 1, *shape)
    with torch.no_grad():
        outputs = model.train()(x)
        single = model.eval()(x)
    assert isinstance(outputs, list)
    assert [tuple(o.shape[2:]) for o in outputs] == expected
    assert all(o.shape[:2] == (2, NUM_CLASSES) for o in outputs)
    assert len(outputs) == model.num_outputs
    scales = model.deep_supervision_scales
    assert [tuple(s // f for s, f in zip(shape, sc, strict=True)) for sc in scales] == expected
    # Instance norm without dropout computes the same in both modes: eval gives outputs[0].
    assert isinstance(single, torch.Tensor)
    torch.testing.assert_close(single, outputs[0])


@pytest.mark.parametrize("features", [(4, 8), (4, 8, 16)])
def test_shallow_deep_supervision_keeps_the_full_resolution_output(features):
    """Without a decoder stage above the lowest one, the list holds the full resolution only."""
    model = build(2, features=features, deep_supervision=True).train()
    outputs = model(rand(1, 1, 16, 16))
    assert isinstance(outputs, list) and len(outputs) == 1
    assert outputs[0].shape == (1, NUM_CLASSES, 16, 16)


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_backward_gives_finite_gradients_to_every_parameter(encoder, deep_supervision):
    """Every parameter is used (no idle heads, which DDP rejects) and gets a finite gradient."""
    model = build(
        3, features=(4, 8, 16, 16), encoder=encoder, deep_supervision=deep_supervision
    ).train()
    x = rand(2, 1, 8, 16, 16)
    target = torch.randint(
        0, NUM_CLASSES, (2, 8, 16, 16), generator=torch.Generator().manual_seed(2)
    )
    out = model(x)
    outputs = out if isinstance(out, list) else [out]
    targets = downsample_targets(target, outputs)
    weights = deep_supervision_weights(len(outputs))
    loss = sum(
        w * nn.functional.cross_entropy(o, t)
        for w, o, t in zip(weights, outputs, targets, strict=True)
    )
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert len(outputs) == (2 if deep_supervision else 1)


@pytest.mark.parametrize("encoder", ["plain", "residual"])
def test_same_seed_same_model_and_output(encoder):
    a, b = build(3, encoder=encoder, **ANISO_3D), build(3, encoder=encoder, **ANISO_3D)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = rand(1, 1, 4, 16, 16)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))
    sc = build(3, seed=1, encoder=encoder, **ANISO_3D).state_dict()
    drawn = [k for k, v in sa.items() if v.dim() > 1]  # conv and transposed-conv weights
    assert drawn and not any(torch.equal(sa[k], sc[k]) for k in drawn)


def test_parameter_counts_by_hand():
    """Two stages of 4 and 8 channels in 2D, counted layer by layer (3x3 convs, no conv bias)."""
    plain = UNet(2, 1, 2, features=(4, 8))
    # enc 9*(1*4 + 4*4 + 4*8 + 8*8) + norms 2*(4+4+8+8); up 8*4*2*2; dec 9*(8*4 + 4*4) + 2*(4+4);
    # head 4*2 + 2
    assert count_parameters(plain) == 1044 + 48 + 128 + 432 + 16 + 10 == 1678
    res = UNet(2, 1, 2, features=(4, 8), encoder="residual", blocks_per_stage=1)
    # stem 36+8; block 4->4: 2*(144+8); block 4->8 /2: 288+16 + 576+16 + 1x1 proj 32+16; decoder
    # and head as above
    assert count_parameters(res) == 44 + 304 + 944 + 576 + 10 == 1878
    for p in plain.encoder.parameters():
        p.requires_grad_(False)
    assert count_parameters(plain, trainable_only=True) == 1678 - 1044 - 48


def test_residual_blocks_and_shortcuts():
    model = build(2, encoder="residual", blocks_per_stage=[1, 2, 3])
    assert [len(stage) for stage in model.encoder] == [1, 2, 3]
    assert all(isinstance(b, ResidualBlock) for stage in model.encoder for b in stage)
    assert isinstance(model.stem, ConvNormAct)
    # A projection only where width or resolution changes: the first block of stages 1 and 2.
    projected = [
        (s, j)
        for s, stage in enumerate(model.encoder)
        for j, block in enumerate(stage)
        if not isinstance(block.shortcut, nn.Identity)
    ]
    assert projected == [(1, 0), (2, 0)]
    # nnU-Net ResEnc's default block counts; the decoder stays plain.
    default = build(2, features=(4, 4, 4, 4, 4, 4), encoder="residual")
    assert [len(stage) for stage in default.encoder] == [1, 3, 4, 6, 6, 6]
    assert all(isinstance(b, ConvNormAct) for stage in default.decoder for b in stage)


def test_layers_are_nnunet_style():
    model = UNet(2, 1, 2, features=(32, 64))
    norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and all(n.affine and n.eps == 1e-5 for n in norms)
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.01 for a in acts)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert [c for c in convs if c.bias is not None] == list(model.heads)
    assert all(torch.equal(h.bias, torch.zeros_like(h.bias)) for h in model.heads)
    # Kaiming normal, fan-in, leaky ReLU gain with a=0.01: std = sqrt(2 / (1 + a^2) / fan_in).
    w = model.encoder[1][1].conv.weight  # 64 -> 64, 3x3
    expected = math.sqrt(2 / (1 + 0.01**2) / (64 * 9))
    assert abs(w.std().item() / expected - 1) < 0.05
    assert abs(w.mean().item()) < 0.05 * expected


def test_batch_norm_and_dropout_options():
    model = build(2, norm="batch", dropout=0.5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in model.modules())
    x = rand(2, 1, 16, 16)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_defaults():
    model = UNet(2, 1, 2)
    assert model.features == (32, 64, 128, 256, 320)
    assert model.strides == ((1, 1), (2, 2), (2, 2), (2, 2), (2, 2))
    assert model.kernel_sizes == ((3, 3),) * 5
    assert model.required_divisor == (16, 16)
    assert model.num_features == 320 and model.num_outputs == 1
    assert model.feature_layer is model.encoder[-1]
    with torch.no_grad():
        assert model.eval()(rand(1, 1, 32, 16)).shape == (1, 2, 32, 16)


def test_stage_features_caps_like_nnunet():
    assert stage_features(6, 3) == [32, 64, 128, 256, 320, 320]
    assert stage_features(7, 2) == [32, 64, 128, 256, 512, 512, 512]
    assert stage_features(3, 2, base=16) == [16, 32, 64]
    with pytest.raises(ValueError, match="num_stages"):
        stage_features(0, 3)


# -- deep supervision helpers ---------------------------------------------------------------------


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    for n in range(1, 7):
        w = deep_supervision_weights(n)
        assert sum(w) == pytest.approx(1.0)
        assert all(a == pytest.approx(2 * b) for a, b in itertools.pairwise(w))
        # nnU-Net: halving weights over all n + 1 decoder levels, the lowest set to 0, normalised.
        nnunet = [0.5**i for i in range(n + 1)]
        nnunet[-1] = 0.0
        assert w == pytest.approx([v / sum(nnunet) for v in nnunet[:-1]])
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n must be"):
            deep_supervision_weights(bad)


def test_downsample_targets_is_nearest():
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 5, (2, 8, 32, 32), generator=g)
    small = downsample_targets(target, [(8, 32, 32), (8, 16, 16), (4, 8, 8)])
    assert small[0] is target
    assert torch.equal(small[1], target[:, :, ::2, ::2])
    assert torch.equal(small[2], target[:, ::2, ::4, ::4])
    assert all(s.dtype == torch.int64 for s in small)
    # with a channel axis (one-hot or a (B, 1, ...) label map), and from the outputs themselves
    onehot = nn.functional.one_hot(target, 5).movedim(-1, 1).float()
    outputs = [torch.zeros(2, 5, 8, 32, 32), torch.zeros(2, 5, 8, 16, 16)]
    down = downsample_targets(onehot, outputs)
    assert torch.equal(down[1], onehot[..., ::2, ::2])
    assert downsample_targets(target, []) == []
    with pytest.raises(ValueError, match="target must be"):
        downsample_targets(target[0, 0], [(16, 16)])
    with pytest.raises(ValueError, match="spatial axes"):
        downsample_targets(target, [(8, 32, 32), (16, 16)])


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"in_channels": 0}, "in_channels"),
        ({"num_classes": 0}, "num_classes must be >= 1"),
        ({"features": (8,)}, "features must be at least 2"),
        ({"features": (8, 0)}, "features must be positive"),
        ({"features": 8}, "features must be at least 2"),
        ({"strides": [1, 2]}, "strides has 2 entries but features has 3"),
        ({"kernel_sizes": [3, 3, 3, 3]}, "kernel_sizes has 4 entries but features has 3"),
        ({"strides": [1, [2, 2, 2], 2]}, r"strides\[1\] must be a positive int or 2"),
        ({"strides": [1, 0, 2]}, r"strides\[1\] must be a positive int"),
        ({"strides": [2, 2, 2]}, r"strides\[0\] must be 1"),
        ({"kernel_sizes": [3, [3, 4], 3]}, r"kernel_sizes\[1\] must be odd"),
        ({"convs_per_stage": 0}, "convs_per_stage must be positive"),
        ({"convs_per_stage": [2, 2]}, "convs_per_stage has 2 entries"),
        ({"blocks_per_stage": [1, 2, 2]}, "blocks_per_stage only applies"),
        ({"norm": "layer"}, "norm must be one of"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments(kw, match):
    args = {"spatial_dims": 2, "in_channels": 1, "num_classes": 2, "features": FEATURES, **kw}
    with pytest.raises(ValueError, match=match):
        create_model("unet", **args)


def test_bad_residual_arguments():
    with pytest.raises(ValueError, match="blocks_per_stage has 2 entries but features has 3"):
        create_model("resunet", features=FEATURES, blocks_per_stage=[1, 2])
    with pytest.raises(ValueError, match="blocks_per_stage must be positive"):
        create_model("resunet", features=FEATURES, blocks_per_stage=0)
    with pytest.raises(ValueError, match="encoder must be"):
        UNet(2, 1, 2, features=FEATURES, encoder="dense")  # type: ignore[arg-type]


def test_indivisible_input_names_the_axis_and_the_multiple():
    model = build(3, **ANISO_3D)
    with pytest.raises(ValueError, match=r"spatial axis 1 \(H\) has 62, .* multiple of 4"):
        model(rand(1, 1, 16, 62, 64))
    with pytest.raises(ValueError, match=r"spatial axis 0 \(D\) has 15, .* multiple of 2"):
        model.forward_features(rand(1, 1, 15, 64, 64))
    with pytest.raises(ValueError, match=r"spatial axis 1 \(W\) has 30"):
        build(2)(rand(1, 1, 32, 30))


def test_wrong_input_shape_is_named():
    model = build(3)
    with pytest.raises(ValueError, match=r"expects input \(B, 1, D, H, W\), got \(1, 8, 8, 8\)"):
        model(rand(1, 8, 8, 8))  # unbatched
    with pytest.raises(ValueError, match=r"got \(1, 2, 8, 8, 8\)"):
        model(rand(1, 2, 8, 8, 8))


# -- registry -------------------------------------------------------------------------------------


def test_registered_as_segmentation_models():
    assert list_models(task="segmentation") == ["resunet", "unet"]
    classifiers = list_models(task="classification")
    assert "unet" not in classifiers and "resnet18" in classifiers
    others = ["cnn-gru", "cnn-lstm", "ddpm-unet", "edsr", "fcos", "next-frame", "resunet",
              "temporal-unet", "unet"]  # fmt: skip
    assert sorted([*classifiers, *others]) == list_models()
    assert list_models("*unet", task="segmentation") == ["resunet", "unet"]
    assert model_task("unet") == model_task("resunet") == "segmentation"
    assert model_task("resnet18") == "classification"
    with pytest.raises(ValueError, match=r"unknown model 'unte'.*did you mean 'unet'"):
        model_task("unte")
    assert list_models(task="detection") == ["fcos"]
    with pytest.raises(ValueError, match="no models of task 'registration'"):
        list_models(task="registration")
    with pytest.raises(ValueError, match=r"did you mean 'segmentation'"):
        list_models(task="segmenation")


@pytest.mark.parametrize(("name", "block"), [("unet", ConvNormAct), ("resunet", ResidualBlock)])
def test_create_model_builds_the_unets(name, block):
    model = create_model(
        name,
        spatial_dims=3,
        in_channels=2,
        num_classes=4,
        features=FEATURES,
        deep_supervision=True,
        **ANISO_3D,
    )
    assert isinstance(model, UNet)
    assert isinstance(model.encoder[1][0], block)
    assert (model.spatial_dims, model.in_channels, model.num_classes) == (3, 2, 4)
    assert model.strides == ((1, 1, 1), (1, 2, 2), (2, 2, 2))
    assert model.kernel_sizes == ((1, 3, 3), (3, 3, 3), (3, 3, 3))
    with torch.no_grad():
        assert model.eval()(rand(1, 2, 4, 8, 8)).shape == (1, 4, 4, 8, 8)
    with pytest.raises(TypeError):
        create_model(name, features=FEATURES, encoder="plain")  # the name picks the encoder


def test_register_model_with_a_task(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    @register_model("tinyunet", task="segmentation")
    def tinyunet(**kw: Any) -> UNet:
        return UNet(features=(2, 4), **kw)

    assert "tinyunet" in list_models(task="segmentation")
    assert "tinyunet" not in list_models(task="classification")
    assert create_model("tinyunet", num_classes=3)(rand(1, 1, 4, 4)).shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="lower-case name"):
        register_model("tinyseg", task="Segmentation")
    # kinds are open: a new task brings models of a new kind, found by that kind only
    register_model("tinydet", task="detection")(tinyunet)
    assert list_models(task="detection") == ["fcos", "tinydet"]
    assert "detection" in registry_module.kinds()
