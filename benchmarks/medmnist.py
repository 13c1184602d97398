"""MedMNIST classification with medlens' defaults, and training throughput against MONAI.

Part 1 (``--part accuracy``): for BreastMNIST, PneumoniaMNIST (2D, 28x28) and AdrenalMNIST3D
(28^3), run exactly what ``medlens train --task classification --data X --output Y`` runs (the
defaults are the product), and report the held-out ``val`` split's AUC and accuracy with 95%
bootstrap intervals and the training wall time, next to the MedMNIST v2 paper's test-set figures.
The test splits are held out of this project, so validation figures are what can be reported.

Part 2 (``--part throughput``): training images per second of the same ResNet-18 (ImageNet stem,
2D, 28x28 PneumoniaMNIST images, batch 128, random flip + affine) in three set-ups, interleaved in
one process run: the pure forward/backward pass on a fixed batch (the floor), medlens (batches from
memory, batched augmentation), and a MONAI pipeline (MONAI ResNet-18, MONAI dictionary transforms,
``DataLoader`` with 2 workers). Pipeline overhead is the time above the pure pass.

Prints tables, then one JSON line with all figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    configure_threads,
    emit_json,
    environment,
    log,
    print_table,
    require_data,
)

SETS = {
    "breastmnist": {"file": "breastmnist.npz", "paper": "Google AutoML Vision .919 / .861",
                    "best_auc": 0.919, "best_acc": 0.863, "budget_min": 10},
    "pneumoniamnist": {"file": "pneumoniamnist.npz", "paper": "Google AutoML Vision .991 / .946",
                       "best_auc": 0.991, "best_acc": 0.946, "budget_min": 10},
    "adrenalmnist3d": {"file": "adrenalmnist3d.npz",
                       "paper": "ResNet-18+ACS .839 / auto-sklearn .802",
                       "best_auc": 0.839, "best_acc": 0.802, "budget_min": 20},
}  # fmt: skip


def accuracy_part(root: Path, names: list[str], epochs: int | None) -> dict:
    from medlens.tasks.classification import train_classification

    results = {}
    for name in names:
        spec = SETS[name]
        data = root / "medmnist" / spec["file"]
        with tempfile.TemporaryDirectory() as tmp:
            log(f"{name}: training with the defaults ...")
            start = time.perf_counter()
            info = train_classification(
                data, Path(tmp) / "run", epochs=epochs, progress=False, log=log
            )
            seconds = time.perf_counter() - start
        evaluation = info["evaluation"]
        results[name] = {
            "model": info["plan"]["model"],
            "epochs": info["plan"]["train"]["epochs"],
            "auc": evaluation["auc"],
            "accuracy": evaluation["accuracy"],
            "accuracy_at_0.5": evaluation.get("accuracy_at_0.5"),
            "train_seconds": round(seconds, 1),
            "paper_best_auc": spec["best_auc"],
            "paper_best_acc": spec["best_acc"],
            "beats_best_auc": evaluation["auc"]["value"] > spec["best_auc"],
            "beats_best_acc": _argmax_accuracy(evaluation) > spec["best_acc"],
            "within_budget": seconds < spec["budget_min"] * 60,
            "figures_from": evaluation.get("split", "the file's val split"),
            "selection": info.get("selection"),
        }
    rows = []
    for name, r in results.items():
        rows.append([
            name, f"{r['model']} x{r['epochs']}", _ci(r["auc"]),
            _ci(r["accuracy_at_0.5"] or r["accuracy"]), _ci(r["accuracy"]),
            SETS[name]["paper"], f"{r['train_seconds'] / 60:.1f} min",
        ])  # fmt: skip
    print_table(
        "Held-out val split, or out-of-fold over train + val when the plan was chosen by "
        "cross-validation (95% bootstrap CI); paper: best test-set AUC / ACC (ACC at argmax)",
        ["dataset", "model", "AUC", "ACC argmax", "ACC Youden", "paper best", "train time"],
        rows,
    )
    return results


def _argmax_accuracy(evaluation: dict) -> float:
    return (evaluation.get("accuracy_at_0.5") or evaluation["accuracy"])["value"]


def _ci(metric: dict) -> str:
    return f"{metric['value']:.3f} [{metric['low']:.3f}, {metric['high']:.3f}]"


def throughput_part(root: Path, steps: int) -> dict:
    import numpy as np
    import torch

    from medlens.engine import TensorBatches
    from medlens.models import create_model
    from medlens.tasks.classification.plan import build_augment

    with np.load(root / "medmnist" / "pneumoniamnist.npz") as npz:
        images = npz["train_images"][:, None].copy()
        labels = npz["train_labels"][:, 0].astype(np.int64)
    batch = 128
    settings = {"rotate": 10.0, "scale": 0.1, "translate": 1.4, "flip_axes": [1]}
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(model, optimiser, x, y):
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimiser.step()

    def make(model):
        torch.manual_seed(0)
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    ours = make(create_model("resnet18", spatial_dims=2, in_channels=1, num_classes=2,
                             stem="large"))  # fmt: skip
    fixed_x = torch.rand(batch, 1, 28, 28)
    fixed_y = torch.randint(0, 2, (batch,))

    def pure():
        for _ in range(steps):
            step(*ours, fixed_x, fixed_y)

    batches = TensorBatches(images, labels, batch_size=batch, shuffle=True, drop_last=True,
                            augment=build_augment(settings, 2))  # fmt: skip
    epoch = [0]

    def medlens_pipeline():
        done = 0
        while done < steps:
            epoch[0] += 1
            batches.set_epoch(epoch[0])
            for x, y in batches:
                step(*ours, x, y)
                done += 1
                if done == steps:
                    return

    cases = {
        "pure forward/backward (medlens ResNet-18)": pure,
        "medlens pipeline": medlens_pipeline,
    }
    monai_error = None
    try:
        monai_pipeline, monai_pure = _monai(images, labels, batch, steps, step, make, settings)
        cases["MONAI pipeline"] = monai_pipeline
        cases["pure forward/backward (MONAI ResNet-18)"] = monai_pure
    except ImportError as exc:
        monai_error = f"MONAI not installed ({exc})"
        log(monai_error)
    for fn in cases.values():  # warm-up: worker start, allocator, first batches
        fn()
    times = {name: [] for name in cases}
    for _ in range(3):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rate = {name: steps * batch / min(t) for name, t in times.items()}
    ours_pure = rate["pure forward/backward (medlens ResNet-18)"]
    result = {
        "images_per_s": rate,
        "medlens_overhead": ours_pure / rate["medlens pipeline"] - 1,
        "batch": batch,
        "steps": steps,
        "monai_error": monai_error,
    }
    if "MONAI pipeline" in rate:
        result["ratio_vs_monai"] = rate["medlens pipeline"] / rate["MONAI pipeline"]
        monai_pure_rate = rate["pure forward/backward (MONAI ResNet-18)"]
        result["monai_overhead"] = monai_pure_rate / rate["MONAI pipeline"] - 1
    rows = [[name, f"{value:.0f}"] for name, value in rate.items()]
    print_table("Training throughput, ResNet-18 2D on 28x28, batch 128 (images/s, best of 3)",
                ["set-up", "images/s"], rows)  # fmt: skip
    print(f"medlens pipeline overhead over its pure pass: {result['medlens_overhead']:.1%}")
    if "ratio_vs_monai" in result:
        print(f"MONAI pipeline overhead over its pure pass: {result['monai_overhead']:.1%}")
        print(f"medlens / MONAI pipeline: {result['ratio_vs_monai']:.2f}x")
    return result


def _monai(images, labels, batch, steps, step, make, settings):
    import torch
    from monai.data import DataLoader, Dataset
    from monai.networks.nets import resnet18
    from monai.transforms import Compose, EnsureTyped, RandAffined, RandFlipd, ScaleIntensityd

    network = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2)
    model = make(network)
    data = [{"image": images[i].astype("float32"), "label": int(labels[i])}
            for i in range(len(labels))]  # fmt: skip
    transforms = Compose([
        ScaleIntensityd(keys="image", minv=None, maxv=None, factor=-1 + 1 / 255),
        RandFlipd(keys="image", prob=0.5, spatial_axis=1),
        RandAffined(keys="image", prob=0.8, rotate_range=0.1745, scale_range=0.1,
                    translate_range=1.4, padding_mode="zeros"),
        EnsureTyped(keys="image", track_meta=False),
    ])  # fmt: skip
    loader = DataLoader(Dataset(data, transforms), batch_size=batch, shuffle=True,
                        num_workers=2, drop_last=True, persistent_workers=True)  # fmt: skip
    fixed_x = torch.rand(batch, 1, 28, 28)
    fixed_y = torch.randint(0, 2, (batch,))

    def pipeline():
        done = 0
        while done < steps:
            for item in loader:
                step(*model, item["image"], item["label"])
                done += 1
                if done == steps:
                    return

    def pure():
        for _ in range(steps):
            step(*model, fixed_x, fixed_y)

    return pipeline, pure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "accuracy", "throughput"], default="all")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    parser.add_argument("--epochs", type=int, default=None, help="override (quick checks only)")
    parser.add_argument("--steps", type=int, default=10, help="throughput: steps per timing")
    args = parser.parse_args()
    root = require_data("medmnist", "medmnist")
    threads = configure_threads()
    payload: dict = {"benchmark": "medmnist", **threads}
    if args.part in ("all", "accuracy"):
        payload["accuracy"] = accuracy_part(root, args.sets, args.epochs)
    if args.part in ("all", "throughput"):
        payload["throughput"] = throughput_part(root, args.steps)
    payload["environment"] = environment(["medlens", "torch", "monai", "numpy"])
    emit_json(payload)


if __name__ == "__main__":
    main()
