"""Augmentation speed: the same random chain in medlens, MONAI and TorchIO, in one process.

Run from the repository root in the benchmark environment (see benchmarks/README.md)::

    .venv-bench/bin/python benchmarks/augment.py            # full run, about 10 minutes on 2 cores
    .venv-bench/bin/python benchmarks/augment.py --quick    # smoke run, 1-2 minutes

The chain: a random affine (rotation up to 15 degrees about each axis, scaling +-10 %, linear
interpolation, always applied, zero padding), a flip of the first spatial axis with p = 0.5,
Gaussian noise with std 0.1 and a per-volume z-score. It is timed on three workloads:

* ``3d``: ``--volumes`` (200) float32 volumes of 96^3, image only;
* ``3d_label``: the same volumes with their uint8 label maps carried along (nearest neighbour in
  the affine, flipped with the image);
* ``2d``: as many float32 images of 256x256 (rotation about the one in-plane axis).

The volumes come from the real CT of the shared data folder (``totalsegmentator/ct_small``) and
its label map, resized to 120^3 and cropped to 96^3 at random offsets with random gain, offset and
a little noise, so that every volume differs; without the data folder, from medlens's synthetic CT
phantom the same way. They are generated in memory, deterministically (seed 0).

Each peer is run the way its users run it: a Dataset iterated in-process (one sample at a time,
the main process using every core), and a DataLoader with one worker process per core and batches
of 8. Their faster way is the peer's figure. Settings that only make a peer faster (MONAI's
``set_track_meta(False)`` and ``cache_grid``, TorchIO's ``copy=False``, one thread instead of all
cores) are tried on the loop on a subset first and the fastest is used there (the loaders always
get the settings that only remove work), as stated in the output. medlens transforms whole
batches (of 8 and 16; the faster counts) in the main process. Before timing, every library's
output is checked once (shape, dtype, z-score, label values, label carried with the image).
Figures are volumes per second from the median epoch time of interleaved rounds;
ratios are medlens over a peer (above 1: medlens is faster). The last line of stdout is one JSON
object with all figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from _common import (
    Timing,
    configure_threads,
    emit_json,
    environment,
    fmt_rate,
    fmt_ratio,
    limit_threads,
    log,
    print_table,
    round_robin,
    timed_call,
)

BENCHMARK = "augment"
PACKAGES = ("medlens", "numpy", "torch", "monai", "torchio", "SimpleITK")
CT = "totalsegmentator/ct_small/example_ct_sm.nii.gz"
CT_SEG = "totalsegmentator/ct_small/example_seg.nii.gz"
SIZE_3D, SIZE_2D, MARGIN = 96, 256, 24
ROTATE_DEG, SCALE, NOISE_STD = 15.0, 0.1, 0.1
LOADER_BATCH = 8
MEDLENS_BATCHES = (8, 16)
SEED = 0
CHAINS = {
    "3d": "3D 96^3 image",
    "3d_label": "3D 96^3 image + uint8 label",
    "2d": "2D 256x256 image",
}


@dataclass
class Data:
    """One workload: images ``(N, 1, *spatial)`` float32, labels uint8 (or None).

    medlens takes batches as views of these stacked tensors. The peers take one sample at a time,
    each in its own tensor (:meth:`samples`), as a dataset holds them after loading: a view into
    the stack would drag the whole stack into every deep copy (TorchIO copies subjects).
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None
    _samples: list[tuple[torch.Tensor, torch.Tensor | None]] | None = field(
        default=None, repr=False
    )

    def samples(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per-sample ``(image, label)`` tensors of their own (made once, shared by the peers)."""
        if self._samples is None:
            self._samples = [
                (self.images[i].clone(), None if self.labels is None else self.labels[i].clone())
                for i in range(self.count)
            ]
        return self._samples

    @property
    def ndim(self) -> int:
        return self.images.ndim - 2

    @property
    def count(self) -> int:
        return self.images.shape[0]


@dataclass
class Chain:
    """The cases timed on one workload, and what was learnt about them."""

    name: str
    data: Data
    cases: dict[str, Callable[[], Any]] = field(default_factory=dict)
    library: dict[str, str] = field(default_factory=dict)  # case -> monai / torchio / medlens
    batch: dict[str, int] = field(default_factory=dict)  # case -> batch size
    notes: dict[str, str] = field(default_factory=dict)  # library -> setting chosen
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    sanity: dict[str, list[str]] = field(default_factory=dict)  # library -> problems
    warmup_s: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    timings: dict[str, Timing] = field(default_factory=dict)
    repeats: int = 0
    closers: list[Callable[[], None]] = field(default_factory=list)


def describe_error(exc: BaseException) -> str:
    message = " ".join(str(exc).split())[:300] or type(exc).__name__
    return f"{type(exc).__name__}: {message}"


# ----------------------------------------------------------------------------------------- data
def source_ct() -> tuple[np.ndarray, np.ndarray, str]:
    """A CT volume scaled to about [0, 3] (HU + 1000) / 1000, its label map, and where from."""
    from medlens._data_path import data_root

    root = data_root()
    if (root / CT).is_file() and (root / CT_SEG).is_file():
        from medlens.io import load_image

        hu = load_image(root / CT).array
        seg = load_image(root / CT_SEG).array
        source = f"real CT {CT} {'x'.join(map(str, hu.shape[::-1]))} and its label map"
    else:
        from medlens.synthetic import ct_phantom

        image, label = ct_phantom(shape=(48, 96, 96), seed=SEED)
        hu, seg = image.array, label.array
        source = f"synthetic CT phantom (no real data under {root})"
    scaled = (np.clip(hu.astype(np.float32), -1000, 2000) + 1000) / 1000
    return scaled, np.asarray(seg, dtype=np.uint8), source


def resize(array: np.ndarray, shape: tuple[int, ...], *, label: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if label:
        out = torch.nn.functional.interpolate(tensor, size=shape, mode="nearest")
        return out[0, 0].round().to(torch.uint8)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return torch.nn.functional.interpolate(tensor, size=shape, mode=mode, align_corners=False)[0, 0]


def make_data(count: int) -> tuple[dict[str, Data], str]:
    """``count`` distinct 96^3 volumes (with labels) and 256x256 images, deterministically."""
    scaled, seg, source = source_ct()
    rng = np.random.default_rng(SEED)
    generator = torch.Generator().manual_seed(SEED)
    big = SIZE_3D + MARGIN
    volume = resize(scaled, (big,) * 3, label=False)
    volume_seg = resize(seg, (big,) * 3, label=True)
    images = torch.empty((count, 1, *(SIZE_3D,) * 3), dtype=torch.float32)
    labels = torch.empty((count, 1, *(SIZE_3D,) * 3), dtype=torch.uint8)
    for i in range(count):
        z, y, x = (int(v) for v in rng.integers(0, MARGIN + 1, 3))
        crop = (slice(z, z + SIZE_3D), slice(y, y + SIZE_3D), slice(x, x + SIZE_3D))
        gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1)
        noise = torch.randn((SIZE_3D,) * 3, generator=generator) * 0.02
        images[i, 0] = volume[crop] * gain + offset + noise
        labels[i, 0] = volume_seg[crop]
    big2 = SIZE_2D + 2 * MARGIN
    slices = resize(scaled, (scaled.shape[0], big2, big2), label=False)
    images_2d = torch.empty((count, 1, SIZE_2D, SIZE_2D), dtype=torch.float32)
    for i in range(count):
        k = int(rng.integers(0, slices.shape[0]))
        y, x = (int(v) for v in rng.integers(0, 2 * MARGIN + 1, 2))
        gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1)
        noise = torch.randn((SIZE_2D, SIZE_2D), generator=generator) * 0.02
        images_2d[i, 0] = slices[k, y : y + SIZE_2D, x : x + SIZE_2D] * gain + offset + noise
    data = {
        "3d": Data("3d", images, None),
        "3d_label": Data("3d_label", images, labels),
        "2d": Data("2d", images_2d, None),
    }
    return data, source


def blob_check_data(ndim: int, count: int = 8) -> Data:
    """Images equal to their (binary, off-centre) label: the label must follow the image."""
    size = SIZE_3D if ndim == 3 else SIZE_2D
    grid = torch.meshgrid(*(torch.linspace(-1, 1, size) for _ in range(ndim)), indexing="ij")
    centre = (-0.45, 0.2, 0.1)[:ndim]  # off-centre along the flipped axis
    inside = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= 0.5**2
    labels = inside.to(torch.uint8)[None, None].repeat(count, 1, *(1,) * ndim).contiguous()
    return Data("blob", labels.float(), labels)


# --------------------------------------------------------------------------------------- MONAI
def monai_transform(ndim: int, with_label: bool, cache_grid: bool):
    from monai.transforms import (
        Compose,
        NormalizeIntensityd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
    )

    keys = ["image", "label"] if with_label else ["image"]
    mode = ("bilinear", "nearest") if with_label else "bilinear"
    size = SIZE_3D if ndim == 3 else SIZE_2D
    extra: dict[str, Any] = {}
    if cache_grid:
        extra = {"spatial_size": (size,) * ndim, "cache_grid": True}
    transform = Compose(
        [
            RandAffined(
                keys,
                prob=1.0,
                rotate_range=(np.deg2rad(ROTATE_DEG),) * (3 if ndim == 3 else 1),
                scale_range=(SCALE,) * ndim,
                mode=mode,
                padding_mode="zeros",
                **extra,
            ),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            # sample_std=False: std exactly 0.1 (MONAI's default draws it from U(0, 0.1))
            RandGaussianNoised("image", prob=1.0, mean=0.0, std=NOISE_STD, sample_std=False),
            NormalizeIntensityd("image"),
        ]
    )
    transform.set_random_state(seed=SEED)
    return transform


def monai_dataset(data: Data, cache_grid: bool):
    from monai.data import Dataset

    items = []
    for image, label in data.samples():
        item = {"image": image}
        if label is not None:
            item["label"] = label
        items.append(item)
    return Dataset(items, transform=monai_transform(data.ndim, data.labels is not None, cache_grid))


class MonaiMeta:
    """Run MONAI with ``set_track_meta(track)``, restoring MONAI's default afterwards."""

    def __init__(self, track: bool) -> None:
        self.track = track

    def __enter__(self) -> None:
        from monai.data import set_track_meta

        set_track_meta(self.track)

    def __exit__(self, *exc: object) -> None:
        from monai.data import set_track_meta

        set_track_meta(True)


def _monai_worker_init(track_meta: bool) -> Callable[[int], None]:
    def init(worker_id: int) -> None:
        from monai.data import set_track_meta
        from monai.data.utils import worker_init_fn

        worker_init_fn(worker_id)  # what monai.data.DataLoader does by default: per-worker seeds
        set_track_meta(track_meta)

    return init


def monai_loop(dataset, track_meta: bool, threads: int | None = None) -> Callable[[], None]:
    def run() -> None:
        with MonaiMeta(track_meta), limit_threads(threads):
            for i in range(len(dataset)):
                dataset[i]

    return run


def monai_loader(dataset, track_meta: bool, workers: int):
    from monai.data import DataLoader

    with MonaiMeta(track_meta):
        loader = DataLoader(
            dataset,
            batch_size=LOADER_BATCH,
            num_workers=workers,
            persistent_workers=True,
            worker_init_fn=_monai_worker_init(track_meta),
        )

    def run() -> None:
        for _ in loader:
            pass

    return loader, run


def monai_outputs(dataset, track_meta: bool, count: int) -> list[tuple[Any, Any]]:
    out = []
    with MonaiMeta(track_meta):
        for i in range(count):
            item = dataset[i]
            out.append((item["image"], item.get("label")))
    return out


# ------------------------------------------------------------------------------------- TorchIO
def torchio_transform(copy: bool):
    import torchio as tio

    affine = tio.RandomAffine(
        scales=SCALE,
        degrees=ROTATE_DEG,
        image_interpolation="linear",
        label_interpolation="nearest",
        default_pad_value=0,  # zero padding as in MONAI (TorchIO's default pads with the minimum)
        p=1.0,
        copy=copy,
    )
    return tio.Compose(
        [
            affine,
            tio.RandomFlip(axes=(0,), flip_probability=0.5, copy=copy),
            tio.RandomNoise(std=(NOISE_STD, NOISE_STD), copy=copy),  # std=0.1 would draw U(0, 0.1)
            tio.ZNormalization(copy=copy),
        ],
        copy=copy,
    )


def torchio_dataset(data: Data, copy: bool):
    import torchio as tio

    subjects = []
    for image, label in data.samples():
        if data.ndim == 2:
            image = image[..., None]  # TorchIO images are 4D (C, W, H, D); D = 1 for 2D
        fields = {"image": tio.ScalarImage(tensor=image)}
        if label is not None:
            fields["label"] = tio.LabelMap(tensor=label)
        subjects.append(tio.Subject(**fields))
    # SubjectsDataset deep-copies each subject in __getitem__, so copy=False is safe.
    return tio.SubjectsDataset(subjects, transform=torchio_transform(copy))


def _torchio_worker_init(sitk_threads: int | None) -> Callable[[int], None]:
    def init(worker_id: int) -> None:
        if sitk_threads is not None:
            import SimpleITK as sitk

            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(sitk_threads)

    return init


def torchio_loop(dataset, threads: int | None = None) -> Callable[[], None]:
    def run() -> None:
        with limit_threads(threads):
            for i in range(len(dataset)):
                dataset[i]

    return run


def torchio_loader(dataset, workers: int, sitk_threads: int | None):
    import torchio as tio

    loader = tio.SubjectsLoader(
        dataset,
        batch_size=LOADER_BATCH,
        num_workers=workers,
        persistent_workers=True,
        worker_init_fn=_torchio_worker_init(sitk_threads),
    )

    def run() -> None:
        for _ in loader:
            pass

    return loader, run


def torchio_outputs(dataset, count: int, ndim: int) -> list[tuple[Any, Any]]:
    out = []
    for i in range(count):
        subject = dataset[i]
        image = subject["image"].data
        label = subject["label"].data if "label" in subject else None
        if ndim == 2:  # (C, W, H, 1) -> (C, W, H)
            image = image[..., 0]
            label = None if label is None else label[..., 0]
        out.append((image, label))
    return out


# ------------------------------------------------------------------------------------- medlens
def medlens_transform():
    """medlens's chain, or an exception saying why it is not available."""
    from medlens.transforms import Batch, Compose, GaussianNoise, RandomAffine, RandomFlip, ZScore

    aug = Compose(
        [
            RandomAffine(rotate=ROTATE_DEG, scale=SCALE, p=1.0),
            RandomFlip(axes=0, p=0.5),
            GaussianNoise(std=NOISE_STD),
            ZScore(),
        ],
        seed=SEED,
    )

    def apply(images: torch.Tensor, labels: torch.Tensor | None):
        batch = Batch(image=images) if labels is None else Batch(image=images, label=labels)
        out = aug(batch)
        return out["image"], (out["label"] if labels is not None else None)

    return apply


def medlens_epoch(apply, data: Data, batch: int) -> Callable[[], None]:
    images, labels = data.images, data.labels

    def run() -> None:
        for start in range(0, data.count, batch):
            stop = start + batch
            apply(images[start:stop], None if labels is None else labels[start:stop])

    return run


def medlens_outputs(apply, data: Data, count: int) -> list[tuple[Any, Any]]:
    image, label = apply(data.images[:count], None if data.labels is None else data.labels[:count])
    return [(image[i], None if label is None else label[i]) for i in range(image.shape[0])]


# -------------------------------------------------------------------------------------- checks
def as_plain(tensor: Any) -> torch.Tensor:
    if hasattr(tensor, "as_tensor"):  # MONAI MetaTensor
        tensor = tensor.as_tensor()
    return torch.as_tensor(tensor)


def check_outputs(
    outputs: list[tuple[Any, Any]], data: Data, *, blob: list[tuple[Any, Any]] | None
) -> list[str]:
    """Problems with one library's outputs on the first samples of ``data`` (empty: sane)."""
    problems: list[str] = []
    expected = tuple(data.images.shape[1:])
    for i, (image, label) in enumerate(outputs):
        image = as_plain(image)
        if tuple(image.shape) != expected:
            problems.append(f"image {i}: shape {tuple(image.shape)}, expected {expected}")
            continue
        if image.dtype != torch.float32:
            problems.append(f"image {i}: dtype {image.dtype}, expected torch.float32")
        values = image.double()
        mean, std = values.mean().item(), values.std().item()
        if not (abs(mean) < 1e-3 and abs(std - 1) < 1e-2):
            problems.append(f"image {i}: mean {mean:.4g}, std {std:.4g} after z-score")
        if data.labels is None:
            continue
        if label is None:
            problems.append(f"label {i}: missing from the output")
            continue
        label = as_plain(label)
        if tuple(label.shape) != tuple(data.labels.shape[1:]):
            problems.append(f"label {i}: shape {tuple(label.shape)}")
            continue
        if label.is_floating_point() and not torch.equal(label, label.round()):
            problems.append(f"label {i}: non-integer values (interpolated, not nearest)")
        extra = set(label.unique().tolist()) - set(data.labels[i].unique().tolist())
        if extra:
            problems.append(f"label {i}: values {sorted(extra)[:5]} not in the input label map")
    if blob is not None:
        # The image was its own binary label: after the same affine and flip, the image
        # thresholded at its midpoint must match the label almost everywhere.
        for image, label in blob:
            image, label = as_plain(image).double(), as_plain(label).double()
            lo, hi = image.min().item(), image.max().item()
            agree = ((image > (lo + hi) / 2) == (label > 0.5)).double().mean().item()
            if agree < 0.98:  # a label flipped apart from its image: about 0.88
                problems.append(f"label not carried with the image: {agree:.3f} voxels agree")
                break
    return problems


def checksum(data: Data) -> float:
    total = data.images.double().sum().item()
    return total + (0.0 if data.labels is None else data.labels.double().sum().item())


def inputs_changed(data: Data, before: float) -> str | None:
    """Whether a library wrote into its input tensors (the stack, or the peers' own copies)."""
    if checksum(data) != before:
        return "the stacked input tensors changed while the libraries ran"
    for i, (image, label) in enumerate(data.samples()):
        if not torch.equal(image, data.images[i]) or (
            label is not None and not torch.equal(label, data.labels[i])
        ):
            return f"the peers' input sample {i} changed while they ran"
    return None


def label_dtype(outputs: list[tuple[Any, Any]]) -> str | None:
    label = outputs[0][1]
    return None if label is None else str(as_plain(label).dtype).replace("torch.", "")


# ------------------------------------------------------------------------------------ building
def calibrate(
    variants: dict[str, Callable[[], Any]], repeats: int, tolerance: float = 0.05
) -> tuple[str, dict[str, float]]:
    """The variant to use and every variant's shortest seconds on a subset.

    ``variants`` come in order of preference (least work per sample first). The first one within
    ``tolerance`` of the fastest wins: a setting that only removes work is not dropped because
    of timing noise. Shortest times are used: they are the least disturbed by other load.
    """
    timings, _ = round_robin(variants, repeats=repeats)
    seconds = {name: t.min for name, t in timings.items()}
    fastest = min(seconds.values())
    chosen = next(name for name, t in seconds.items() if t <= fastest * (1 + tolerance))
    return chosen, seconds


def build_chain(name: str, data: Data, args: argparse.Namespace, medlens_apply, peers) -> Chain:
    chain = Chain(name, data)
    with_label = data.labels is not None
    subset = Data(data.name, data.images[: args.calibrate], None)
    if with_label:
        subset.labels = data.labels[: args.calibrate]
    blob = blob_check_data(data.ndim) if with_label else None
    check_count = min(4, data.count)

    cores = os.cpu_count() or 1
    if "monai" in peers:
        try:
            # In order of preference: the first within 5 % of the fastest is used for the loop.
            variants = {
                "track_meta=False, cache_grid": (False, True, None),
                "track_meta=False, cache_grid, 1 thread": (False, True, 1),
                "track_meta=False": (False, False, None),
                "default (track_meta=True)": (True, False, None),
            }
            best = "track_meta=False, cache_grid"  # without calibration
            if args.calibrate:
                loops = {
                    name: monai_loop(monai_dataset(subset, cache), meta, threads)
                    for name, (meta, cache, threads) in variants.items()
                    if threads is None or threads < cores
                }
                best, seconds = calibrate(loops, args.calibrate_repeats)
                chain.calibration["MONAI"] = {k: args.calibrate / s for k, s in seconds.items()}
            meta, cache, threads = variants[best]
            # The loader always gets the settings that only remove work (set in its workers too).
            lean = monai_dataset(data, cache_grid=True)
            dataset = lean if (meta, cache) == (False, True) else monai_dataset(data, cache)
            chain.notes["MONAI"] = f"loop {best}; loader track_meta=False, cache_grid"
            problems = []
            for ds, track in dict.fromkeys([(dataset, meta), (lean, False)]):
                outputs = monai_outputs(ds, track, check_count)
                blob_out = None
                if blob is not None:
                    cached = ds is lean or cache
                    blob_out = monai_outputs(monai_dataset(blob, cached), track, blob.count)
                problems += check_outputs(outputs, data, blob=blob_out)
            chain.sanity["MONAI"] = list(dict.fromkeys(problems))
            chain.notes["MONAI label dtype"] = label_dtype(outputs) or "-"
            chain.cases["MONAI loop"] = monai_loop(dataset, meta, threads)
            chain.library["MONAI loop"], chain.batch["MONAI loop"] = "monai", 1
            loader, run = monai_loader(lean, False, args.workers)
            _warm_loader(loader)
            chain.cases["MONAI loader"] = run
            chain.library["MONAI loader"], chain.batch["MONAI loader"] = "monai", LOADER_BATCH
            chain.closers.append(lambda loader=loader: _close_loader(loader))
        except Exception as exc:
            chain.errors["MONAI"] = describe_error(exc)
            log(traceback.format_exc())

    if "torchio" in peers:
        try:
            variants = {
                "copy=False": (False, None),
                "copy=False, 1 thread": (False, 1),
                "default (copy=True)": (True, None),
            }
            best = "copy=False"  # without calibration
            if args.calibrate:
                loops = {
                    name: torchio_loop(torchio_dataset(subset, copy), threads)
                    for name, (copy, threads) in variants.items()
                    if threads is None or threads < cores
                }
                best, seconds = calibrate(loops, args.calibrate_repeats)
                chain.calibration["TorchIO"] = {k: args.calibrate / s for k, s in seconds.items()}
            copy, threads = variants[best]
            lean = torchio_dataset(data, copy=False)
            dataset = lean if not copy else torchio_dataset(data, copy)
            chain.notes["TorchIO"] = f"loop {best}; loader copy=False"
            problems = []
            for ds in dict.fromkeys([dataset, lean]):
                outputs = torchio_outputs(ds, check_count, data.ndim)
                blob_out = None
                if blob is not None:
                    blob_copy = copy and ds is not lean
                    blob_out = torchio_outputs(torchio_dataset(blob, blob_copy), blob.count, 3)
                problems += check_outputs(outputs, data, blob=blob_out)
            chain.sanity["TorchIO"] = list(dict.fromkeys(problems))
            chain.notes["TorchIO label dtype"] = label_dtype(outputs) or "-"
            chain.cases["TorchIO loop"] = torchio_loop(dataset, threads)
            chain.library["TorchIO loop"], chain.batch["TorchIO loop"] = "torchio", 1
            loader, run = torchio_loader(lean, args.workers, args.worker_sitk_threads)
            _warm_loader(loader)
            chain.cases["TorchIO loader"] = run
            chain.library["TorchIO loader"] = "torchio"
            chain.batch["TorchIO loader"] = LOADER_BATCH
            chain.closers.append(lambda loader=loader: _close_loader(loader))
        except Exception as exc:
            chain.errors["TorchIO"] = describe_error(exc)
            log(traceback.format_exc())

    if medlens_apply is not None:
        try:
            # Warm-up: every batch size an epoch will see (a compiled kernel may specialise on it).
            sizes = sorted(
                {min(b, data.count - s) for b in MEDLENS_BATCHES for s in range(0, data.count, b)}
            )
            started = time.perf_counter()
            for size in sizes:
                labels = None if data.labels is None else data.labels[:size]
                _, seconds = timed_call(lambda s=size, y=labels: medlens_apply(data.images[:s], y))
                chain.warmup_s[f"first call, batch {size}"] = seconds
            chain.warmup_s["total"] = time.perf_counter() - started
            outputs = medlens_outputs(medlens_apply, data, check_count)
            blob_out = medlens_outputs(medlens_apply, blob, blob.count) if blob else None
            chain.sanity["medlens"] = check_outputs(outputs, data, blob=blob_out)
            chain.notes["medlens label dtype"] = label_dtype(outputs) or "-"
            for batch in MEDLENS_BATCHES:
                if batch > data.count and batch != MEDLENS_BATCHES[0]:
                    continue  # one batch of every volume: the same as a smaller batch size
                case = f"medlens batch {batch}"
                chain.cases[case] = medlens_epoch(medlens_apply, data, batch)
                chain.library[case], chain.batch[case] = "medlens", batch
        except Exception as exc:
            chain.errors["medlens"] = describe_error(exc)
            log(traceback.format_exc())
    return chain


def _warm_loader(loader) -> None:
    """Start the persistent workers and run a batch through each (imports, seeds)."""
    for k, _ in enumerate(loader):
        if k + 1 >= loader.num_workers:
            break


def _close_loader(loader) -> None:
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


# ------------------------------------------------------------------------------------- results
def best_case(chain: Chain, library: str) -> str | None:
    names = [n for n in chain.timings if chain.library[n] == library]
    return min(names, key=lambda n: chain.timings[n].median) if names else None


def rate(chain: Chain, case: str | None) -> float | None:
    if case is None:
        return None
    return chain.data.count / chain.timings[case].median


def summarise(chain: Chain) -> dict[str, Any]:
    best = {lib: best_case(chain, lib) for lib in ("medlens", "monai", "torchio")}
    rates = {lib: rate(chain, case) for lib, case in best.items()}
    ratio = {}
    for peer in ("monai", "torchio"):
        ours, theirs = rates["medlens"], rates[peer]
        ratio[peer] = ours / theirs if ours is not None and theirs is not None else None
    # The same from each case's shortest epoch (the least disturbed by other processes).
    fastest = {
        lib: min(
            (chain.timings[n].min for n in chain.timings if chain.library[n] == lib), default=None
        )
        for lib in ("medlens", "monai", "torchio")
    }
    ratio_min = {
        peer: fastest[peer] / fastest["medlens"] if fastest[peer] and fastest["medlens"] else None
        for peer in ("monai", "torchio")
    }
    medlens_case = best["medlens"]
    return {
        "description": CHAINS[chain.name],
        "count": chain.data.count,
        "shape": list(chain.data.images.shape[1:]),
        "repeats": chain.repeats,
        "volumes_per_s": {name: rate(chain, name) for name in chain.timings},
        "timings": {name: t.as_dict() for name, t in chain.timings.items()},
        "best": best,
        "best_volumes_per_s": rates,
        "ratio_vs_monai": ratio["monai"],
        "ratio_vs_torchio": ratio["torchio"],
        "ratio_vs_monai_min_time": ratio_min["monai"],
        "ratio_vs_torchio_min_time": ratio_min["torchio"],
        "medlens_batch": chain.batch[medlens_case] if medlens_case else None,
        "medlens_warmup_s": chain.warmup_s,
        "settings": chain.notes,
        "calibration_volumes_per_s": chain.calibration,
        "sanity": chain.sanity,
        "errors": chain.errors,
    }


def print_chain(chain: Chain, summary: dict[str, Any]) -> None:
    rows = []
    medlens_rate = summary["best_volumes_per_s"]["medlens"]
    for name, timing in chain.timings.items():
        vps = chain.data.count / timing.median
        ratio = medlens_rate / vps if medlens_rate and chain.library[name] != "medlens" else None
        best = " *" if name in summary["best"].values() else ""
        rows.append(
            [
                name + best,
                chain.batch[name],
                len(timing.times),
                f"{timing.median:.2f}",
                fmt_rate(vps),
                fmt_ratio(ratio),
            ]
        )
    print_table(
        f"{CHAINS[chain.name]} x {chain.data.count}: volumes per second (median epoch of "
        "interleaved rounds); * = library's best; medlens/ = medlens's best over this row",
        ["library / way", "batch", "runs", "s/epoch", "vol/s", "medlens/"],
        rows,
    )
    for library in ("MONAI", "TorchIO"):
        if library in chain.notes:
            calib = ", ".join(
                f"{k}: {fmt_rate(v)}" for k, v in chain.calibration.get(library, {}).items()
            )
            how = f"loop chosen on a subset, vol/s: {calib}" if calib else "not calibrated"
            print(f"  {library} settings used: {chain.notes[library]} ({how})")
    labels = {k: v for k, v in chain.notes.items() if k.endswith("label dtype")}
    if labels:
        dtypes = ", ".join(f"{k.split()[0]} {v}" for k, v in labels.items())
        print(f"  output label dtype: {dtypes}")
    if chain.warmup_s:
        first = ", ".join(f"{k} {v:.2f} s" for k, v in chain.warmup_s.items() if k != "total")
        print(f"  medlens warm-up (untimed): {first}")


def print_summary(summaries: dict[str, dict[str, Any]]) -> None:
    rows = []
    for name, s in summaries.items():
        best, rates = s["best"], s["best_volumes_per_s"]
        rows.append(
            [
                CHAINS[name],
                f"{fmt_rate(rates['medlens'])} (b{s['medlens_batch']})" if best["medlens"] else "-",
                f"{fmt_rate(rates['monai'])} ({best['monai']})" if best["monai"] else "-",
                f"{fmt_rate(rates['torchio'])} ({best['torchio']})" if best["torchio"] else "-",
                fmt_ratio(s["ratio_vs_monai"]),
                fmt_ratio(s["ratio_vs_torchio"]),
            ]
        )
    print_table(
        "Summary: best volumes per second of each library; ratio = medlens over the peer's best "
        "(>1: medlens faster)",
        ["workload", "medlens", "MONAI", "TorchIO", "/MONAI", "/TorchIO"],
        rows,
    )


# ---------------------------------------------------------------------------------------- main
def import_peers() -> dict[str, Any]:
    peers: dict[str, Any] = {}
    for name, module in (("monai", "monai.transforms"), ("torchio", "torchio")):
        try:
            peers[name] = __import__(module, fromlist=["_"])
        except ImportError:
            print(f"note: {name} is not installed; it is left out (see benchmarks/README.md)")
    return peers


def load_medlens() -> tuple[Any, str | None]:
    try:
        return medlens_transform(), None
    except Exception as exc:  # the transforms API may not exist yet, or differ from expected
        return None, describe_error(exc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 volumes, 1 round")
    parser.add_argument(
        "--volumes", type=int, default=None, help="volumes (and 2D images) per epoch (default 200)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds per workload (default: 3 for 3D, up to 15 for 2D within --budget)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds of timed rounds per workload (default 60)",
    )
    parser.add_argument(
        "--only", choices=list(CHAINS), action="append", help="run only these workloads"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes of the peers (default: os.cpu_count())",
    )
    parser.add_argument(
        "--calibrate",
        type=int,
        default=None,
        help="volumes on which to pick each peer's fastest settings (default 16; 0 with --quick: "
        "use the settings that won before, MONAI track_meta=False + cache_grid, TorchIO "
        "copy=False)",
    )
    parser.add_argument(
        "--worker-sitk-threads",
        type=int,
        default=1,
        help="SimpleITK threads in each TorchIO DataLoader worker (default 1, as torch uses one "
        "thread per worker; 0 keeps SimpleITK's default of all cores in every worker)",
    )
    args = parser.parse_args(argv)
    if args.volumes is None:
        args.volumes = 16 if args.quick else 200
    if args.quick and args.repeats is None:
        args.repeats = 1
    if args.volumes < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--volumes and --repeats must be at least 1")
    if args.workers is None:
        args.workers = os.cpu_count() or 1
    if args.calibrate is None:
        args.calibrate = 0 if args.quick else 16
    args.calibrate = min(args.calibrate, args.volumes)
    args.calibrate_repeats = 3
    if args.worker_sitk_threads == 0:
        args.worker_sitk_threads = None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    threads = configure_threads()
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    torch.manual_seed(SEED)  # TorchIO draws its parameters from torch's global generator
    peers = import_peers()
    medlens_apply, medlens_missing = load_medlens()
    log(f"generating {args.volumes} volumes of {SIZE_3D}^3 and images of {SIZE_2D}^2 ...")
    data, source = make_data(args.volumes)
    print(
        f"medlens augmentation benchmark: {threads['cpu_count']} cores, torch threads "
        f"{threads['torch_threads']}, SimpleITK threads {threads['sitk_threads']}; "
        f"{args.volumes} volumes from {source}; load average {load_start:.2f} at the start"
    )
    print(
        f"chain: RandomAffine(rotate {ROTATE_DEG:g} deg per axis, scale +-{SCALE:g}, linear / "
        f"nearest for labels, p=1, zero padding), flip axis 0 p=0.5, noise std {NOISE_STD:g}, "
        "z-score"
    )
    print(
        f"peers: in-process Dataset loop (batch 1) and DataLoader ({args.workers} persistent "
        f"workers, batch {LOADER_BATCH}); medlens: batches of "
        f"{' and '.join(map(str, MEDLENS_BATCHES))} in-process"
    )
    if medlens_missing:
        print(f"note: medlens transforms unavailable, left out: {medlens_missing}")
    if load_start > 0.5 * threads["cpu_count"]:
        print(
            f"warning: load average {load_start:.2f} on {threads['cpu_count']} cores: other "
            "processes compete for the cores; multi-threaded in-process runs suffer most, so the "
            "figures are rough (see benchmarks/README.md)"
        )

    summaries: dict[str, dict[str, Any]] = {}
    sanity_failures = []
    for name in args.only or list(CHAINS):
        chain_start = time.perf_counter()
        load_before = os.getloadavg()[0]
        log(f"{name}: calibrating, checking and warming up ...")
        before = checksum(data[name])
        chain = build_chain(name, data[name], args, medlens_apply, peers)
        try:
            for library, problems in chain.sanity.items():
                for problem in problems:
                    sanity_failures.append(f"{name}: {library}: {problem}")
                    print(f"  SANITY {name}: {library}: {problem}")
            if chain.cases:
                is_3d = data[name].ndim == 3
                log(f"{name}: timing {', '.join(chain.cases)} ...")
                chain.timings, chain.repeats = round_robin(
                    chain.cases,
                    repeats=args.repeats,
                    budget_s=args.budget,
                    min_repeats=3,
                    max_repeats=3 if is_3d else 15,
                    warmed_up=True,
                )
        finally:
            for close in chain.closers:
                close()
        changed = inputs_changed(data[name], before)
        if changed:
            chain.sanity.setdefault("inputs", []).append(changed)
            sanity_failures.append(f"{name}: inputs: {changed}")
            print(f"  SANITY {name}: {changed}")
        summaries[name] = summarise(chain)
        summaries[name]["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
        print_chain(chain, summaries[name])
        for library, error in chain.errors.items():
            print(f"  error: {library} left out of {name}: {error}")
        log(f"{name}: {chain.repeats} rounds, {time.perf_counter() - chain_start:.0f} s")

    print_summary(summaries)
    print()
    if sanity_failures:
        print(f"sanity: {len(sanity_failures)} problem(s), listed above as SANITY lines")
    else:
        print(
            "sanity: every library gave the input's shape, float32 z-scored images (mean 0, std 1)"
            " and labels within the input's values, carried with the image; no input changed"
        )

    payload: dict[str, Any] = {"benchmark": BENCHMARK}
    for name, s in summaries.items():
        suffix = {"3d": "3d", "3d_label": "3d_label", "2d": "2d"}[name]
        payload[f"ratio_vs_monai_{suffix}"] = s["ratio_vs_monai"]
        payload[f"ratio_vs_torchio_{suffix}"] = s["ratio_vs_torchio"]
    payload["volumes_per_s"] = {name: s["best_volumes_per_s"] for name, s in summaries.items()}
    payload["medlens_batch"] = {name: s["medlens_batch"] for name, s in summaries.items()}
    payload["medlens_missing"] = medlens_missing
    payload["workloads"] = summaries
    payload["sanity_failures"] = sanity_failures
    payload.update(environment(PACKAGES))
    payload.update(
        {
            "torch_threads": threads["torch_threads"],
            "sitk_threads": threads["sitk_threads"],
            "worker_sitk_threads": args.worker_sitk_threads,
            "loader": {
                "num_workers": args.workers,
                "batch_size": LOADER_BATCH,
                "persistent_workers": True,
            },
            "medlens_batches_tried": list(MEDLENS_BATCHES),
            "volumes": args.volumes,
            "source": source,
            "statistic": "median",
            "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
            "quick": args.quick,
            "repeats_requested": args.repeats,
            "total_s": time.perf_counter() - started,
        }
    )
    print(f"\ntotal {payload['total_s']:.0f} s")
    emit_json(payload)


if __name__ == "__main__":
    main(sys.argv[1:])
