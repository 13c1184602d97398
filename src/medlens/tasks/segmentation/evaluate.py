"""``medlens evaluate`` for segmentation runs: metrics per case and class, and a report.

Each case is predicted as :func:`~medlens.tasks.segmentation.predict.predict_image` does for
``medlens predict`` (label map on the case's own, original grid) and scored against its reference
label map on that grid, so distances are in the image's true millimetres, not the plan's. Which
cases: on the run's own training dataset the held-out validation cases of ``splits.json`` (matched
by case id), on any other dataset all of its cases; ``split="all"`` forces every case and
``split="val"`` the run's validation ids.

The output folder (default ``<run>/evaluation/``) receives, atomically:

* ``metrics.json``: :meth:`medlens.metrics.SegmentationMetric.compute` (Dice, IoU, HD95, ASSD and
  normalised surface Dice per case and class, aggregates with bootstrap intervals over cases)
  plus the data, the run and which cases were scored;
* ``per_case.csv``: one row per case, five metrics per class and the mean foreground Dice;
* ``report.html``: one self-contained page with the metrics and their intervals, overlays of the
  best, median and worst cases by mean foreground Dice (reference and predicted contours on the
  image; 3D: the axial, coronal and sagittal slices holding the most reference foreground), the
  learning curves and the per-case table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlens.errors import DatasetError, MedlensError
from medlens.tasks.segmentation.evaluation_cases import (
    _class_names,
    _fold_run,
    _predict_case,
    _ranked,
    _select_cases,
)
from medlens.tasks.segmentation.evaluation_report import _explained, _write_report
from medlens.tasks.segmentation.evaluation_tables import _write_per_case, format_table
from medlens.tasks.segmentation.overlays import _overlays

__all__ = ["evaluate_segmentation", "format_table"]

SPLITS = ("val", "all")


# ---------------------------------------------------------------------------------- the job
def evaluate_segmentation(
    run_dir: str | Path,
    data: str | Path,
    *,
    split: str | None = None,
    tolerance_mm: float = 1.0,
    output: str | Path | None = None,
    n_boot: int = 1000,
    mirror: bool | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a segmentation run on a labelled dataset and write metrics, CSV and report.

    Args:
        run_dir: run folder written by :func:`~medlens.tasks.segmentation.train.train_segmentation`
            (or the run already loaded, as the task's predictor holds it).
        data: a segmentation dataset (Decathlon/nnU-Net folder, HC18 folder, paired folders).
        split: None: the run's validation cases when ``data`` is the run's training dataset,
            else all cases; ``"val"``: the run's validation case ids (in any copy of the data);
            ``"all"``: every case.
        tolerance_mm: tolerance of the normalised surface Dice, in mm.
        output: folder for ``metrics.json``, ``per_case.csv`` and ``report.html``; default
            ``<run_dir>/evaluation``.
        n_boot: bootstrap resamples of the cases for the 95% intervals (0: none).
        mirror: mirroring test-time augmentation, as ``medlens predict --mirror``; None: on
            for 2D runs, off for 3D ones (``predict.mirror_default``).
        progress: show a progress bar.

    Returns:
        ``metrics.json``'s content plus ``files`` (name -> path written).
    """
    from medlens._atomic import atomic_write_json, ensure_outside
    from medlens.data import open_dataset
    from medlens.metrics import SegmentationMetric
    from medlens.metrics._seg_inputs import check_tolerance
    from medlens.tasks.segmentation.predict import (
        SegmentationRun,
        load_segmentation_run,
        mirror_default,
    )

    loaded = run_dir if isinstance(run_dir, SegmentationRun) else None
    run_dir, data = Path(loaded.path if loaded is not None else run_dir), Path(data)
    if split not in (None, *SPLITS):
        raise MedlensError(
            f"split {split!r}: a segmentation run is evaluated on 'val' (its validation cases) "
            "or 'all' (every case)"
        )
    tolerance_mm = check_tolerance(tolerance_mm)
    run = loaded if loaded is not None else load_segmentation_run(run_dir)
    mirror = mirror_default(run.plan) if mirror is None else bool(mirror)
    if not data.exists():
        raise DatasetError("does not exist", data)
    output = run_dir / "evaluation" if output is None else Path(output)
    ensure_outside(output, data)
    dataset = open_dataset(data)
    if dataset.task != "segmentation":
        raise DatasetError(f"a {dataset.task} dataset, not a segmentation one", data)
    selected, which, notes = _select_cases(run, dataset, data, split)
    plan = run.plan
    labels = [int(v) for v in plan.label_values if v not in (0, plan.ignore_label)]
    if not labels:
        raise MedlensError(f"{run_dir}: the run has no foreground label to evaluate")
    metric = SegmentationMetric(
        labels=labels,
        tolerance_mm=tolerance_mm,
        n_boot=n_boot,
        class_names=_class_names(run.info, labels),
    )
    from medlens._progress import progress as shown

    for index, fold in shown(selected, "evaluating cases", enabled=progress):
        case = _predict_case(_fold_run(run, fold), dataset, index, mirror)
        metric.update(case["pred"], case["ref"], case["spacing"], case_id=case["id"])
    result = metric.compute()
    cases = result["cases"]
    ranked = _ranked(cases)
    result.update(
        data=str(data),
        run=str(run_dir),
        split=which["split"],
        cases_description=which["description"],
        case_ids=[case["case_id"] for case in cases],
        folds=[fold for _, fold in selected] if any(f is not None for _, f in selected) else None,
        mirror=bool(mirror),
        tolerance_mm=tolerance_mm,
        postprocessing=getattr(run, "postprocessing", None),
        examples={role: cases[i]["case_id"] for role, i in ranked},
    )
    result["notes"] = [*result.get("notes", []), *notes]

    output.mkdir(parents=True, exist_ok=True)
    files = {
        "metrics": output / "metrics.json",
        "per_case": output / "per_case.csv",
        "report": output / "report.html",
    }
    atomic_write_json(files["metrics"], result)
    _write_per_case(files["per_case"], result)
    overlays = _overlays(run, dataset, selected, ranked, cases, mirror)
    explained = _explained(run, dataset, selected, ranked)
    _write_report(files["report"], run, result, overlays, explained)
    return {**result, "files": {name: str(path) for name, path in files.items()}}
