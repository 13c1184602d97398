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

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.errors import DatasetError, GeometryError, MedlensError

__all__ = ["evaluate_segmentation", "format_table", "overlay_figure"]

SPLITS = ("val", "all")
REFERENCE_COLOUR = "#ffc400"  # amber and azure: distinct on grey and for colour-blind readers
PREDICTION_COLOUR = "#00a8ff"
_COLUMNS = (
    ("dice", "dice"),
    ("iou", "iou"),
    ("hd95", "hd95_mm"),
    ("assd", "assd_mm"),
    ("nsd", "nsd"),
)
_HEADINGS = {
    "dice": "Dice",
    "iou": "IoU",
    "hd95": "HD95 (mm)",
    "assd": "ASSD (mm)",
    "nsd": "NSD",
}
_MEANINGS = {
    "dice": "Overlap: twice the shared area over the sum of both areas (1 = identical).",
    "iou": "Overlap: shared area over the union (Jaccard); always at most Dice.",
    "hd95": "95th percentile of the boundary distances, the larger of both directions: how far "
    "the boundaries stray, ignoring the worst 5%.",
    "assd": "Mean distance between the two boundaries, both directions pooled.",
    "nsd": "Share of both boundaries within the tolerance of the other (normalised surface Dice).",
}


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
        run_dir: run folder written by :func:`~medlens.tasks.segmentation.train.train_segmentation`.
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
    from medlens.tasks.segmentation.predict import load_segmentation_run, mirror_default

    run_dir, data = Path(run_dir), Path(data)
    if split not in (None, *SPLITS):
        raise MedlensError(
            f"split {split!r}: a segmentation run is evaluated on 'val' (its validation cases) "
            "or 'all' (every case)"
        )
    tolerance_mm = check_tolerance(tolerance_mm)
    run = load_segmentation_run(run_dir)
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


# ---------------------------------------------------------------------------------- cases
def _select_cases(run, dataset, data: Path, split: str | None):
    """``(index into dataset, fold or None)`` per case, what they are, and notes.

    A fold number means "predict with that fold's model only" (out-of-fold); None means the
    run's whole ensemble.
    """
    own = _is_training_data(run.info.get("data", {}), dataset, data)
    notes: list[str] = []
    if split == "all" or (split is None and not own):
        if own:
            notes.append(
                "All cases of the training dataset were scored, including those the model was "
                "trained on: these figures are optimistic. Use the validation split for an "
                "honest estimate."
            )
        what = "all cases of the dataset" + (" (training cases included)" if own else "")
        cases = [(i, None) for i in range(len(dataset))]
        return cases, {"split": "all", "description": what}, notes
    from medlens.data import load_splits

    splits = load_splits(run.path / "splits.json")
    folds = [splits] if isinstance(splits, dict) else list(splits)
    if len(folds) > 1 and len(folds) != len(run.networks):
        raise MedlensError(
            f"{run.path}: splits.json has {len(folds)} folds but {len(run.networks)} trained "
            "models were found"
        )
    position = {case_id: i for i, case_id in enumerate(dataset.ids())}
    by_index: dict[int, int | None] = {}
    missing: list[str] = []
    for k, fold in enumerate(folds):
        for case_id in fold["val"]:
            if case_id in position:
                by_index[position[case_id]] = k if len(folds) > 1 else None
            else:
                missing.append(str(case_id))
    if missing:  # matched by id: the training split's other cases need not be there
        more = ", ..." if len(missing) > 3 else ""
        raise DatasetError(
            f"{len(missing)} of the run's validation cases are not in this dataset "
            f"({', '.join(missing[:3])}{more}); use --split all to score its own cases",
            data,
        )
    if not by_index:
        raise DatasetError("the run's split has no validation case to score", run.path)
    if len(folds) > 1:
        what = (
            f"out-of-fold: every validation case predicted by the one of the {len(folds)} "
            "cross-validation models that did not train on it"
        )
    else:
        what = "the run's validation cases (held out of training)"
    notes.append(
        "The validation cases also chose the best epoch and the postprocessing, so the figures "
        "may be slightly optimistic; a separate test set gives an unbiased estimate."
    )
    cases = sorted(by_index.items())
    return cases, {"split": "val", "description": what}, notes


def _fold_run(run, fold: int | None):
    """``run`` with the model of ``fold`` only (None: the whole ensemble)."""
    import copy

    if fold is None:
        return run
    names = [p.name for p in sorted(run.path.glob("fold-*"))]  # load_segmentation_run's order
    view = copy.copy(run)
    view.networks = [run.networks[names.index(f"fold-{fold}")]]
    return view


def _is_training_data(recorded: Mapping[str, Any], dataset, data: Path) -> bool:
    """Whether the run was trained on ``data`` (``recorded``: ``run.json``'s ``data``).

    The same folder; or, when the run recorded a relative path (resolved against a working
    folder that may not be this one), a folder of the same name holding a dataset of the same
    name and size. Erring towards "yes" is safe: the validation ids must then all be found.
    """
    source = str(recorded.get("source") or "")
    if not source:
        return False
    try:
        a, b = Path(source), Path(data)
        if a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b)):
            return True
    except OSError:
        pass
    return (
        not a.is_absolute()
        and a.name == b.resolve().name
        and recorded.get("name") == dataset.name
        and recorded.get("cases") == len(dataset)
    )


def _class_names(info: Mapping[str, Any], labels: Sequence[int]) -> dict[int, str]:
    """Names of the foreground labels from the run's class names (by value when they line up)."""
    names = [str(n) for n in info.get("class_names") or []]
    values = [int(v) for v in info.get("label_values") or []]
    out: dict[int, str] = {}
    for label in labels:
        if len(names) == len(values) and label in values:
            out[label] = names[values.index(label)]
        elif 0 <= label < len(names):
            out[label] = names[label]
        else:
            out[label] = str(label)
    if len(set(out.values())) != len(out):  # names must be unique: fall back to the values
        out = {label: f"{name} ({label})" for label, name in out.items()}
    return out


def _predict_case(run, dataset, index: int, mirror: bool) -> dict[str, Any]:
    """The case's prediction and reference on the case's own grid (2D images squeezed)."""
    from medlens.tasks.segmentation.predict import _squeeze_2d, predict_image

    sample = dataset[index]
    plan = run.plan
    where = sample.meta.get("label_path") or sample.id
    if sample.mask is None:
        raise DatasetError("no label map to evaluate against", where)
    image = _squeeze_2d(sample.image, plan.spatial_dims)
    image.meta.setdefault("path", str(sample.meta.get("path") or sample.id))
    pred = predict_image(run, image, mirror=mirror)
    ref = np.asarray(sample.mask.array)
    if ref.ndim == len(pred.array.shape) + 1 and ref.shape[0] == 1:
        ref = ref[0]  # a 2D case stored as one slice
    if ref.shape != pred.array.shape:
        raise GeometryError(f"label map shape {ref.shape} != image shape {pred.array.shape}", where)
    pred_array = np.asarray(pred.array)
    if plan.ignore_label is not None:  # voxels marked "ignore" count for no class
        keep = ref == plan.ignore_label
        if keep.any():
            pred_array = pred_array.astype(np.int32)
            pred_array[keep] = plan.ignore_label
    return {"id": sample.id, "image": image, "pred": pred_array, "ref": ref, "spacing": pred}


def _ranked(cases: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """``(role, case index)`` of the best, median and worst case by mean foreground Dice.

    With fewer than three cases a case takes several roles (``"median and worst"``).
    """
    scores = [_mean_dice(case) for case in cases]
    order = sorted(range(len(cases)), key=lambda i: (-scores[i], i))  # best first, stable
    picks = {"best": order[0], "median": order[(len(order) - 1) // 2], "worst": order[-1]}
    roles: dict[int, list[str]] = {}
    for role, i in picks.items():
        roles.setdefault(i, []).append(role)
    return [(" and ".join(r), i) for i, r in roles.items()]


def _mean_dice(case: Mapping[str, Any]) -> float:
    value = case.get("mean", {}).get("dice")
    return -math.inf if value is None else float(value)


# ---------------------------------------------------------------------------------- files
def _write_per_case(path: Path, result: Mapping[str, Any]) -> None:
    from medlens._atomic import atomic_write_text

    classes = list(result["aggregate"]["per_class"])
    header = ["case_id"]
    for name in classes:
        header += [f"{name}_{column}" for _, column in _COLUMNS] + [f"{name}_empty"]
    header.append("mean_dice")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for case in result["cases"]:
        row = [case["case_id"]]
        for name in classes:
            entry = case["per_class"].get(name, {})
            row += [_csv_number(entry.get(metric)) for metric, _ in _COLUMNS]
            row.append(entry.get("empty", ""))
        row.append(_csv_number(case["mean"].get("dice")))
        writer.writerow(row)
    atomic_write_text(path, buffer.getvalue())


def _csv_number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(float(value))


def format_table(result: Mapping[str, Any]) -> str:
    """Per-class means with their intervals, as plain text for the terminal."""
    per_class = dict(result["aggregate"]["per_class"])
    rows = list(per_class.items())
    if len(rows) > 1:
        rows.append(("mean of classes", result["aggregate"]["mean"]))
    tolerance = result.get("tolerance_mm", result.get("settings", {}).get("tolerance_mm"))
    headings = {**_HEADINGS, "nsd": f"NSD ({float(tolerance):g} mm)"}
    width = max(12, *(len(name) for name, _ in rows))
    cells = [
        [_text_interval(entry.get(metric), metric) for metric, _ in _COLUMNS] for _, entry in rows
    ]
    widths = [
        max(len(headings[m]), *(len(row[j]) for row in cells)) for j, (m, _) in enumerate(_COLUMNS)
    ]
    lines = [
        f"{result['n_cases']} cases: {result.get('cases_description', '')}",
        (
            f"{'class':<{width}}  "
            + "  ".join(f"{headings[m]:<{w}}" for (m, _), w in zip(_COLUMNS, widths, strict=True))
        ).rstrip(),
    ]
    for (name, _), row in zip(rows, cells, strict=True):
        lines.append(
            f"{name:<{width}}  "
            + "  ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)).rstrip()
        )
    if result.get("bootstrap"):
        lines.append("mean over cases [95% bootstrap interval]")
    return "\n".join(lines)


def _text_interval(entry: Any, metric: str) -> str:
    if not isinstance(entry, Mapping) or entry.get("mean") is None:
        return "n/a"
    digits = 2 if metric in ("hd95", "assd") else 3
    text = f"{entry['mean']:.{digits}f}"
    if entry.get("low") is not None and entry.get("high") is not None:
        text += f" [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"
    return text


# ---------------------------------------------------------------------------------- figures
def _overlays(run, dataset, selected, ranked, cases, mirror) -> list[tuple[str, str, bytes]]:
    """``(role, case id, PNG)`` per example case; the cases are predicted again (same result)."""
    out = []
    for role, i in ranked:
        index, fold = selected[i]
        case = _predict_case(_fold_run(run, fold), dataset, index, mirror)
        labels = [v for v in run.plan.label_values if v not in (0, run.plan.ignore_label)]
        dice = cases[i]["mean"].get("dice")
        title = f"{role}: {case['id']}" + ("" if dice is None else f" (mean Dice {dice:.3f})")
        image = case["image"]
        png = overlay_figure(
            image.array,
            case["ref"],
            case["pred"],
            spacing=tuple(image.spacing[::-1]),
            labels=labels,
            title=title,
            channels="channel" in image.leading,
        )
        out.append((role, case["id"], png))
    return out


def overlay_figure(
    image: np.ndarray,
    reference: np.ndarray,
    prediction: np.ndarray,
    *,
    spacing: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    title: str = "",
    channels: bool = False,
) -> bytes:
    """PNG of the image in grey with the reference and predicted contours in two colours.

    Args:
        image: ``([C,] H, W)`` or ``([C,] D, H, W)``; with ``channels`` the first axis is the
            channel (three channels of a 2D image show in colour, otherwise the first one).
        reference, prediction: label maps on the image's spatial grid.
        spacing: mm per array axis (``(z, y, x)``), for the aspect ratio; default 1 mm.
        labels: the foreground labels to outline; default every non-zero value of either map.
        title: the figure's title.

    2D images show whole; 3D volumes show the axial, coronal and sagittal slices holding the
    most reference foreground (else prediction foreground, else the middle ones).
    """
    from matplotlib.lines import Line2D

    from medlens.report._figure import new_figure, plain, to_png

    ref, pred = np.asarray(reference), np.asarray(prediction)
    array = np.asarray(image)
    rgb = channels and array.ndim == 3 and array.shape[0] == 3
    if channels and not rgb:
        array = array[0]
    shape = ref.shape
    if pred.shape != shape or (array.shape[1:] if rgb else array.shape) != shape:
        raise ValueError(
            f"image, reference and prediction differ in shape: {array.shape}, {shape}, {pred.shape}"
        )
    if labels is None:
        labels = sorted(int(v) for v in np.union1d(np.unique(ref), np.unique(pred)) if v != 0)
    sp = tuple(float(s) for s in (spacing or (1.0,) * len(shape)))
    fore = np.isin(ref, labels) if np.isin(ref, labels).any() else np.isin(pred, labels)
    if len(shape) == 2:
        panels = [("", (slice(None), slice(None)), sp[0] / sp[1], "upper")]
    else:
        panels = []
        for axis, name in ((0, "axial"), (1, "coronal"), (2, "sagittal")):
            others = tuple(a for a in range(3) if a != axis)
            counts = fore.sum(axis=others)
            k = int(np.argmax(counts)) if counts.any() else shape[axis] // 2
            index = [slice(None)] * 3
            index[axis] = k  # type: ignore[call-overload]
            rows, cols = (a for a in range(3) if a != axis)
            origin = "upper" if axis == 0 else "lower"  # z upwards in the coronal and sagittal
            panels.append((f"{name} slice {k}", tuple(index), sp[rows] / sp[cols], origin))
    low, high = np.percentile(array, (0.5, 99.5)) if array.size else (0.0, 1.0)
    height = 4.2
    widths = []
    for _, index, aspect, _ in panels:
        r, c = ref[index].shape
        widths.append(max(1.5, height * c / max(r * aspect, 1e-6)))
    fig = new_figure(min(sum(widths) + 0.4, 14.0), height + 0.7)
    axes = fig.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
    for ax, (name, index, aspect, origin) in zip(axes, panels, strict=True):
        if rgb:
            shown = np.moveaxis(array[(slice(None), *index)], 0, -1).astype(np.float64)
            shown = np.clip((shown - low) / max(high - low, 1e-12), 0.0, 1.0)
            ax.imshow(shown, aspect=aspect, origin=origin, interpolation="nearest")
        else:
            ax.imshow(
                array[index],
                cmap="gray",
                vmin=low,
                vmax=high,
                aspect=aspect,
                origin=origin,
                interpolation="nearest",
            )
        # the reference drawn wider beneath the prediction: where they agree, both show
        outlines = ((ref[index], REFERENCE_COLOUR, 2.4), (pred[index], PREDICTION_COLOUR, 1.1))
        for mask, colour, width in outlines:
            for label in labels:
                inside = (mask == label).astype(np.float32)
                if inside.any() and not inside.all():
                    # no origin= here: contour's coordinates are then the array indices,
                    # which is where imshow puts the pixel centres (either origin)
                    ax.contour(inside, levels=[0.5], colors=[colour], linewidths=width)
        ax.set_xticks([])
        ax.set_yticks([])
        if name:
            ax.set_title(name, fontsize="small")
    handles = [
        Line2D([], [], color=REFERENCE_COLOUR, linewidth=2.4, label="reference"),
        Line2D([], [], color=PREDICTION_COLOUR, linewidth=1.6, label="prediction"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize="small")
    if title:
        fig.suptitle(plain(title, 80), fontsize="medium")
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    try:
        return to_png(fig)
    finally:
        fig.clear()


# ---------------------------------------------------------------------------------- report
def _explained(run, dataset, selected, ranked, max_voxels: int = 2**22) -> list[tuple[str, bytes]]:
    """Grad-CAM of each example case's predicted regions (the report's explained examples):
    ``(caption, PNG)``; cases too large to explain whole on a CPU, or failures, leave a note."""
    from medlens.explain import attribute
    from medlens.explain.render import attribution_figure
    from medlens.explain.run import segmentation_job
    from medlens.tasks.segmentation.predict import _squeeze_2d

    out: list[tuple[str, bytes]] = []
    for role, i in ranked:
        index, fold = selected[i]
        sample = dataset[index]
        image = _squeeze_2d(sample.image, run.plan.spatial_dims)
        target = np.prod(image.spatial_shape) * np.prod(
            np.asarray(image.spacing) / np.asarray(run.plan.grid_spacing(image.spacing))
        )
        if target > max_voxels:
            out.append((f"{role} case {sample.id}: too large to explain whole here", b""))
            continue
        try:
            job = segmentation_job(_fold_run(run, fold), [(str(sample.id), image)])
            for k, name in enumerate(job.ids):
                amap = attribute(job.models[k], job.inputs[k][None], "gradcam", 0)[0].numpy()
                png = attribution_figure(
                    job.display[k],
                    {"Grad-CAM": amap},
                    title=f"{role}: {name}",
                    signed={"Grad-CAM": False},
                )
                out.append((f"{role} case {name}: {job.target_names[k]}", png))
        except Exception as exc:  # the report must not fail for want of a picture
            out.append(
                (f"{role} case {sample.id}: not explained ({type(exc).__name__}: {exc})", b"")
            )
    return out


def _write_report(path: Path, run, result: Mapping[str, Any], overlays, explained=()) -> Path:
    from medlens._atomic import atomic_write_text
    from medlens.report.html import _figure, _section, html_page

    info = run.info
    sections = [
        _section("summary", "Summary", _summary_table(run, result)),
        _section("metrics", "Metrics", _metrics_table(result)),
    ]
    figures = "".join(
        _figure(
            png,
            f"Overlay of the {role} case {case_id}",
            f"The {role} case by mean foreground Dice: {case_id}. Reference contour in amber, "
            "prediction in blue.",
        )
        for role, case_id, png in overlays
    )
    explain = (
        "<p>The cases with the highest, the median and the lowest mean foreground Dice, on their "
        "own grid. 3D volumes show the axial, coronal and sagittal slices with the most "
        "reference foreground.</p>"
    )
    sections.append(
        _section(
            "examples",
            "Best, median and worst cases",
            f'{explain}<div class="figs">{figures}</div>',
        )
    )
    if explained:
        body = "".join(
            _figure(png, caption, caption) if png else f'<p class="note">{_esc(caption)}</p>'
            for caption, png in explained
        )
        intro = (
            "<p>Where the network looked when it drew each class: Grad-CAM of the mean logit of "
            "the class inside its predicted region, on the plan's grid (first fold's network for "
            "an ensemble). <code>medlens explain</code> gives every method with faithfulness "
            "checks.</p>"
        )
        sections.append(
            _section(
                "explained",
                "Explained examples (Grad-CAM)",
                f'{intro}<div class="figs">{body}</div>',
            )
        )
    history = _history(run.path)
    if history:
        curves = _learning_curves(history)
        if curves:
            sections.append(_section("training", "Training", curves))
    sections.append(_section("cases", "Per case", _cases_table(result)))
    notes = [
        f"Scored cases: {result.get('cases_description')}.",
        "Metrics are computed on each case's original grid with its own spacing (mm). When "
        "reference and prediction are both empty for a class the case scores perfectly; when only "
        "one is empty Dice, IoU and NSD are 0 and the distances are undefined (left out of their "
        "means and counted), as Metrics Reloaded recommends.",
        *result.get("notes", []),
    ]
    items = "".join(f"<li>{_esc(n)}</li>" for n in notes if n)
    sections.append(_section("notes", "Notes", f"<ul>{items}</ul>"))
    config = {"run": info, "plan": json.loads(_plan_json(run)), "settings": result.get("settings")}
    text = json.dumps(config, indent=2, default=str)
    sections.append(
        _section(
            "config",
            "Configuration",
            f"<details><summary>Run and plan (JSON)</summary><pre>{_esc(text)}</pre></details>",
        )
    )
    name = info.get("data", {}).get("name") or run.path.name
    page = html_page(f"{name}: segmentation evaluation", sections, "Segmentation report")
    atomic_write_text(path, page)
    return path


def _esc(text: Any) -> str:
    from medlens.report.html import _e

    return _e(text)


def _plan_json(run) -> str:
    try:
        return (run.path / "plan.json").read_text()
    except OSError:
        return "{}"


def _summary_table(run, result: Mapping[str, Any]) -> str:
    plan = run.plan
    mean = result["aggregate"]["mean"]
    rows = [
        ("Run", str(run.path)),
        ("Dataset", result.get("data")),
        ("Cases evaluated", f"{result['n_cases']}: {result.get('cases_description')}"),
        ("Classes", ", ".join(result["aggregate"]["per_class"])),
        (
            "Model",
            f"{plan.spatial_dims}D U-Net, {len(plan.network.get('features', []))} stages, "
            f"{len(run.networks)} fold(s)",
        ),
        ("Test-time mirroring", "on" if result.get("mirror") else "off"),
        ("Postprocessing", _describe_postprocessing(result.get("postprocessing"))),
        ("NSD tolerance", f"{float(result.get('tolerance_mm', 1.0)):g} mm"),
    ]
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    for metric in ("dice", "hd95"):
        body += (
            f"<tr><th>Mean {_esc(_HEADINGS[metric])}</th>"
            f'<td class="num">{_html_interval(mean.get(metric), metric)}</td></tr>'
        )
    return f"<table>{body}</table>"


def _describe_postprocessing(rules: Mapping[str, Any] | None) -> str:
    """The run's postprocessing rules in words (as ``medlens predict`` applies them)."""
    parts = []
    names = (("largest_component", "largest component"), ("fill_holes", "holes filled"),
             ("ellipse", "fitted ellipse"))  # fmt: skip
    classes = (rules or {}).get("classes", {})
    for value, rule in sorted(classes.items(), key=lambda kv: int(kv[0])):
        steps = [text for key, text in names if rule.get(key)]
        if steps:
            parts.append(f"label {value}: {' + '.join(steps)}")
    return "; ".join(parts) if parts else "none"


def _html_interval(entry: Any, metric: str) -> str:
    text = _text_interval(entry, metric)
    if " [" not in text:
        return _esc(text)
    value, ci = text.split(" [", 1)
    return f'{_esc(value)} <span class="ci">[{_esc(ci)}</span>'


def _metrics_table(result: Mapping[str, Any]) -> str:
    per_class = dict(result["aggregate"]["per_class"])
    rows = list(per_class.items())
    if len(rows) > 1:
        rows.append(("mean of classes", result["aggregate"]["mean"]))
    tol = float(result.get("tolerance_mm", 1.0))
    headings = {**_HEADINGS, "nsd": f"NSD ({tol:g} mm)"}
    head = "<th>Class</th>" + "".join(f"<th>{_esc(headings[m])}</th>" for m, _ in _COLUMNS)
    body = ""
    for name, entry in rows:
        cells = "".join(
            f'<td class="num">{_html_interval(entry.get(m), m)}</td>' for m, _ in _COLUMNS
        )
        body += f"<tr><th>{_esc(name)}</th>{cells}</tr>"
    boot = result.get("bootstrap")
    interval = (
        f"Mean over cases; brackets: {100 * float(boot.get('confidence', 0.95)):g}% percentile "
        f"bootstrap interval over cases ({boot.get('n_boot')} resamples)."
        if boot
        else "Mean over cases; no bootstrap was run, so there are no confidence intervals."
    )
    meanings = "".join(
        f"<li><b>{_esc(headings[m])}</b>: {_esc(_MEANINGS[m])}</li>" for m, _ in _COLUMNS
    )
    return (
        f'<p>{_esc(interval)}</p><div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
        f"<ul>{meanings}</ul>"
    )


def _cases_table(result: Mapping[str, Any]) -> str:
    classes = list(result["aggregate"]["per_class"])
    examples = {case_id: role for role, case_id in result.get("examples", {}).items()}
    head = "<th>Case</th><th>Mean Dice</th>"
    for name in classes:
        prefix = f"{name}: " if len(classes) > 1 else ""
        head += "".join(f"<th>{_esc(prefix + _HEADINGS[m])}</th>" for m, _ in _COLUMNS)
    cases = sorted(result["cases"], key=_mean_dice)  # worst first
    body = ""
    for case in cases:
        role = examples.get(case["case_id"])
        label = case["case_id"] + (f" ({role})" if role else "")
        cells = f'<td class="num">{_esc(_fmt(case["mean"].get("dice"), "dice"))}</td>'
        for name in classes:
            entry = case["per_class"].get(name, {})
            cells += "".join(
                f'<td class="num">{_esc(_fmt(entry.get(m), m))}</td>' for m, _ in _COLUMNS
            )
        body += f"<tr><th>{_esc(label)}</th>{cells}</tr>"
    return (
        "<p>Every case, lowest mean foreground Dice first; n/a: undefined (one mask empty).</p>"
        f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'
    )


def _fmt(value: Any, metric: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{2 if metric in ('hd95', 'assd') else 3}f}"


def _history(run: Path) -> list[dict[str, Any]]:
    for fold in sorted(run.glob("fold-*")):
        path = fold / "history.jsonl"
        if path.is_file():
            lines = path.read_text().splitlines()
            try:
                return [json.loads(line) for line in lines if line.strip()]
            except ValueError:
                return []
    return []


def _learning_curves(history: list[dict[str, Any]]) -> str:
    from medlens.report import plots
    from medlens.report.html import _try_figure

    return _try_figure(
        lambda: plots.learning_curves(history, "val_dice", "max"),
        "Learning curves",
        "Training loss per epoch (left) and the validation cases' mean foreground Dice (right); "
        "the dashed line marks the epoch whose weights were kept.",
    )
