"""Architecture-specific checks: parameter counts against the standard networks, stems,
downsampling, residual init, DenseNet checkpointing, and the full-size 3D runs (slow).
"""

from __future__ import annotations

import pytest
import torch

from medlens.models import (
    BasicBlock,
    Bottleneck,
    ResNet,
    SmallCNN,
    count_parameters,
    create_model,
    list_models,
)
from medlens.models._layers import resolve_stem


def _features_side(model, side: int, spatial_dims: int = 2) -> tuple[int, ...]:
    x = torch.zeros(1, model.in_channels, *(side,) * spatial_dims)
    with torch.no_grad():
        return tuple(model.eval().forward_features(x).shape[2:])


# The well-known counts of the ImageNet models (3 channels, 1000 classes, 7x7/2 stem): they
# cross-check every layer of our definitions against the reference architectures.
@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("densenet121", 7_978_856),
    ],
)
def test_parameter_counts_match_the_standard_networks(name, count):
    model = create_model(name, in_channels=3, num_classes=1000, stem="large")
    assert count_parameters(model) == count
    assert count_parameters(model, trainable_only=True) == count


@pytest.mark.parametrize(("name", "spatial_dims"), [("resnet18", 2), ("densenet121", 2)])
def test_small_stem_differs_only_by_the_first_kernel(name, spatial_dims):
    large = create_model(name, spatial_dims, 3, 10, stem="large")
    small = create_model(name, spatial_dims, 3, 10, stem="small")
    kernel_diff = 7**spatial_dims - 3**spatial_dims
    assert count_parameters(large) - count_parameters(small) == kernel_diff * 3 * 64


def test_resnet10_3d_small_stem_count():
    large = create_model("resnet10", 3, 1, 2, stem="large")
    small = create_model("resnet10", 3, 1, 2, stem="small")
    assert count_parameters(large) - count_parameters(small) == (7**3 - 3**3) * 64


def test_model_sizes_and_widths():
    sizes = {
        n: count_parameters(create_model(n, in_channels=3, num_classes=1000))
        for n in list_models(task="classification")
    }
    assert sizes["smallcnn"] < 1_000_000 < sizes["resnet10"] < sizes["resnet18"] < sizes["resnet34"]
    widths = {n: create_model(n).num_features for n in list_models(task="classification")}
    assert widths == {
        "densenet121": 1024,
        "resnet10": 512,
        "resnet18": 512,
        "resnet34": 512,
        "resnet50": 2048,
        "smallcnn": 256,
    }


@pytest.mark.parametrize(
    ("stem", "input_size", "expected"),
    [
        ("auto", None, "large"),
        ("auto", 28, "small"),
        ("auto", 64, "small"),
        ("auto", 65, "large"),
        ("auto", (28, 512), "small"),  # the smallest side decides
        ("auto", [128, 224], "large"),
        ("small", 512, "small"),
        ("large", 28, "large"),
    ],
)
def test_stem_resolution(stem, input_size, expected):
    assert resolve_stem(stem, input_size, 2) == expected
    assert create_model("resnet10", stem=stem, input_size=input_size).stem_kind == expected


@pytest.mark.parametrize(
    ("stem", "input_size", "match"),
    [
        ("tiny", None, "stem must be"),
        ("auto", (28, 28, 28), "input_size"),
        ("auto", 0, "input_size"),
        ("auto", (28.0, 28), "input_size"),
    ],
)
def test_bad_stem_arguments(stem, input_size, match):
    with pytest.raises(ValueError, match=match):
        create_model("densenet121", stem=stem, input_size=input_size)


@pytest.mark.parametrize(
    ("name", "kw", "side", "expected"),
    [
        ("resnet18", {"stem": "small"}, 28, (4, 4)),  # 28 -> 14 -> 7 -> 4
        ("resnet18", {"stem": "large"}, 64, (2, 2)),
        ("resnet50", {"stem": "large"}, 224, (7, 7)),  # the ImageNet map
        ("densenet121", {"stem": "small"}, 28, (4, 4)),
        ("densenet121", {"stem": "large"}, 224, (7, 7)),
        # Transitions round up, so 28x28 survives the large stem (7 -> 4 -> 2 -> 1).
        ("densenet121", {"stem": "large"}, 28, (1, 1)),
        ("smallcnn", {}, 28, (4, 4)),
        ("smallcnn", {}, 5, (1, 1)),
    ],
)
def test_feature_map_sizes(name, kw, side, expected):
    assert _features_side(create_model(name, **kw), side) == expected


def test_smallcnn_3d_feature_map():
    assert _features_side(create_model("smallcnn", spatial_dims=3), 28, 3) == (4, 4, 4)


@pytest.mark.parametrize("zero_init", [True, False])
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_zero_init_residual(name, zero_init):
    model = create_model(name, zero_init_residual=zero_init)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert len(blocks) == (8 if name == "resnet18" else 16)
    for block in blocks:
        assert torch.all(block.last_bn.weight == (0.0 if zero_init else 1.0))


def test_resnet_options():
    model = ResNet(BasicBlock, (1, 2, 1, 1), spatial_dims=3, in_channels=2, width=8)
    assert model.num_features == 64
    assert len(model.layer2) == 2
    with pytest.raises(ValueError, match="layers"):
        ResNet(BasicBlock, (2, 2, 2))
    with pytest.raises(ValueError, match="width"):
        ResNet(BasicBlock, (2, 2, 2, 2), width=0)


def test_smallcnn_options():
    model = SmallCNN(width=8, num_blocks=3, num_classes=5)
    assert model.num_features == 32
    assert len(model.blocks) == 3
    assert create_model("smallcnn", width=8, num_blocks=3, num_classes=5).num_features == 32
    with pytest.raises(ValueError, match="width"):
        SmallCNN(width=0)


def test_densenet_memory_efficient_is_the_same_computation():
    """Checkpointing changes memory only: same logits, gradients and running statistics."""
    models = []
    for memory_efficient in (False, True):
        torch.manual_seed(0)
        models.append(
            create_model(
                "densenet121",
                in_channels=2,
                num_classes=3,
                input_size=16,
                memory_efficient=memory_efficient,
            )
        )
    plain, lean = models
    x = torch.randn(2, 2, 16, 16)
    outputs = []
    for model in (plain, lean):
        model.train()
        logits = model(x)
        logits.square().sum().backward()
        outputs.append(logits.detach())
    torch.testing.assert_close(outputs[0], outputs[1])
    for (name, a), b in zip(plain.named_parameters(), lean.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for (name, a), b in zip(plain.named_buffers(), lean.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # each batch counted once
    assert plain.blocks[0].layers[0].norm1.num_batches_tracked.item() == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models(task="classification"))
def test_3d_small_stem_on_28_cubed(name):
    """The MedMNIST 3D setting at full size: 28^3, batch 2, small stem, train step."""
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=3, in_channels=1, num_classes=3, input_size=28)
    x = torch.randn(2, 1, 28, 28, 28)
    logits = model.train()(x)
    assert logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_builds_on_the_default_device():
    """Layers follow ``torch.device(...)`` contexts (here meta: sizes without memory)."""
    with torch.device("meta"):
        model = create_model("resnet50", spatial_dims=3, in_channels=3, num_classes=1000)
        model.reset_classifier(10)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert count_parameters(model) > 40_000_000
