"""The detection peer: Ultralytics YOLO trained from its model YAML (no pretrained weights) on a
Pascal VOC folder for a fixed wall-clock budget on the CPU, then predicting the validation images.

It runs in its own environment (torchvision cannot be imported beside medlens's CPU torch):

    python3 -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1
    .venv-peer/bin/pip install ultralytics torch==2.14.1 torchvision==0.29.1

and is called by ``benchmarks/detection.py --peer-python .venv-peer/bin/python``, which scores
the boxes it writes with medlens's own COCO AP (the same code and ground truth as medlens's run).
It imports nothing of medlens. Output: ``OUT/predictions.json`` with, per validation image,
``boxes`` (x1, y1, x2, y2 in pixels, 0 at the first pixel's outer edge), ``scores``, ``labels``
(indices into ``classes``), plus ``classes``, ``train_seconds``, ``epochs``, ``seconds_per_image``
and the model and Ultralytics version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path


def voc_ids(root: Path, split: str) -> list[str]:
    path = root / "ImageSets" / "Main" / f"{split}.txt"
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_objects(xml: Path) -> tuple[int, int, list[tuple[str, float, float, float, float]]]:
    """Image size and objects (name, x1, y1, x2, y2 in edge coordinates: VOC's 1-based
    inclusive pixels xmin..xmax cover [xmin - 1, xmax])."""
    tree = ET.parse(xml).getroot()
    size = tree.find("size")
    width, height = int(size.findtext("width")), int(size.findtext("height"))
    objects = []
    for obj in tree.iter("object"):
        box = obj.find("bndbox")
        x1, y1, x2, y2 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        objects.append((obj.findtext("name").strip(), x1 - 1, y1 - 1, x2, y2))
    return width, height, objects


def write_yolo_dataset(root: Path, work: Path) -> tuple[Path, list[str], list[Path]]:
    """YOLO's layout of the VOC train and val splits (images linked, labels written); the
    data YAML, class names (sorted, as medlens numbers them) and the val images."""
    splits = {name: voc_ids(root, name) for name in ("train", "val")}
    found = {
        i: voc_objects(root / "Annotations" / f"{i}.xml") for ids in splits.values() for i in ids
    }
    names = sorted({o[0] for _, _, objects in found.values() for o in objects})
    val_images = []
    for split, ids in splits.items():
        (work / "images" / split).mkdir(parents=True, exist_ok=True)
        (work / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in ids:
            image = next((root / "JPEGImages").glob(f"{i}.*"))
            link = work / "images" / split / image.name
            if not link.exists():
                link.symlink_to(image.resolve())
            width, height, objects = found[i]
            lines = [
                f"{names.index(n)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}"
                for n, x1, y1, x2, y2 in objects
            ]
            (work / "labels" / split / f"{image.stem}.txt").write_text("\n".join(lines) + "\n")
            if split == "val":
                val_images.append(link)
    yaml = work / "data.yaml"
    listed = "\n".join(f"  {k}: {n}" for k, n in enumerate(names))
    yaml.write_text(f"path: {work}\ntrain: images/train\nval: images/val\nnames:\n{listed}\n")
    return yaml, names, val_images


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="The VOC folder (BCCD).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, required=True, help="Training wall-clock budget.")
    parser.add_argument("--model", default="yolo11n.yaml")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    import ultralytics
    from ultralytics import YOLO, settings

    settings.update({"sync": False})  # no analytics, no network
    args.out.mkdir(parents=True, exist_ok=True)
    yaml, names, val_images = write_yolo_dataset(args.data, args.out / "dataset")
    model = YOLO(args.model)  # architecture from YAML: random initialisation
    started = time.perf_counter()
    model.train(
        data=str(yaml),
        epochs=1000,  # the time budget ends training (Ultralytics' `time`, in hours)
        time=args.minutes / 60,
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        workers=1,
        pretrained=False,
        amp=False,
        plots=False,
        project=str(args.out),
        name="train",
        exist_ok=True,
        seed=0,
        deterministic=False,
        verbose=False,
    )
    train_seconds = time.perf_counter() - started
    best = args.out / "train" / "weights" / "best.pt"
    trained = YOLO(str(best)) if best.exists() else model
    trained.predict(str(val_images[0]), device="cpu", verbose=False)  # warm-up
    started = time.perf_counter()
    sources = [str(p) for p in val_images]
    options = {"conf": 0.001, "iou": 0.7, "max_det": 300, "imgsz": args.imgsz}
    results = trained.predict(sources, device="cpu", verbose=False, **options)
    per_image = (time.perf_counter() - started) / len(val_images)
    predictions = {}
    for path, result in zip(val_images, results, strict=True):
        boxes = result.boxes
        predictions[path.stem] = {
            "boxes": boxes.xyxy.cpu().numpy().round(3).tolist(),
            "scores": boxes.conf.cpu().numpy().round(5).tolist(),
            "labels": boxes.cls.cpu().numpy().astype(int).tolist(),
        }
    epochs = None
    results_csv = args.out / "train" / "results.csv"
    if results_csv.exists():
        epochs = max(0, len(results_csv.read_text().strip().splitlines()) - 1)
    summary = {
        "model": args.model,
        "ultralytics": ultralytics.__version__,
        "torch": torch.__version__,
        "classes": names,
        "train_seconds": round(train_seconds, 1),
        "epochs": epochs,
        "seconds_per_image": round(per_image, 4),
        "predictions": predictions,
    }
    (args.out / "predictions.json").write_text(json.dumps(summary))
    print(json.dumps({k: v for k, v in summary.items() if k != "predictions"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
