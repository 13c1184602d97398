"""Batch: kinds, validation, spacing, copies and devices; boxes_from_mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medlens.image import Image, Role
from medlens.transforms import Batch, boxes_from_mask


def _image(*shape):
    return torch.rand(2, 1, *shape)


def _label(*shape):
    return torch.randint(0, 3, (2, 1, *shape))


# ----------------------------------------------------------------------------- kinds
@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("image", "image"),
        ("images", "image"),
        ("label", "label"),
        ("labels", "label"),
        ("mask", "label"),
        ("masks", "label"),
        ("seg", "label"),
        ("segmentation", "label"),
    ],
)
def test_dense_kinds_from_names(name, kind):
    value = _image(8, 8) if kind == "image" else _label(8, 8)
    batch = Batch({name: value})
    assert batch.kinds[name] == kind
    assert batch.names(kind) == [name]


def test_kinds_from_names_for_boxes_and_points():
    batch = Batch(
        image=_image(8, 8),
        boxes=[torch.tensor([[0.0, 1.0, 4.0, 5.0]]), torch.zeros(0, 4)],
        points=[torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0], [5.0, 6.0]])],
        landmarks=[torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])],
    )
    assert batch.kinds == {
        "image": "image",
        "boxes": "boxes",
        "points": "points",
        "landmarks": "points",
    }
    # stored per sample as float32 (N, 2n) / (N, n)
    assert [tuple(b.shape) for b in batch["boxes"]] == [(1, 4), (0, 4)]
    assert [tuple(p.shape) for p in batch["points"]] == [(1, 2), (2, 2)]
    assert [tuple(p.shape) for p in batch["landmarks"]] == [(1, 2), (1, 2)]
    assert all(p.dtype == torch.float32 for p in batch["points"])


def test_kinds_from_dtypes_and_explicit_kinds():
    batch = Batch(
        {"ct": _image(4, 8, 8), "organs": _label(4, 8, 8), "prob": _image(4, 8, 8)},
        kinds={"prob": "label"},
    )
    assert batch.kinds == {"ct": "image", "organs": "label", "prob": "label"}
    assert batch.reference is batch["ct"]
    assert batch.batch_size == 2
    assert batch.spatial_shape == (4, 8, 8)
    assert batch.spatial_dims == 3
    # a box tensor (B, N, 4) is split into per-sample entries
    boxes = torch.arange(16, dtype=torch.float32).reshape(2, 2, 4)
    batch2 = Batch(image=_image(8, 8), kinds={"found": "boxes"}, found=boxes)
    assert batch2.kinds["found"] == "boxes"
    assert [tuple(b.shape) for b in batch2["found"]] == [(2, 4), (2, 4)]


def test_setitem_keeps_the_kind_and_delete_forgets_it():
    batch = Batch(image=_image(8, 8), label=_label(8, 8))
    batch["label"] = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    assert batch.kinds["label"] == "label"
    del batch["label"]
    assert "label" not in batch and "label" not in batch.kinds
    assert list(batch) == ["image"] and len(batch) == 1
    assert "image: image (2, 1, 8, 8)" in repr(batch)


# ----------------------------------------------------------------------------- errors
def test_wrong_shapes_and_kinds_are_refused():
    with pytest.raises(ValueError, match="must be a"):
        Batch(image=torch.rand(8, 8))  # no batch/channel axes
    with pytest.raises(ValueError, match="must be a"):
        Batch(image=torch.rand(1, 1, 2, 2, 2, 2))  # 4 spatial axes
    with pytest.raises(ValueError, match="must be a"):
        Batch(label=np.zeros((1, 1, 4, 4), dtype=np.int64))  # not a tensor
    with pytest.raises(ValueError, match="floating point"):
        Batch(image=torch.zeros(1, 1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown kind"):
        Batch({"x": _image(4, 4)}, kinds={"x": "heatmap"})
    with pytest.raises(ValueError, match="say the kind"):
        Batch(image=_image(4, 4), extra=[torch.zeros(2)])
    batch = Batch(image=_image(4, 4))
    with pytest.raises(ValueError, match="floating point"):
        batch["image"] = torch.zeros(2, 1, 4, 4, dtype=torch.int32)
    with pytest.raises(ValueError, match="at least one image or label"):
        Batch(boxes=[torch.zeros(0, 4)]).reference  # noqa: B018


def test_inconsistent_fields_are_refused():
    with pytest.raises(ValueError, match="batch size"):
        Batch(image=torch.rand(2, 1, 8, 8), label=torch.zeros(3, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="spatial"):
        Batch(image=torch.rand(2, 1, 8, 8), label=torch.zeros(2, 1, 8, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="spatial"):
        Batch(image=torch.rand(2, 1, 8, 8), label=torch.zeros(2, 1, 4, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="per sample"):  # one (N, n) tensor for a batch of 1
        Batch(image=torch.rand(1, 1, 8, 8), points=torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    with pytest.raises(ValueError, match="4 values"):
        Batch(image=torch.rand(1, 1, 8, 8), boxes=[torch.zeros(1, 6)])
    with pytest.raises(ValueError, match="2 values"):
        Batch(image=torch.rand(1, 1, 8, 8), points=[torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="spacing"):
        Batch(image=torch.rand(1, 1, 8, 8), spacing=(1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------- spacing
def test_spacing_tensor():
    batch = Batch(image=_image(4, 6, 8))
    assert torch.equal(batch.spacing_tensor(), torch.ones(2, 3, dtype=torch.float64))
    batch = Batch(image=_image(4, 6, 8), spacing=(0.5, 0.7, 2.0))
    expected = torch.tensor([[0.5, 0.7, 2.0]] * 2, dtype=torch.float64)
    assert torch.equal(batch.spacing_tensor(), expected)
    per_sample = torch.tensor([[0.5, 0.7, 2.0], [1.0, 1.0, 3.0]])
    batch = Batch(image=_image(4, 6, 8), spacing=per_sample)
    assert torch.equal(batch.spacing_tensor(), per_sample.double())
    batch.spacing_tensor()[0, 0] = 99.0  # a copy: the batch's spacing is unchanged
    assert float(batch.spacing[0, 0]) == 0.5


def test_from_images_keeps_spacing_and_layout():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(5, 6, 7)).astype(np.float32) for _ in range(2)]
    spacings = [(0.8, 0.9, 2.5), (0.7, 0.7, 3.0)]  # index order (x, y, z)
    images = [Image(a, spacing=s) for a, s in zip(arrays, spacings, strict=True)]
    labels = [
        Image((a > 0).astype(np.uint8), spacing=s, role=Role.LABEL)
        for a, s in zip(arrays, spacings, strict=True)
    ]
    batch = Batch.from_images(images, labels)
    assert batch.kinds == {"image": "image", "label": "label"}
    assert batch["image"].shape == (2, 1, 5, 6, 7) and batch["image"].dtype == torch.float32
    assert batch["label"].dtype == torch.int64
    np.testing.assert_array_equal(batch["image"][1, 0].numpy(), arrays[1])
    np.testing.assert_array_equal(batch["label"][0, 0].numpy(), arrays[0] > 0)
    assert torch.equal(batch.spacing_tensor(), torch.tensor(spacings, dtype=torch.float64))
    only = Batch.from_images(images[:1], dtype=torch.float64)
    assert list(only) == ["image"] and only["image"].dtype == torch.float64
    assert only.spacing_tensor().tolist() == [list(spacings[0])]


# ----------------------------------------------------------------------------- copy and to
def _full_batch():
    batch = Batch(
        image=_image(8, 8),
        label=_label(8, 8),
        boxes=[torch.tensor([[0.0, 1.0, 4.0, 5.0]]), torch.zeros(0, 4)],
        points=[torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])],
        spacing=(0.5, 2.0),
    )
    batch.meta["note"] = 1
    batch.trace.append("step")
    return batch


def test_copy_is_shallow_and_independent():
    batch = _full_batch()
    copy = batch.copy()
    assert copy is not batch
    assert copy["image"] is batch["image"]  # same tensors
    assert copy.kinds == batch.kinds and copy.trace == batch.trace and copy.meta == batch.meta
    assert torch.equal(copy.spacing_tensor(), batch.spacing_tensor())
    copy["extra"] = torch.zeros(2, 1, 8, 8)
    del copy["label"]
    copy.trace.append("more")
    copy.meta["other"] = 2
    assert "extra" not in batch and "label" in batch
    assert batch.trace == ["step"] and "other" not in batch.meta


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_to_moves_every_tensor(device):
    batch = _full_batch()
    moved = batch.to(device)
    assert moved.kinds == batch.kinds and moved.trace == batch.trace
    assert moved.device.type == device
    assert moved["image"].device.type == device and moved["label"].device.type == device
    assert all(b.device.type == device for b in moved["boxes"])
    assert all(p.device.type == device for p in moved["points"])
    assert moved["label"].dtype == batch["label"].dtype
    assert batch["image"].device.type == "cpu"  # the original stays
    assert torch.equal(moved.spacing_tensor(), batch.spacing_tensor())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_to_cuda_and_back():
    batch = _full_batch()
    back = batch.to("cuda").to("cpu")
    assert torch.equal(back["image"], batch["image"])
    assert torch.equal(back["label"], batch["label"])
    assert all(torch.equal(a, b) for a, b in zip(back["boxes"], batch["boxes"], strict=True))


# ----------------------------------------------------------------------------- boxes_from_mask
def test_boxes_from_mask_2d_and_3d():
    mask = torch.zeros(10, 12, dtype=torch.uint8)
    mask[2:5, 3:9] = 1  # rows (y) 2..4, columns (x) 3..8
    assert boxes_from_mask(mask).tolist() == [[2.5, 1.5, 8.5, 4.5]]
    volume = torch.zeros(6, 10, 12, dtype=torch.bool)
    volume[1:3, 2:5, 3:9] = True
    assert boxes_from_mask(volume).tolist() == [[2.5, 1.5, 0.5, 8.5, 4.5, 2.5]]
    single = torch.zeros(6, 10, 12)
    single[4, 7, 0] = 3.0
    assert boxes_from_mask(single).tolist() == [[-0.5, 6.5, 3.5, 0.5, 7.5, 4.5]]
    assert boxes_from_mask(torch.zeros(6, 10, 12)).shape == (0, 6)
    assert boxes_from_mask(torch.zeros(10, 12)).shape == (0, 4)
