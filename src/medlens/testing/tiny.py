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


#: A tiny labelled dataset and fast settings per registered task.
TINY: dict[str, Callable[[Path], tuple[Path, list[str]]]] = {
    "classification": blobs,
    "segmentation": disks,
}


def train_tiny(name: str, root: Path) -> tuple[Path, Path]:
    """Train task ``name`` for one epoch on its tiny dataset under ``root``: ``(data, run)``."""
    from medlens.tasks.registry import get_task

    root.mkdir(parents=True, exist_ok=True)
    data, settings = TINY[name](root)
    task = get_task(name)
    plan = task.plan(data, overrides=settings, log=lambda line: None)
    run = root / "run"
    task.train(data, run, plan=plan.save(root / "plan.json"), epochs=1, progress=False,
               log=lambda line: None)  # fmt: skip
    return data, run
