"""The ``norm`` option of every registered model: batch, instance or group norm.

Defaults must not move (checkpoints keep loading); group norm must leave no batch norm, which
is what Opacus (differential privacy) requires. Models are built narrow (``conftest.py``).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn

from medlens.models import create_model, list_models
from medlens.models._layers import NORMS, group_count

MODELS = list_models(task="classification")
SEGMENTATION = list_models(task="segmentation")


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# Default builds (2D, 1 channel, 2 classes): state_dict entries and a hash of their names and
# shapes, taken before the norm option existed. A change here breaks existing checkpoints.
DEFAULT_STATE_DICTS = {
    "densenet121": (727, "6d0ce8c2103f98e9"),
    "resnet10": (74, "29ecef93b7299ee9"),
    "resnet18": (122, "169026e60df8521e"),
    "resnet34": (218, "34f56b84670a5508"),
    "resnet50": (320, "7dbcde196b9adf3a"),
    "resunet": (165, "47bf86cf08463270"),
    "smallcnn": (26, "c0ccd2a53bcbb361"),
    "unet": (60, "7d954c00079ca1dd"),
}
DEFAULT_NORMS = {"unet": "instance", "resunet": "instance"}  # the others: "batch"
NORM_TYPES = {
    "batch": nn.modules.batchnorm._BatchNorm,
    "instance": nn.modules.instancenorm._InstanceNorm,
    "group": nn.GroupNorm,
}


def norms_of(model: nn.Module) -> set[str]:
    return {k for m in model.modules() for k, t in NORM_TYPES.items() if isinstance(m, t)}


@pytest.mark.parametrize("name", sorted(DEFAULT_STATE_DICTS))
def test_default_builds_keep_their_checkpoint_keys(name):
    """Built on the meta device: no memory, no weights drawn, only names and shapes."""
    with torch.device("meta"):
        model = create_model(name, spatial_dims=2, in_channels=1, num_classes=2)
    state = model.state_dict()
    text = "\n".join(f"{k} {tuple(v.shape)}" for k, v in state.items())
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    assert (len(state), digest) == DEFAULT_STATE_DICTS[name]
    assert norms_of(model) == {DEFAULT_NORMS.get(name, "batch")}
    assert model.norm_kind == DEFAULT_NORMS.get(name, "batch")


@pytest.mark.parametrize("name", MODELS + SEGMENTATION)
def test_default_norm_is_the_explicit_one(narrow, name):
    """Same seed, default against ``norm=<default>``: same weights and outputs."""
    default = narrow(name, 2)
    assert default.norm_kind in NORMS
    explicit = narrow(name, 2, norm=default.norm_kind)
    sa, sb = default.state_dict(), explicit.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(default(x), explicit(x))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", MODELS + SEGMENTATION)
def test_norm_option(narrow, name, norm):
    """Every norm trains; the parameters keep the default's names (only buffers differ)."""
    model = narrow(name, 2, norm=norm).train()
    assert model.norm_kind == norm
    assert norms_of(model) == {norm}
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0 and m.num_groups <= 32
            assert m.num_groups == 32 or m.num_channels < 32 or m.num_channels % 32
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            assert m.affine and not m.track_running_stats
    out = model(rand(2, 1, 64, 64))
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    default = narrow(name, 2)
    assert [k for k, _ in model.named_parameters()] == [k for k, _ in default.named_parameters()]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", MODELS + SEGMENTATION)
def test_group_norm_leaves_no_batch_norm(narrow, name, spatial_dims):
    """What Opacus (differential privacy) needs: no batch norm, samples never mixed.

    In training mode each sample's output must not depend on the rest of the batch.
    """
    side = 32 if spatial_dims == 2 else 16
    # The small stem: narrow layers on 1-voxel maps would give 1-value groups (an error).
    kw = {"input_size": side} if name in MODELS else {}
    model = narrow(name, spatial_dims, norm="group", **kw).train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not any(k.endswith(("running_mean", "num_batches_tracked")) for k in model.state_dict())
    x = rand(3, 1, *(side,) * spatial_dims)
    with torch.no_grad():
        # Only convolution algorithms differ between a batch of 3 and of 1: float noise.
        torch.testing.assert_close(model(x)[:1], model(x[:1]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS + SEGMENTATION)
def test_unknown_norm_names_the_choices(name):
    with pytest.raises(ValueError, match="norm must be one of 'batch', 'instance', 'group'"):
        create_model(name, norm="layer")


def test_group_count():
    assert [group_count(c) for c in (1, 3, 20, 32, 48, 64, 640)] == [1, 3, 20, 32, 24, 32, 32]
