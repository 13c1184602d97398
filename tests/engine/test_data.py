from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from medlens.data import Sample
from medlens.engine import LoaderBatches, TensorBatches, as_batches, collate_samples
from medlens.image import Image


def ids(batches) -> list[int]:
    """Sample ids delivered, in order (the inputs hold their own index)."""
    return [int(v) for x, _ in batches for v in x[:, 0].tolist()]


def make(n: int = 10, **options) -> TensorBatches:
    x = torch.arange(n, dtype=torch.float32)[:, None].repeat(1, 3)
    return TensorBatches(x, torch.arange(n), **{"batch_size": 4, **options})


def test_every_sample_once_per_epoch_in_a_seeded_order():
    batches = make(shuffle=True, seed=3)
    assert len(batches) == 3
    batches.set_epoch(1)
    first = ids(batches)
    assert sorted(first) == list(range(10)) and first != list(range(10))
    assert ids(batches) == first  # same (seed, epoch): same order
    batches.set_epoch(2)
    assert ids(batches) != first
    assert ids(make(shuffle=True, seed=3).shard(0, 1)) == ids(make(shuffle=True, seed=3))
    assert ids(make()) == list(range(10))
    x, y = next(iter(make()))
    assert torch.equal(x[:, 0].long(), y)  # targets follow inputs


def test_drop_last_and_batch_sizes():
    assert [len(x) for x, _ in make()] == [4, 4, 2]
    dropped = make(drop_last=True)
    assert len(dropped) == 2 and [len(x) for x, _ in dropped] == [4, 4]


def test_uint8_becomes_float_per_batch():
    images = torch.tensor([[0, 255], [51, 102]], dtype=torch.uint8)
    x, y = next(iter(TensorBatches(images, batch_size=2)))
    assert x.dtype == torch.float32 and y is None
    torch.testing.assert_close(x, torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    raw, _ = next(iter(TensorBatches(images, batch_size=2, scale_uint8=False)))
    assert raw.max().item() == 255.0


def test_augment_gets_a_generator_seeded_by_seed_epoch_and_rank():
    calls = []

    def augment(x, generator):
        calls.append(generator)
        return x + torch.rand(x.shape, generator=generator)

    batches = make(shuffle=True, augment=augment)
    batches.set_epoch(1)
    a = torch.cat([x for x, _ in batches])
    b = torch.cat([x for x, _ in batches])
    assert torch.equal(a, b) and len(calls) == 6 and calls[0] is calls[1]
    batches.set_epoch(2)
    assert not torch.equal(torch.cat([x for x, _ in batches]), a)
    r0 = torch.cat([x - x.floor() for x, _ in batches.shard(0, 2)])
    r1 = torch.cat([x - x.floor() for x, _ in batches.shard(1, 2)])
    assert not torch.equal(r0, r1)  # ranks draw different augmentations


def test_shards_partition_the_epoch():
    batches = make(n=11, shuffle=True)
    batches.set_epoch(4)
    shards = [batches.shard(r, 3) for r in range(3)]
    for shard in shards:
        shard.set_epoch(4)
    got = [ids(s) for s in shards]
    assert [len(g) for g in got] == [4, 4, 4]  # padded to equal length for DDP
    flat = [i for g in got for i in g]
    assert sorted(set(flat)) == list(range(11))
    assert len(flat) == 12  # one repeated sample
    assert all(len(s) == 1 for s in shards)
    uneven = [ids(batches.shard(r, 3, even=False)) for r in range(3)]
    assert sorted(i for u in uneven for i in u) == list(range(11))
    assert batches.shard(2, 3, even=False).num_samples == 3
    # The ranks interleave the single-process order (so b per rank matches 2b on one).
    whole = make(n=12, shuffle=True)
    two = [ids(whole.shard(r, 2)) for r in range(2)]
    assert sorted(two[0][:2] + two[1][:2]) == sorted(ids(whole)[:4])


def test_read_only_numpy_is_served_without_warning_or_copying_the_split():
    images = np.arange(24, dtype=np.uint8).reshape(6, 2, 2)
    images.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = TensorBatches(images, np.arange(6), batch_size=4)
        x, y = next(iter(batches))
    assert x.shape == (4, 2, 2) and y.dtype == torch.int64
    x += 1  # a batch is a copy: the split stays untouched
    assert images[0, 0, 1] == 1


class FakeMedMNIST:
    """What TensorBatches.from_dataset uses of a MedMNIST split."""

    task = "classification"
    channels = 1
    spatial_dims = 2

    def __init__(self, n: int = 8) -> None:
        self.images = np.arange(n * 9, dtype=np.uint8).reshape(n, 3, 3)
        self.labels = np.arange(n) % 2

    def arrays(self):
        return self.images, self.labels

    def __len__(self):
        return len(self.images)


class FakeSubset:
    def __init__(self, parent, indices):
        self.parent, self.indices = parent, indices

    def __len__(self):
        return len(self.indices)


def test_from_dataset_adds_a_channel_and_follows_subsets():
    data = FakeMedMNIST()
    x, y = next(iter(TensorBatches.from_dataset(data, batch_size=8)))
    assert x.shape == (8, 1, 3, 3)
    torch.testing.assert_close(x[2, 0], torch.from_numpy(data.images[2]).float() / 255)
    sub = as_batches(FakeSubset(data, [5, 1]), batch_size=4, shuffle=False)
    assert isinstance(sub, TensorBatches)
    x, y = next(iter(sub))
    assert x.shape == (2, 1, 3, 3) and y.tolist() == [1, 1]
    torch.testing.assert_close(x[0, 0], torch.from_numpy(data.images[5]).float() / 255)


class MapDataset(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((3,), float(i)), i


def test_loader_fallback_matches_tensor_batches():
    loader = as_batches(MapDataset(10), batch_size=4, shuffle=True, seed=3)
    assert isinstance(loader, LoaderBatches) and len(loader) == 3
    tensors = make(shuffle=True, seed=3)
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        tensors.set_epoch(epoch)
        assert ids(loader) == ids(tensors)
    shard = loader.shard(1, 3)
    tensors_shard = tensors.shard(1, 3)
    assert ids(shard) == ids(tensors_shard) and len(shard) == len(tensors_shard)


def test_collate_samples_for_medlens_samples():
    def sample(i: int, label):
        image = Image(np.full((2, 2), i, dtype=np.uint8))
        return Sample(image=image, label=label, id=str(i))

    x, y = collate_samples([sample(1, 0), sample(2, 1)])
    assert x.shape == (2, 1, 2, 2) and y.tolist() == [0, 1] and y.dtype == torch.int64
    _, y = collate_samples([sample(1, np.array([1.0, np.nan])), sample(2, np.array([0.0, 1.0]))])
    assert y.dtype == torch.float32 and y.shape == (2, 2)

    class Samples(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return sample(i, i % 2)

    x, y = next(iter(as_batches(Samples(), batch_size=3, shuffle=False)))
    assert x.shape == (3, 1, 2, 2) and x.dtype == torch.float32 and y.tolist() == [0, 1, 0]


def test_as_batches_rejects_unknown_data():
    with pytest.raises(TypeError, match="cannot make batches"):
        as_batches(42, batch_size=2, shuffle=False)
    batches = make()
    assert as_batches(batches, batch_size=99, shuffle=False) is batches  # keeps its own options
    with pytest.raises(ValueError, match="inputs but"):
        TensorBatches(torch.zeros(3), torch.zeros(2), batch_size=1)
