"""``medlens evaluate`` for detection runs: AP, FROC and counts with intervals, per image.

Which images: on the run's own training dataset its validation images (``splits.json``, matched
by id), on any other dataset (or ``split="all"``) every image; a dataset with its own splits (VOC
``ImageSets/Main``) takes ``split="val"``, ``"test"`` ... by name. Each image is predicted as
``medlens predict`` predicts it (mirroring as the plan says) and scored on the plan's grid:

* COCO AP per class at IoU 0.5 and 0.5:0.95 (:func:`medlens.metrics.detection.average_precision`,
  pycocotools' rules), with 95% bootstrap intervals over images;
* the FROC by LUNA16's rule, centres and radii in millimetres (a finding's radius: half its
  ``diameter_mm`` where the reader kept it, else half the box's shortest side), and its CPM;
* counting errors per class at score 0.5 (cell counts).

The output folder (default ``<run>/evaluation/``) receives ``metrics.json``, ``per_image.csv``
(boxes found and true per class, matched at IoU 0.5) and ``report.html`` with the overlays of the
best, median and worst images (:mod:`medlens.tasks.detection.report`), atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medlens.errors import DatasetError

__all__ = ["evaluate_detection"]


def evaluate_detection(
    run,
    data: Path,
    *,
    split: str | None = None,
    output=None,
    n_boot: int = 1000,
    mirror: bool | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Score the loaded run ``run`` (:class:`~medlens.tasks.detection.predict.DetectionRun`)
    on the labelled detection data at ``data``; returns the metrics and the files written."""
    from medlens._atomic import atomic_write_json, atomic_write_text, ensure_outside
    from medlens._progress import progress as shown
    from medlens.tasks.detection.data import open_boxes, preprocess_case
    from medlens.tasks.detection.train import score_cases

    data = Path(data)
    if not data.exists():
        raise DatasetError("does not exist", data)
    dataset = open_boxes(data, split=split, plan=run.plan, progress=progress)
    indices = _indices(run, dataset, data, split)
    cases = [
        preprocess_case(dataset[i], run.plan)
        for i in shown(indices, "preparing cases", enabled=progress)
    ]
    result = score_cases(
        run.networks, cases, run.plan, mirror=mirror, n_boot=n_boot, keep_detections=True
    )
    detections = result.pop("detections")  # boxes per case, for the report
    result.update(
        class_names=run.plan.class_names,
        n_cases=len(cases),
        data=str(data.resolve()),
        split=split,
        run=str(run.path),
    )
    folder = Path(output) if output is not None else run.path / "evaluation"
    ensure_outside(folder, data)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "metrics.json", result)
    files = {"metrics": folder / "metrics.json", "per_image": folder / "per_image.csv"}
    lines = ["id," + ",".join(f"found_{c},true_{c}" for c in run.plan.class_names)]
    for row in result["per_image"]:
        pairs = zip(row["found"], row["true"], strict=True)
        lines.append(row["id"] + "," + ",".join(f"{a},{b}" for a, b in pairs))
    atomic_write_text(folder / "per_image.csv", "\n".join(lines) + "\n")
    from medlens.tasks.detection.report import write_detection_report

    files["report"] = write_detection_report(folder, result, cases, detections, run)
    return result, files


def _indices(run, dataset, data: Path, split: str | None) -> list[int]:
    """The run's validation images on its own data, every image elsewhere."""
    own = Path(run.info.get("data", {}).get("source", "")).resolve() == data.resolve()
    if split == "all" or not own:
        return list(range(len(dataset)))
    splits = json.loads((run.path / "splits.json").read_text())["folds"][0]
    wanted = set(splits.get("val", []))
    found = [i for i, case in enumerate(dataset.ids()) if case in wanted]
    return found or [int(i) for i in splits["val_indices"]]
