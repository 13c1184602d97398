"""Tiny labelled datasets, one per registered task, and settings that train them in seconds.

The platform suite (``tests/tasks/test_platform.py``) takes every task through plan, train,
predict, evaluate, explain and export on these; the server's tests serve runs trained on them.
A new task adds its tiny dataset to :data:`TINY`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["TINY", "train_tiny"]


def blobs(root: Path) -> tuple[Path, list[str]]:
    """A MedMNIST-style ``.npz`` of 16x16 images: a bright blob (class 1) or noise (class 0)."""

    def split(n, seed):
        r = np.random.default_rng(seed)
        labels = r.integers(0, 2, n)
        g = np.meshgrid(*[np.linspace(-1, 1, 16)] * 2, indexing="ij")
        blob = np.exp(-sum(x**2 for x in g) * 4)
        im = r.normal(60, 20, (n, 16, 16)) + 120 * blob[None] * labels[:, None, None]
        return np.clip(im, 0, 255).astype(np.uint8), labels[:, None]

    tx, ty = split(48, 0)
    vx, vy = split(16, 1)
    path = root / "blobs.npz"
    np.savez(path, train_images=tx, train_labels=ty, val_images=vx, val_labels=vy)
    return path, ["batch_size=16"]


def disks(root: Path, n: int = 6) -> tuple[Path, list[str]]:
    """``n`` 40x48 PNGs of a bright disk in noise, with their masks (paired folders)."""
    from PIL import Image as PILImage

    data = root / "disks"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :48]
    for i in range(n):
        cy, cx, r = rng.integers(14, 26), rng.integers(16, 32), rng.integers(6, 10)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image = np.clip(rng.normal(70, 15, (40, 48)) + 100 * disk, 0, 255).astype(np.uint8)
        PILImage.fromarray(image).save(data / "images" / f"case{i:02d}.png")
        PILImage.fromarray((disk * 255).astype(np.uint8)).save(
            data / "masks" / f"case{i:02d}_mask.png"
        )
    tiny = ["network.features=[4,8]", "network.strides=[[1,1],[2,2]]",
            "network.kernel_sizes=[[3,3],[3,3]]", "patch_size=32,32", "batch_size=2",
            "train.batches_per_epoch=2"]  # fmt: skip
    return data, tiny


def mr_volumes(root: Path, series: Path) -> tuple[Path, list[str]]:
    """A Decathlon folder of two MR cases made from a real DICOM ``series`` (the volume and
    its mirror image), labelled by an intensity threshold: a 3D segmenter that takes that
    series (modality MR) and answers a non-empty mask, trained in seconds."""
    import json

    from medlens.image import Image
    from medlens.io import load_image, save_image

    image = load_image(series)
    volume = np.asarray(image.array, dtype=np.float32)
    labels = (volume > np.percentile(volume, 80)).astype(np.uint8)
    data = root / "mr_volumes"
    for folder in ("imagesTr", "labelsTr"):
        (data / folder).mkdir(parents=True)
    for case, flip in (("mr_a", False), ("mr_b", True)):
        v, lab = (volume[:, :, ::-1], labels[:, :, ::-1]) if flip else (volume, labels)
        for folder, array in (("imagesTr", v), ("labelsTr", lab)):
            out = Image(np.ascontiguousarray(array), image.spacing, image.origin, image.direction)
            save_image(out, data / folder / f"{case}.nii.gz")
    spec = {
        "name": "mr_volumes",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "bright"},
        "training": [
            {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
            for c in ("mr_a", "mr_b")
        ],
    }
    (data / "dataset.json").write_text(json.dumps(spec))
    tiny = ["network.features=[4,8,16]", "network.strides=[[1,1,1],[2,2,2],[2,2,2]]",
            "network.kernel_sizes=[[3,3,3],[3,3,3],[3,3,3]]", "patch_size=16,32,32",
            "batch_size=2", "train.batches_per_epoch=2", "target_spacing=6,6,6"]  # fmt: skip
    return data, tiny


def volume_blobs(root: Path) -> tuple[Path, list[str]]:
    """A MedMNIST3D-style ``.npz`` of 12^3 volumes: a bright blob (class 1) or noise (class 0);
    a 3D classifier that takes any DICOM series (resized), trained in seconds."""
    r = np.random.default_rng(0)
    g = np.meshgrid(*[np.linspace(-1, 1, 12)] * 3, indexing="ij")
    blob = np.exp(-sum(x**2 for x in g) * 4)
    arrays = {}
    for split, n in (("train", 32), ("val", 12)):
        labels = r.integers(0, 2, n)
        volumes = r.normal(60, 20, (n, 12, 12, 12)) + 120 * blob[None] * labels[:, None, None, None]
        arrays[f"{split}_images"] = np.clip(volumes, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels[:, None]
    path = root / "volume_blobs.npz"
    np.savez(path, **arrays)
    return path, ["batch_size=16"]


def squares(root: Path, n: int = 8) -> tuple[Path, list[str]]:
    """``n`` 64x64 PNGs with one to three bright squares (class ``square``) and dark disks
    (class ``disk``) in noise, their boxes in a CSV (``image,x1,y1,x2,y2,label``, pixels)."""
    from PIL import Image as PILImage

    data = root / "squares"
    (data / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    rows = ["image,x1,y1,x2,y2,label"]
    for i in range(n):
        image = rng.normal(110, 12, (64, 64))
        for k in range(int(rng.integers(1, 4))):
            side = int(rng.integers(10, 18))
            x0, y0 = int(rng.integers(0, 64 - side)), int(rng.integers(0, 64 - side))
            if k % 2 == 0:
                image[y0 : y0 + side, x0 : x0 + side] += 90
                label = "square"
            else:
                r = side / 2
                disk = (yy - y0 - r + 0.5) ** 2 + (xx - x0 - r + 0.5) ** 2 <= r * r
                image[disk] -= 80
                label = "disk"
            rows.append(f"images/case{i:02d}.png,{x0},{y0},{x0 + side},{y0 + side},{label}")
        name = data / "images" / f"case{i:02d}.png"
        PILImage.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(name)
    (data / "boxes.csv").write_text("\n".join(rows) + "\n")
    tiny = [
        "network.backbone=resnet10",
        "network.width=8",
        "network.fpn_channels=16",
        "patch_size=64,64",
        "batch_size=2",
        "train.batches_per_epoch=2",
        "train.val_every=1",
    ]
    return data / "boxes.csv", tiny


def disk_pairs(root: Path) -> tuple[Path, list[str]]:
    """The disks of :func:`disks` as a registration dataset: random pairs of them, their masks
    scored (and supervising) as labels."""
    data, _ = disks(root)
    tiny = ["network.features=[4,8,8]", "train.batches_per_epoch=3", "batch_size=2",
            "train.batch_size=2", "val_pairs=4"]  # fmt: skip
    return data, tiny


def kspace_phantoms(root: Path) -> tuple[Path, list[str]]:
    """SIMULATED single-coil k-space (4x) of four 3-slice ellipse phantoms (four subjects):
    a reconstruction run trained in seconds."""
    from medlens.image import Image
    from medlens.io import save_image
    from medlens.reconstruction.simulate import simulate_kspace_dataset

    source = root / "phantoms"
    source.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :48]
    for case in "abcd":
        volume = np.zeros((3, 40, 48), np.float32)
        for z in range(3):
            for _ in range(3):
                cy, cx, ry, rx = rng.uniform(10, 30), rng.uniform(12, 36), *rng.uniform(4, 12, 2)
                inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
                volume[z][inside] += rng.uniform(50, 100)
        save_image(Image(volume, (1.0, 1.0, 2.0)), source / f"phantom_{case}.nii.gz")
    data = root / "kspace"
    simulate_kspace_dataset(source, data, acceleration=4, seed=0, progress=False)
    tiny = ["network.cascades=1", "network.features=[4,8]", "train.batches_per_epoch=2",
            "val_slices=4"]  # fmt: skip
    return data, tiny


def cines(root: Path) -> Path:
    """A cine folder of 12 SIMULATED 8-frame, 2-slice 16x16 cines: a bright disk whose radius
    beats through the cycle (strongly or weakly: ``label``), its label maps, and the EF of those
    maps (``ef_percent``, summation of discs)."""
    from medlens.image import Image, Role
    from medlens.io import save_image
    from medlens.measure.cardiac import cardiac_indices, cavity_areas, volume_curve

    data = root / "cines"
    if (data / "cases.csv").is_file():
        return data
    for folder in ("cines", "labels"):
        (data / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    rows = ["case,subject,label,ef_percent,simulated"]
    for i in range(12):
        strong = i % 2 == 0
        squeeze = rng.uniform(0.35, 0.45) if strong else rng.uniform(0.05, 0.15)
        radius = 5.5 * (1 - squeeze * (1 - np.cos(2 * np.pi * np.arange(8) / 8)) / 2)
        cy, cx = rng.uniform(7, 9, 2)
        labels = np.zeros((8, 2, 16, 16), np.uint8)
        for t, r in enumerate(radius):
            for z in range(2):
                labels[t, z] = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r * (1 - 0.2 * z)) ** 2
        cine = rng.normal(40, 8, labels.shape) + 120 * labels
        image = Image(cine.astype(np.float32), spacing=(1.0, 1.0, 8.0), leading=("time",))
        save_image(image, data / "cines" / f"c{i:02d}.nii.gz")
        save_image(image.with_array(labels, role=Role.LABEL), data / "labels" / f"c{i:02d}.nii.gz")
        ef = cardiac_indices(volume_curve(cavity_areas(labels, (1.0, 1.0)), 8.0))["ef_percent"]
        rows.append(f"c{i:02d},c{i:02d},{'strong' if strong else 'weak'},{ef:.3f},true")
    (data / "cases.csv").write_text("\n".join(rows) + "\n")
    return data


def sequence_values(root: Path) -> tuple[Path, list[str]]:
    """:func:`cines` for classification and regression: 6 frames of 16x16, a tiny CNN + GRU."""
    return cines(root), ["network.features=[4,8]", "network.hidden=4", "batch_size=4",
                         "batches_per_epoch=2", "frames=6", "size=16,16"]  # fmt: skip


def sequence_masks(root: Path) -> tuple[Path, list[str]]:
    """:func:`cines` for per-frame segmentation: a tiny ConvGRU U-Net."""
    return cines(root), ["network.features=[4,8]", "batch_size=2", "batches_per_epoch=2"]


#: A tiny labelled dataset and fast settings per registered task.
TINY: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "classification": blobs,
    "segmentation": disks,
    "detection": squares,
    "registration": disk_pairs,
    "reconstruction": kspace_phantoms,
    "sequence-classification": sequence_values,
    "sequence-regression": sequence_values,
    "sequence-segmentation": sequence_masks,
}


def train_tiny(
    name: str, root: Path, make: Callable[[Path], tuple[Path, list[str]]] | None = None
) -> tuple[Path, Path]:
    """Train task ``name`` for one epoch on its tiny dataset under ``root`` (or on what
    ``make(root)`` gives: data and settings): ``(data, run)``."""
    from medlens.tasks.registry import get_task

    root.mkdir(parents=True, exist_ok=True)
    data, settings = (make or TINY[name])(root)
    task = get_task(name)
    plan = task.plan(data, overrides=settings, log=lambda line: None)
    run = root / "run"
    task.train(data, run, plan=plan.save(root / "plan.json"), epochs=1, progress=False,
               log=lambda line: None)  # fmt: skip
    return data, run
