"""Batches for training: whole batches cut from in-memory tensors, or a DataLoader fallback.

A dataset that fits in memory (MedMNIST does) is served by :class:`TensorBatches`: one
``index_select`` per batch instead of a Python call, a collate and a copy per sample. The order
of an epoch depends only on ``(seed, epoch)``, so a resumed run sees exactly the batches the
uninterrupted run would have, and every rank of a distributed run agrees on the permutation
before taking its shard (as ``DistributedSampler`` does).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "EpochBatches",
    "LoaderBatches",
    "TensorBatches",
    "as_batches",
    "collate_samples",
    "epoch_indices",
    "mix_seed",
]

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_MASK = (1 << 63) - 1


def mix_seed(*values: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, rank), well spread."""
    state = 0x243F6A8885A308D3
    for value in values:
        state = (state ^ (int(value) & _MASK)) * 0x9E3779B97F4A7C15 & _MASK
        state ^= state >> 29
    return state


def epoch_indices(
    n: int,
    *,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    even: bool = True,
) -> torch.Tensor:
    """This rank's sample indices for one epoch.

    All ranks draw the same permutation from ``(seed, epoch)``; with ``even`` it is padded by
    repeating its start to a multiple of ``world_size`` (every rank then runs the same number of
    steps, which DDP needs), and rank ``r`` takes every ``world_size``-th index from ``r``.
    """
    if shuffle:
        generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    if world_size > 1:
        pad = (-n) % world_size if even else 0
        if pad and n:
            order = torch.cat([order, order.repeat(pad // n + 1)[:pad]])
        order = order[rank::world_size]
    return order


class EpochBatches:
    """Base of batches drawn at random rather than passed over: ``batches_per_epoch`` make an
    epoch, and :meth:`set_epoch` (which the trainer calls) gives the epoch a subclass seeds its
    draws with, ``(seed, epoch)``, so a resumed run draws the same batches. Subclasses set
    ``task`` and yield ``(inputs, targets)`` from ``__iter__``."""

    task = "drawn"
    batches_per_epoch = 40
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch


class TensorBatches:
    """Batches ``(inputs, targets)`` cut from tensors (or NumPy arrays) held in memory.

    uint8 inputs are converted to float in ``[0, 1]`` per batch (on ``device`` when one is set,
    so only bytes cross the bus). ``augment(inputs, generator)`` may transform each float batch;
    its generator is seeded from ``(seed, epoch, rank)``.

    Args:
        inputs: ``(N, ...)`` images.
        targets: ``(N, ...)`` labels, or ``None`` (then ``targets`` in each batch is ``None``).
        batch_size: samples per batch on this rank.
        shuffle: new order each epoch (set with :meth:`set_epoch`).
        drop_last: skip the last incomplete batch.
        seed: seed of the order and of the augmentation generator.
        augment: batch-level augmentation, training only.
        scale_uint8: divide uint8 inputs by 255 (else just convert to float).
        rank, world_size: this process's shard; ``even`` pads shards to equal length.
        device: where batches are delivered (``None``: where the tensors are).
    """

    def __init__(
        self,
        inputs: torch.Tensor | np.ndarray,
        targets: torch.Tensor | np.ndarray | None = None,
        *,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        augment: Augment | None = None,
        scale_uint8: bool = True,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        self.inputs = _as_tensor(inputs)
        self.targets = None if targets is None else _as_tensor(targets)
        if self.targets is not None and len(self.targets) != len(self.inputs):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.targets)} targets")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.augment = augment
        self.scale_uint8 = scale_uint8
        self.rank, self.world_size, self.even = int(rank), int(world_size), even
        self.device = None if device is None else torch.device(device)
        self.epoch = 0

    @classmethod
    def from_dataset(cls, dataset: Any, **options: Any) -> TensorBatches:
        """From a dataset offering ``arrays()`` (MedMNIST) or a subset of one; images get a
        channel axis ``(N, 1, ...)`` when they have a single channel."""
        images, labels = _dataset_arrays(dataset)
        channels = getattr(_root(dataset), "channels", 1)
        spatial = getattr(_root(dataset), "spatial_dims", images.ndim - 1)
        if channels == 1 and images.ndim == spatial + 1:
            images = images[:, None]
        return cls(images, labels, **options)

    # ------------------------------------------------------------------ protocol
    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (with padding)."""
        n = len(self.inputs)
        if self.world_size == 1:
            return n
        return -(-n // self.world_size) if self.even else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order (and augmentation draws) the next iteration uses."""
        self.epoch = int(epoch)

    def shard(self, rank: int, world_size: int, *, even: bool = True) -> TensorBatches:
        """The same batches for one rank of ``world_size`` (tensors shared, not copied)."""
        other = copy.copy(self)
        other.rank, other.world_size, other.even = int(rank), int(world_size), even
        return other

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        order = epoch_indices(
            len(self.inputs),
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            even=self.even,
        )
        generator = None
        if self.augment is not None:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, 1))
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            x = self._deliver(self.inputs.index_select(0, index.to(self.inputs.device)))
            if x.dtype == torch.uint8:
                x = x.float().div_(255) if self.scale_uint8 else x.float()
            if generator is not None:
                x = self.augment(x, generator)
            y = None
            if self.targets is not None:
                y = self._deliver(self.targets.index_select(0, index.to(self.targets.device)))
            yield x, y

    def _deliver(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device is None or tensor.device == self.device:
            return tensor
        return tensor.to(self.device, non_blocking=tensor.device.type == "cpu")


class LoaderBatches:
    """A map-style dataset served through a :class:`~torch.utils.data.DataLoader`.

    Uses the same per-epoch order and sharding as :class:`TensorBatches`. Samples may be
    tuples, tensors or medlens :class:`~medlens.data.Sample` objects (see
    :func:`collate_samples`); each batch is delivered as ``(inputs, targets)``.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        augment: Augment | None = None,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
        device: torch.device | str | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size, self.shuffle, self.drop_last = int(batch_size), shuffle, drop_last
        self.seed, self.num_workers, self.augment = int(seed), num_workers, augment
        self.collate_fn = collate_fn
        self.rank, self.world_size, self.even = int(rank), int(world_size), even
        self.device = None if device is None else torch.device(device)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def shard(self, rank: int, world_size: int, *, even: bool = True) -> LoaderBatches:
        other = copy.copy(self)
        other.rank, other.world_size, other.even = int(rank), int(world_size), even
        return other

    def _indices(self) -> list[int]:
        return epoch_indices(
            len(self.dataset),
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            world_size=self.world_size,
            even=self.even,
        ).tolist()

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._indices(),
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn or _default_collate,
            pin_memory=self.device is not None and self.device.type == "cuda",
        )
        generator = None
        if self.augment is not None:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, 1))
        for batch in loader:
            x, y = _split(batch)
            x = x.to(self.device) if self.device is not None else x
            if x.dtype == torch.uint8:
                x = x.float().div_(255)
            if y is not None and self.device is not None and isinstance(y, torch.Tensor):
                y = y.to(self.device)
            if generator is not None:
                x = self.augment(x, generator)
            yield x, y


def collate_samples(samples: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack medlens ``Sample`` objects: images ``(B, C, ...)``, labels or masks as targets."""
    images = torch.stack([s.image.to_tensor(add_channel=True) for s in samples])
    first = samples[0]
    if first.mask is not None:
        return images, torch.stack([s.mask.to_tensor().long() for s in samples])
    if first.label is None:
        return images, None
    labels = np.stack([np.asarray(s.label) for s in samples])
    if labels.dtype.kind in "iub":
        return images, torch.from_numpy(labels.astype(np.int64))
    return images, torch.from_numpy(labels.astype(np.float32))


def as_batches(
    data: Any,
    *,
    batch_size: int,
    shuffle: bool,
    drop_last: bool = False,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    even: bool = True,
    num_workers: int = 0,
) -> Any:
    """Turn what a user passes as data into an iterable of ``(inputs, targets)`` batches.

    ``TensorBatches``/``LoaderBatches`` keep their own options and are only sharded; a tuple
    ``(inputs, targets)`` of tensors/arrays and datasets with ``arrays()`` become
    ``TensorBatches``; other map-style datasets go through ``LoaderBatches``. Any other
    iterable with ``len`` is used as is (not sharded).
    """
    options = {"batch_size": batch_size, "shuffle": shuffle, "drop_last": drop_last, "seed": seed}
    if isinstance(data, (TensorBatches, LoaderBatches)):
        return data.shard(rank, world_size, even=even) if world_size > 1 else data
    arrays = isinstance(data, (tuple, list)) and 1 <= len(data) <= 2
    if arrays and all(isinstance(d, (torch.Tensor, np.ndarray)) for d in data):
        return TensorBatches(*data, **options).shard(rank, world_size, even=even)
    if _has_arrays(data):
        return TensorBatches.from_dataset(data, **options).shard(rank, world_size, even=even)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        loader = LoaderBatches(data, num_workers=num_workers, **options)
        return loader.shard(rank, world_size, even=even)
    if hasattr(data, "__iter__") and hasattr(data, "__len__"):
        return data
    raise TypeError(f"cannot make batches from {type(data).__name__}")


# ---------------------------------------------------------------------- helpers
def _as_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    if array.dtype == np.uint16:
        array = array.astype(np.int32)
    if not array.flags.writeable:
        # Batches are always index_select copies: the read-only memory is never written.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.ascontiguousarray(array))
    return torch.from_numpy(np.ascontiguousarray(array))


def _root(dataset: Any) -> Any:
    while not hasattr(dataset, "arrays") and hasattr(dataset, "parent"):
        dataset = dataset.parent
    return dataset


def _has_arrays(dataset: Any) -> bool:
    return callable(getattr(_root(dataset), "arrays", None))


def _dataset_arrays(dataset: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if hasattr(dataset, "arrays"):
        return dataset.arrays()
    images, labels = _dataset_arrays(dataset.parent)
    index = np.asarray(dataset.indices, dtype=np.int64)
    return images[index], None if labels is None else labels[index]


def _default_collate(samples: list[Any]) -> Any:
    if samples and hasattr(samples[0], "image") and hasattr(samples[0], "label"):
        return collate_samples(samples)
    return torch.utils.data.default_collate(samples)


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise TypeError(f"a batch must be inputs or (inputs, targets), got {type(batch).__name__}")
